"""Property-based fuzzing of saved index folders (issue #12): BM25, and dense (flat FAISS, tiny encoder).

Each example copies a saved index, damages it -- truncation, byte flips, ``.npy`` shape and dtype changes,
deleted or extra files, reordered or duplicated JSON lists -- and loads it and runs one query in a child
process with a time limit (helpers/index_child.py). Examples run on the current format (SHA-256 per file)
and on the same folder downgraded to format 1 (no checksums), where only the structural checks stand.

Acceptable outcomes: the correct result, or IndexFormatError/DataError naming a file of the index. A
segfault, a hang or any other exception fails with the damage that caused it. In format 1 a change that
keeps every file well-formed (a term count flipped from 2 to 3) cannot be told from a real index; such a
result must still be well-formed (known ids, no repeats, scores sorted) and is counted apart.
``RETRIEVEKIT_FUZZ_EXAMPLES`` scales the number of examples (default 64 BM25 + 32 dense, derandomized).
"""
from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from helpers.index_child import IndexChild  # noqa: E402
from helpers.saved_index import as_format_1  # noqa: E402
from retrieval import Retriever  # noqa: E402

SCALE = float(os.environ.get("RETRIEVEKIT_FUZZ_EXAMPLES", "64")) / 64
QUERY = "cat gene mouse"
DOCS = [{"_id": f"d{i}", "title": "t" if i % 4 == 0 else "",
         "text": f"cat dog word{i} gene {'mouse' if i % 3 else 'human'} protein"} for i in range(12)]
OPS = ("truncate", "flip", "npy_shape", "npy_dtype", "delete", "extra_file", "reorder_json", "duplicate_json")
STATS: Counter[tuple[str, str, str, str]] = Counter()


def fuzz_settings(n: int) -> settings:
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None, database=None,
                    derandomize="RETRIEVEKIT_FUZZ_EXAMPLES" not in os.environ,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def child(tmp_path_factory: pytest.TempPathFactory):
    proc = IndexChild(tmp_path_factory.mktemp("fuzz-child") / "stderr.txt", timeout=60)
    yield proc
    proc.close()
    if os.environ.get("RETRIEVEKIT_ROBUSTNESS_REPORT") and STATS:
        with open(os.environ["RETRIEVEKIT_ROBUSTNESS_REPORT"], "a", encoding="utf-8") as fh:
            for (kind, fmt, op, outcome), n in sorted(STATS.items()):
                fh.write(json.dumps({"test": "index_fuzz", "kind": kind, "format": fmt, "op": op,
                                     "outcome": outcome, "n": n}) + "\n")


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory, tiny_model_folder: Path, child: IndexChild) -> dict[str, Any]:
    """The pristine folders, their file lists, and the correct answer of each (as the child computes it)."""
    from retrieval.dense.encoders import load_encoder

    base = tmp_path_factory.mktemp("fuzz-pristine")
    encoder = load_encoder(str(tiny_model_folder), show_progress=False)
    Retriever.from_documents(DOCS, show_progress=False).save(base / "bm25")
    Retriever.from_documents(DOCS, method="dense", encoder=encoder, index="flat", show_progress=False).save(
        base / "dense")
    out = {"work": tmp_path_factory.mktemp("fuzz-work"), "encoder": str(tiny_model_folder)}
    for kind in ("bm25", "dense"):
        folder = base / kind
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        answer = child.ask(folder, QUERY, encoder=out["encoder"] if kind == "dense" else None)
        assert "ok" in answer and answer["ok"], answer
        out[kind] = {"folder": folder, "files": files, "expected": answer["ok"]}
    return out


@st.composite
def damages(draw: st.DrawFn, files: list[str]) -> dict[str, Any]:
    """One damage to one file of an index folder, and the format to run it on."""
    op = draw(st.sampled_from(OPS + ("flip", "flip", "truncate")))   # byte damage drawn most often
    arrays = [f for f in files if f.endswith(".npy")]
    lists = [f for f in files if f.endswith("ids.json") or f.endswith("vocab.json")]
    pool = {"npy_shape": arrays, "npy_dtype": arrays, "reorder_json": lists, "duplicate_json": lists,
            "extra_file": ["extra.txt", "stage/extra.npy", "stage/tf_data.npy.bak", ".hidden"]}.get(op, files)
    return {"op": op, "file": draw(st.sampled_from(pool)), "format": draw(st.sampled_from(["checksummed", "format1"])),
            "at": draw(st.floats(0, 1)), "byte": draw(st.integers(1, 255)), "seed": draw(st.integers(0, 2 ** 16)),
            "dtype": draw(st.sampled_from(["float32", "float16", "int8", "uint64", ">i4", "bool", "complex64"]))}


def apply(folder: Path, damage: dict[str, Any]) -> None:
    """Damage ``folder`` in place as ``damage`` says."""
    path, op = folder / damage["file"], damage["op"]
    rng = np.random.default_rng(damage["seed"])
    if op == "extra_file":
        path.write_bytes(b"not ours")
    elif op == "delete":
        path.unlink()
    elif op in ("truncate", "flip"):
        data = bytearray(path.read_bytes())
        at = min(int(damage["at"] ** 2 * len(data)), max(len(data) - 1, 0))   # headers are hit more often
        if op == "truncate":
            del data[at:]
        elif data:
            for pos in [at, *rng.integers(0, len(data), size=damage["seed"] % 4)]:
                data[pos] ^= damage["byte"]
        path.write_bytes(bytes(data))
    elif op == "npy_shape":
        arr = np.load(path)
        arr = arr.reshape(1, -1) if damage["seed"] % 3 == 0 else np.delete(arr, rng.integers(len(arr))) \
            if damage["seed"] % 3 == 1 and len(arr) else np.r_[arr, arr[:1]]
        np.save(path, arr, allow_pickle=False)
    elif op == "npy_dtype":
        np.save(path, np.load(path).astype(damage["dtype"]), allow_pickle=False)
    else:
        values = json.loads(path.read_text(encoding="utf-8"))
        if op == "reorder_json" and len(values) > 1:
            values = [values[i] for i in rng.permutation(len(values))]
        elif values:
            values.insert(int(rng.integers(len(values) + 1)), values[int(rng.integers(len(values)))])
        path.write_text(json.dumps(values), encoding="utf-8")
    if damage["format"] == "format1" and (folder / "manifest.json").exists() and damage["file"] != "manifest.json":
        as_format_1(folder)


def well_formed(hits: list[list[Any]], ids: set[str]) -> bool:
    scores = [h[1] for h in hits]
    return (len(hits) <= 5 and {h[0] for h in hits} <= ids and len({h[0] for h in hits}) == len(hits)
            and scores == sorted(scores, reverse=True) and all(np.isfinite(scores)))


def check(kind: str, saved: dict[str, Any], child: IndexChild, damage: dict[str, Any]) -> None:
    folder = Path(shutil.copytree(saved[kind]["folder"], saved["work"] / f"{kind}-{len(os.listdir(saved['work']))}"))
    apply(folder, damage)
    answer = child.ask(folder, QUERY, encoder=saved["encoder"] if kind == "dense" else None)
    key = (kind, damage["format"], damage["op"])
    if "ours" in answer:
        message = answer["ours"][1]
        assert str(folder) in message, f"error names no file of the index: {message} ({damage})"
        STATS[(*key, "our error, names the damaged file" if Path(damage["file"]).name in message
               else "our error, names another file of the index")] += 1
    elif "ok" in answer:
        if answer["ok"] == saved[kind]["expected"]:
            STATS[(*key, "correct result")] += 1
        else:
            assert damage["format"] == "format1", f"checksummed index gave a wrong result {answer['ok']} for {damage}"
            assert well_formed(answer["ok"], {d["_id"] for d in DOCS}), (answer, damage)
            STATS[(*key, "well-formed but different result (format 1, undetectable)")] += 1
    else:
        STATS[(*key, "FAILURE")] += 1
        raise AssertionError(f"{damage} -> {answer}")
    shutil.rmtree(folder)


@pytest.mark.parametrize("kind, n", [("bm25", 64), ("dense", 32)])
def test_damaged_index_folders_load_right_or_fail_cleanly(kind: str, n: int, saved: dict[str, Any],
                                                          child: IndexChild) -> None:
    @fuzz_settings(n)
    @given(damages(saved[kind]["files"]))
    def run(damage: dict[str, Any]) -> None:
        check(kind, saved, child, damage)

    run()


@pytest.mark.parametrize("kind", ["bm25", "dense"])
def test_every_file_truncated_or_deleted(kind: str, saved: dict[str, Any], child: IndexChild) -> None:
    """Deterministic sweep next to the random one: every file, emptied, halved or deleted, in both formats."""
    for file in saved[kind]["files"]:
        for op, at in (("truncate", 0.0), ("truncate", 0.5), ("delete", 0.0)):
            for fmt in ("checksummed", "format1"):
                check(kind, saved, child, {"op": op, "file": file, "format": fmt, "at": at, "byte": 1, "seed": 0,
                                           "dtype": "int8"})
