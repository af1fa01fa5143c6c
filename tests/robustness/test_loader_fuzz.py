"""Property-based fuzzing of every data loader (issue #12): documents (JSONL/CSV/TSV, plain and .gz),
queries, qrels and run files (TREC and JSON).

Valid inputs must load exactly as written. Random bytes, truncations, byte flips, inserted quotes, tabs,
NULs, surrogate escapes and other odd Unicode may only end in a correct-looking result or in our own
:class:`DataError` naming the file. Every load runs in one long-lived child process and each answer must
come within a time limit, so a segfault, a hang or a foreign exception fails the test with its input.

``RETRIEVEKIT_FUZZ_EXAMPLES`` raises the number of examples per test (default 150, derandomized).
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import math
import os
import select
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
ANSWER_TIMEOUT_S = 30.0  # generous: the machine is shared; a real hang never answers


def _serve() -> None:
    """Child: read one JSON request per line, run the loader, answer with its outcome on the real stdout."""
    import traceback

    from retrieval.data import DataError, load_documents, load_qrels, load_queries
    from retrieval.eval.metrics import read_run

    loaders = {"documents": load_documents, "queries": load_queries, "qrels": load_qrels, "run": read_run}
    answers = sys.stdout
    sys.stdout = sys.stderr  # nothing the library prints can corrupt the answers
    for line in sys.stdin:
        request = json.loads(line)
        try:
            result = loaders[request["loader"]](request["path"], **request["kwargs"])
            if request["loader"] == "documents":
                result = [[d.id, d.title, d.text] for d in result]
            answer = {"ok": result}
        except DataError as exc:
            answer = {"data_error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - reported to the parent as a failure
            answer = {"foreign": "".join(traceback.format_exception(exc))[-3000:]}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


if __name__ == "__main__":
    _serve()
    sys.exit(0)

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from retrieval.data import DataError, load_documents  # noqa: E402
from retrieval.eval.metrics import write_run  # noqa: E402
from retrieval.types import Document  # noqa: E402

FUZZ = settings(
    max_examples=int(os.environ.get("RETRIEVEKIT_FUZZ_EXAMPLES", "150")),
    deadline=None, database=None, derandomize="RETRIEVEKIT_FUZZ_EXAMPLES" not in os.environ,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


class LoaderProcess:
    """One child Python running loaders on request; a crash or a missed deadline is reported with the input."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.proc: subprocess.Popen[str] | None = None
        self.log = (folder / "child-stderr.txt").open("w")

    def _start(self) -> subprocess.Popen[str]:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        return subprocess.Popen([sys.executable, str(Path(__file__).resolve())], cwd=REPO, env=env, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log)

    def load(self, loader: str, path: Path, **kwargs: Any) -> dict[str, Any]:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"loader": loader, "path": str(path), "kwargs": kwargs}) + "\n")
        self.proc.stdin.flush()
        if not select.select([self.proc.stdout], [], [], ANSWER_TIMEOUT_S)[0]:
            self.close()
            raise AssertionError(f"{loader}({path.name}) hung (> {ANSWER_TIMEOUT_S} s) on {path.read_bytes()[:300]!r}")
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            self.proc = None
            raise AssertionError(f"{loader}({path.name}) killed the process (exit {code}) on {path.read_bytes()[:300]!r}")
        return json.loads(line)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
        self.log.close()


@pytest.fixture(scope="module")
def child():
    with tempfile.TemporaryDirectory(prefix="loader-fuzz-") as tmp:
        proc = LoaderProcess(Path(tmp))
        yield proc
        proc.close()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-inputs")


def put(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(gzip.compress(data, mtime=0) if name.endswith(".gz") else data)
    return path


def outcome(child: LoaderProcess, loader: str, path: Path, **kwargs: Any) -> Any:
    """The loader's result, or ``None`` after a DataError that names the file; anything else fails."""
    answer = child.load(loader, path, **kwargs)
    if "foreign" in answer:
        raise AssertionError(f"foreign exception from {loader}({path.name}) on {path.read_bytes()[:300]!r}:\n"
                             f"{answer['foreign']}")
    if "data_error" in answer:
        assert str(path) in answer["data_error"], f"DataError does not name the file: {answer['data_error']}"
        return None
    return answer["ok"]


# --- strategies --------------------------------------------------------------------------------------

ID_CHARS = st.characters(exclude_categories=("Cs", "Cc", "Zs", "Zl", "Zp"))  # no whitespace, controls, surrogates
IDS = st.text(ID_CHARS, min_size=1, max_size=8)
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=30)
TSV_TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\t\n\r"), max_size=30)
DOCS = st.lists(st.tuples(IDS, TEXT, TEXT), min_size=1, max_size=6, unique_by=lambda d: d[0])
TSV_DOCS = st.lists(st.tuples(IDS, TSV_TEXT, TSV_TEXT), min_size=1, max_size=6, unique_by=lambda d: d[0])
ODD = st.sampled_from([
    b'"', b'""', b"\t", b"\n", b"\r", b"\r\n", b"\x00", b"\xff", b"\xc3", b"\xed\xa0\x80", b"\\ud800", b"\\udfff",
    b"\\u0000", b"\xef\xbb\xbf", "\u2028".encode(), "\u00a0".encode(), b"{", b"}", b"[", b",", b":", b" ", b"-",
    b"9" * 30, b"NaN", b"\\", "\U0001F600".encode(),
]) | st.binary(min_size=1, max_size=6)


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` after 1-3 random edits: truncate, flip a byte, insert odd bytes, delete a span, repeat a line."""
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "repeat"]))
        if op == "truncate":
            data = data[:at]
        elif op == "flip" and at < len(data):
            data = data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1:]
        elif op == "insert":
            data = data[:at] + draw(ODD) + data[at:]
        elif op == "delete":
            data = data[:at] + data[at + draw(st.integers(1, 8)):]
        elif op == "repeat" and data:
            lines = data.split(b"\n")
            pick = draw(st.integers(0, len(lines) - 1))
            data = b"\n".join(lines[:pick + 1] + [lines[pick]] + lines[pick + 1:])
    return data


def docs_bytes(docs: list[tuple[str, str, str]], fmt: str, ascii_json: bool = True) -> bytes:
    if fmt == "jsonl":
        lines = (json.dumps({"_id": i, "title": t, "text": x}, ensure_ascii=ascii_json) for i, t, x in docs)
        return "".join(line + "\n" for line in lines).encode("utf-8", "surrogatepass")
    if fmt == "tsv":
        return "".join(f"{i}\t{t}\t{x}\n" for i, t, x in [("id", "title", "text"), *docs]).encode()
    out = io.StringIO()
    csv.writer(out).writerows([("id", "title", "text"), *docs])
    return out.getvalue().encode()


def check_documents(result: list[list[str]]) -> None:
    """What any successful load must satisfy: unique non-empty ids without NUL, all text valid Unicode."""
    ids = [r[0] for r in result]
    assert ids and len(set(ids)) == len(ids)
    for doc_id, title, text in result:
        assert doc_id.strip() and "\x00" not in doc_id
        (doc_id + title + text).encode("utf-8")  # no lone surrogate can reach save()


def tsv_rows(data: bytes) -> int | None:
    """Data rows a TSV loader must return for ``data`` (one per non-blank line after the header), or None."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    rows = [line.rstrip("\r").split("\t") for line in text.removeprefix("\ufeff").split("\n")]
    rows = [r for r in rows if not all(not c.strip() for c in r)]
    return max(len(rows) - 1, 0)


FORMATS = st.sampled_from(["jsonl", "csv", "tsv"])


# --- documents ---------------------------------------------------------------------------------------

@FUZZ
@given(fmt=FORMATS, gz=st.booleans(), ascii_json=st.booleans(), data=st.data())
def test_documents_load_exactly_as_written(child, folder, fmt, gz, ascii_json, data) -> None:
    docs = data.draw(TSV_DOCS if fmt == "tsv" else DOCS)
    path = put(folder, f"docs.{fmt}" + (".gz" if gz else ""), docs_bytes(docs, fmt, ascii_json))
    assert outcome(child, "documents", path) == [list(d) for d in docs]


@FUZZ
@given(fmt=FORMATS, where=st.sampled_from(["plain", "compressed"]), data=st.data())
def test_documents_survive_corruption(child, folder, fmt, where, data) -> None:
    clean = docs_bytes(data.draw(TSV_DOCS if fmt == "tsv" else DOCS), fmt)
    if where == "compressed":  # edit the gzip stream itself: truncation, flipped bits, garbage
        path = folder / f"bad.{fmt}.gz"
        path.write_bytes(data.draw(mutated(gzip.compress(clean, mtime=0))))
    else:
        path = put(folder, f"bad.{fmt}", data.draw(mutated(clean)))
    result = outcome(child, "documents", path)
    if result is not None:
        check_documents(result)
        if fmt == "tsv" and where == "plain":  # no quoting in TSV: one document per line, never merged
            assert len(result) == tsv_rows(path.read_bytes())


QUOTY = st.text(st.sampled_from(['"', '"', "'", "\\", " ", ",", "a"]) | st.characters(
    exclude_categories=("Cs",), exclude_characters="\t\n\r"), max_size=12)


@FUZZ
@given(docs=st.lists(st.tuples(IDS, QUOTY, QUOTY), min_size=1, max_size=8, unique_by=lambda d: d[0]),
       gz=st.booleans())
def test_tsv_quotes_are_plain_text(child, folder, docs, gz) -> None:
    """Defect 10: TSV has no quoting, so any '"' stays in its field and every line is its own document."""
    path = put(folder, "quotes.tsv" + (".gz" if gz else ""), docs_bytes(docs, "tsv"))
    assert outcome(child, "documents", path) == [list(d) for d in docs]


@FUZZ
@given(name=st.sampled_from(["r.jsonl", "r.csv", "r.tsv", "r.jsonl.gz", "r.tsv.gz"]), raw=st.binary(max_size=300))
def test_documents_from_random_bytes(child, folder, name, raw) -> None:
    path = folder / name
    path.write_bytes(raw)
    result = outcome(child, "documents", path)
    if result is not None:
        check_documents(result)


@FUZZ
@given(docs=DOCS, which=st.integers(0, 100), field=st.sampled_from([0, 1, 2]),
       bad=st.characters(categories=("Cs",)))
def test_lone_surrogates_never_load(child, folder, docs, which, field, bad) -> None:
    docs = [list(d) for d in docs]
    docs[which % len(docs)][field] += bad
    path = put(folder, "sur.jsonl", docs_bytes([tuple(d) for d in docs], "jsonl", ascii_json=True))
    answer = child.load("documents", path)
    assert "lone surrogate" in answer.get("data_error", ""), answer
    assert str(path) in answer["data_error"]


# --- queries, qrels, runs ----------------------------------------------------------------------------

QUERIES = st.dictionaries(IDS, TEXT, min_size=1, max_size=6)
TSV_QUERIES = st.dictionaries(st.text(ID_CHARS, min_size=1, max_size=8), TSV_TEXT, min_size=1, max_size=6)


def queries_bytes(queries: dict[str, str], fmt: str) -> bytes:
    if fmt == "jsonl":
        return "".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()).encode()
    return "".join(f"{q}\t{t}\n" for q, t in queries.items()).encode()


@FUZZ
@given(fmt=st.sampled_from(["jsonl", "tsv"]), gz=st.booleans(), data=st.data())
def test_queries(child, folder, fmt, gz, data) -> None:
    queries = data.draw(QUERIES if fmt == "jsonl" else TSV_QUERIES)
    clean = queries_bytes(queries, fmt)
    suffix = f".{fmt}" + (".gz" if gz else "")
    assert outcome(child, "queries", put(folder, "q" + suffix, clean)) == queries
    result = outcome(child, "queries", put(folder, "badq" + suffix, data.draw(mutated(clean))))
    if result is not None:
        assert result and all(q.strip() and "\x00" not in q for q in result)
        ("".join(result) + "".join(result.values())).encode("utf-8")  # valid Unicode only


QRELS = st.dictionaries(st.tuples(IDS, IDS), st.integers(-3, 2**31 - 1), min_size=1, max_size=8)


def qrels_bytes(judgments: dict[tuple[str, str], int], trec: bool) -> bytes:
    lines = [f"{q} 0 {d} {g}" if trec else f"{q}\t{d}\t{g}" for (q, d), g in judgments.items()]
    return "\n".join(([] if trec else ["query-id\tcorpus-id\tscore"]) + lines).encode() + b"\n"


@FUZZ
@given(judgments=QRELS, trec=st.booleans(), gz=st.booleans(), data=st.data())
def test_qrels(child, folder, judgments, trec, gz, data) -> None:
    clean = qrels_bytes(judgments, trec)
    name = "qrels.tsv" + (".gz" if gz else "")
    expected: dict[str, dict[str, int]] = {}
    for (q, d), g in judgments.items():
        expected.setdefault(q, {})[d] = g
    assert outcome(child, "qrels", put(folder, name, clean)) == expected
    result = outcome(child, "qrels", put(folder, "bad" + name, data.draw(mutated(clean))))
    if result is not None:
        for q, docs in result.items():
            assert q and "\x00" not in q and all(-(2**31) <= g < 2**31 and isinstance(g, int) for g in docs.values())


RUNS = st.dictionaries(IDS, st.dictionaries(IDS, st.floats(allow_nan=False), min_size=1, max_size=5),
                       min_size=1, max_size=4)


@FUZZ
@given(run=RUNS, name=st.sampled_from(["run.trec", "run.json", "run.txt"]), data=st.data())
def test_runs(child, folder, run, name, data) -> None:
    path = folder / name
    write_run(run, path)
    assert outcome(child, "run", path) == run
    bad = put(folder, "bad" + name, data.draw(mutated(path.read_bytes())))
    result = outcome(child, "run", bad)
    if result is not None:
        for q, docs in result.items():
            assert "\x00" not in q and all(isinstance(s, float) and not math.isnan(s) for s in docs.values())


@FUZZ
@given(name=st.sampled_from(["q.jsonl", "q.tsv", "qrels.tsv", "run.trec", "run.json", "run.trec.gz"]),
       raw=st.binary(max_size=300))
def test_random_bytes_every_other_loader(child, folder, name, raw) -> None:
    path = folder / name
    path.write_bytes(raw)
    loader = {"q.jsonl": "queries", "q.tsv": "queries", "qrels.tsv": "qrels"}.get(name, "run")
    outcome(child, loader, path)


# --- Python iterables (no file: the error names the item) -------------------------------------------

ITEMS = st.recursive(
    st.none() | st.integers() | st.floats() | st.booleans() | st.binary(max_size=4) | TEXT
    | st.text(st.characters(categories=("Cs",)), min_size=1, max_size=2),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["_id", "id", "text", "title"]), inner,
                                                               max_size=4),
    max_leaves=6,
) | st.builds(Document, id=IDS | st.integers(), text=TEXT | st.none(), title=TEXT)


@FUZZ
@given(items=st.lists(ITEMS, max_size=5))
def test_python_iterables(items) -> None:
    try:
        docs = load_documents(items)
    except DataError as exc:
        assert str(exc).startswith(("document #", "documents: no documents")), exc
        return
    check_documents([[d.id, d.title, d.text] for d in docs])
    assert len(docs) == len(items)
