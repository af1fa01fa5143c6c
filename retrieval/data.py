"""Load documents, queries and qrels from BEIR folders, JSONL/CSV/TSV files or Python iterables.

Files are streamed line by line; every problem is reported as a :class:`DataError` naming the
file, the line and the field, so a user can fix the input instead of reading a traceback.

Format rules worth knowing:

* TSV has no quoting: a line is split on tabs, so a ``"`` is an ordinary character and a tab can
  never be part of a field (a row with extra tabs is an error naming the line). CSV follows RFC 4180
  (quoted fields may span lines); an unclosed or misplaced quote is an error naming the line.
* CSV fields may be as long as 2**31 - 1 characters: the first CSV read raises Python's process-wide
  ``csv.field_size_limit`` to that (it is never lowered).
* Text must be valid Unicode: a lone surrogate (a JSON ``"\\ud800"`` escape, or a Python string holding
  one) is refused where it is read, because it cannot be written as UTF-8 when the index is saved.
* Tolerated problems are counted and logged once as a warning: identical repeated queries or judgments,
  and (in :func:`load_beir`) judgments naming documents the corpus lacks (see :class:`DataIssues`).
"""
from __future__ import annotations

import csv
import gzip
import json
import logging
import math
import os
import zlib
from collections.abc import Callable, Container, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from retrieval.errors import DataError
from retrieval.types import Document, Qrels

logger = logging.getLogger(__name__)

ID_FIELDS = ("_id", "id", "docid", "doc_id")
FORMATS = ("jsonl", "csv", "tsv")
CSV_FIELD_LIMIT = 2**31 - 1  # largest value csv.field_size_limit accepts on every platform (a C long)
GRADE_RANGE = (-(2**31), 2**31 - 1)  # pytrec_eval stores grades as C ints


def _where(path: Path | str, line: int | None = None, field: str | None = None) -> str:
    loc = str(path)
    if line is not None:
        loc += f", line {line}"
    if field is not None:
        loc += f", field {field!r}"
    return loc


def check_text(value: str, where: str, field: str) -> str:
    """Return ``value`` if it is valid Unicode; a lone surrogate cannot be saved as UTF-8, so it is refused here."""
    if not value.isascii():  # O(1) in CPython; only non-ASCII strings can hold a surrogate
        try:
            value.encode("utf-16-le")  # refuses lone surrogates like UTF-8, about twice as fast here
        except UnicodeEncodeError as exc:
            raise DataError(
                f"{where}, field {field!r}: lone surrogate U+{ord(value[exc.start]):04X} at character {exc.start} "
                "is not valid Unicode (a broken \\u escape or a badly decoded string); fix the input"
            ) from None
    return value


def check_id(value: str, where: str, field: str) -> str:
    """Return ``value`` if it is a usable id: valid Unicode and no NUL (C tools such as pytrec_eval cut ids at a NUL)."""
    if "\x00" in value:
        raise DataError(f"{where}, field {field!r}: id {value!r} contains a NUL character")
    return check_text(value, where, field)


def _open_binary(path: Path) -> BinaryIO:
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected a file")
    try:
        return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")  # type: ignore[return-value]
    except OSError as exc:
        raise DataError(f"{path}: cannot open ({exc.strerror or exc})") from None


def _read_problem(exc: BaseException) -> str:
    """Words for an error raised while reading (plain or gzip) bytes."""
    if isinstance(exc, gzip.BadGzipFile):
        return f"not a valid gzip file ({exc})"
    if isinstance(exc, EOFError):
        return "gzip file is truncated (it ends before the end-of-stream marker)"
    if isinstance(exc, zlib.error):
        return f"gzip data is damaged ({exc})"
    return f"cannot read ({getattr(exc, 'strerror', None) or exc})"


def _not_utf8(raw: bytes, path: Path, n: int, exc: UnicodeDecodeError) -> DataError:
    return DataError(f"{_where(path, n)}: not valid UTF-8 (byte {exc.start}: {raw[exc.start:exc.start + 4]!r})")


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for each line, decoding UTF-8 strictly and naming bad lines.

    Read errors (a damaged or truncated ``.gz``, an unreadable file) become :class:`DataError` naming the file.
    """
    n = 0
    with _open_binary(path) as fh:
        try:
            for n, raw in enumerate(fh, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise _not_utf8(raw, path, n, exc) from None
                yield n, (line[1:] if n == 1 and line.startswith("\ufeff") else line)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path}: {_read_problem(exc)}; {n} lines were read before it") from None
    if n == 0:
        raise DataError(f"{path}: file is empty")


def iter_jsonl(path: Path | str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank JSON line of ``path``."""
    path = Path(path)
    seen = 0
    for n, line in iter_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line.rstrip("\r\n"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{_where(path, n)}: malformed JSON ({exc.msg} at column {exc.colno})") from None
        except (ValueError, RecursionError) as exc:  # a >4300-digit integer, nesting too deep
            raise DataError(f"{_where(path, n)}: unreadable JSON ({type(exc).__name__}: {str(exc)[:80]})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{_where(path, n)}: expected a JSON object, got {type(obj).__name__}")
        seen += 1
        yield n, obj
    if seen == 0:
        raise DataError(f"{path}: file has no records")


def _allow_long_csv_fields() -> None:
    """Long documents are legitimate: raise the process-wide csv field limit (never lower it)."""
    if csv.field_size_limit() < CSV_FIELD_LIMIT:
        csv.field_size_limit(CSV_FIELD_LIMIT)


def _csv_rows(path: Path, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """``(first line, fields)`` per CSV record; quoted fields may span lines, a broken quote is an error."""
    _allow_long_csv_fields()
    reader = csv.reader((line for _, line in iter_lines(path)), delimiter=delimiter, strict=True)
    start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            if "unexpected end of data" in str(exc):
                raise DataError(f"{_where(path, start)}: a double-quoted field starting in this record is never "
                                "closed (unbalanced '\"'); double a quote inside a quoted field") from None
            raise DataError(f"{_where(path, reader.line_num)}: malformed CSV ({exc})") from None
        yield start, row
        start = reader.line_num + 1


def _tsv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """``(line, fields)`` per line: TSV has no quoting, so a line is split on tabs and quotes are plain text."""
    for n, line in iter_lines(path):
        yield n, line.rstrip("\r\n").split("\t")


def _check_header(row: list[str], path: Path, n: int) -> list[str]:
    header = [h.strip() for h in row]
    named = [h for h in header if h]
    if len(set(named)) != len(named):
        twice = next(h for h in named if named.count(h) > 1)
        raise DataError(f"{_where(path, n)}: header names column {twice!r} twice ({header})")
    return header


def iter_delimited(path: Path | str, delimiter: str) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(line_number, row)`` for a CSV/TSV file with a header row (``delimiter="\\t"`` means TSV)."""
    path = Path(path)
    rows = _tsv_rows(path) if delimiter == "\t" else _csv_rows(path, delimiter)
    header: list[str] | None = None
    seen = 0
    for n, row in rows:
        if all(not c.strip() for c in row):
            continue
        if header is None:
            header = _check_header(row, path, n)
            continue
        if len(row) != len(header):
            hint = "; TSV has no quoting, so a field cannot hold a tab" if delimiter == "\t" else ""
            raise DataError(f"{_where(path, n)}: {len(row)} columns, header has {len(header)} ({header}){hint}")
        seen += 1
        yield n, dict(zip(header, row))
    if header is None:
        raise DataError(f"{path}: file has no header row (only blank lines)")
    if seen == 0:
        raise DataError(f"{path}: file has a header but no rows")


def infer_format(path: Path) -> str:
    """Guess ``jsonl``/``csv``/``tsv`` from the file name (``.gz`` allowed)."""
    name = path.name.lower().removesuffix(".gz")
    for fmt, suffixes in {"jsonl": (".jsonl", ".json", ".ndjson"), "csv": (".csv",), "tsv": (".tsv", ".txt")}.items():
        if name.endswith(suffixes):
            return fmt
    raise DataError(f"{path}: cannot tell the format from the name; pass format= one of {FORMATS}")


def _pick_id_field(record: dict[str, Any], id_field: str | None, where: str) -> str:
    if id_field is not None:
        return id_field
    for name in ID_FIELDS:
        if name in record:
            return name
    raise DataError(f"{where}: no id field (looked for {ID_FIELDS}); pass id_field=")


def _record_id(record: dict[str, Any], id_name: str, where: str, kind: str) -> str:
    value = record.get(id_name)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(f"{where}, field {id_name!r}: missing or empty {kind} id")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(f"{where}, field {id_name!r}: {kind} id must be a string or integer, "
                        f"got {type(value).__name__}")
    try:
        text = value if isinstance(value, str) else str(value)
    except ValueError:  # an integer with more than 4300 digits
        raise DataError(f"{where}, field {id_name!r}: {kind} id is an integer too long to use") from None
    return text if text.isascii() and "\x00" not in text else check_id(text, where, id_name)


def record_to_document(
    record: dict[str, Any], where: str, id_field: str | None, text_field: str, title_field: str | None,
    kind: str = "document",
) -> Document:
    """Turn one raw record into a :class:`Document`, checking the id, text and title fields."""
    doc_id = _record_id(record, _pick_id_field(record, id_field, where), where, kind)
    text = record.get(text_field)
    if text is None:
        raise DataError(f"{where}, field {text_field!r}: missing {kind} text")
    if not isinstance(text, str):
        raise DataError(f"{where}, field {text_field!r}: text must be a string, got {type(text).__name__}")
    title = record.get(title_field, "") if title_field else ""
    if title is None:
        title = ""
    if not isinstance(title, str):
        raise DataError(f"{where}, field {title_field!r}: title must be a string, got {type(title).__name__}")
    if not text.isascii():  # the checks are inlined for speed: most texts are ASCII
        check_text(text, where, text_field)
    if not title.isascii():
        check_text(title, where, str(title_field))
    return Document(id=doc_id, text=text, title=title)


def _iter_file_documents(
    path: Path, fmt: str | None, id_field: str | None, text_field: str, title_field: str | None
) -> Iterator[tuple[str, int, Document]]:
    fmt = fmt or infer_format(path)
    if fmt == "jsonl":
        records: Iterator[tuple[int, dict[str, Any]]] = iter_jsonl(path)
    elif fmt in ("csv", "tsv"):
        records = iter_delimited(path, "," if fmt == "csv" else "\t")
    else:
        raise DataError(f"{path}: unknown format {fmt!r}; expected one of {FORMATS}")
    for n, rec in records:
        where = _where(path, n)
        yield where, n, record_to_document(rec, where, id_field, text_field, title_field)


def _checked_document(doc: Document, where: str) -> Document:
    """A Document built by the caller: same checks as a loaded record."""
    if not isinstance(doc.id, str) or not doc.id.strip():
        raise DataError(f"{where}, field 'id': document id must be a non-empty string, got {doc.id!r}")
    where = f"{where} (id {doc.id!r})"
    check_id(doc.id, where, "id")
    for name in ("text", "title"):
        value = getattr(doc, name)
        if not isinstance(value, str):
            raise DataError(f"{where}, field {name!r}: {name} must be a string, got {type(value).__name__}")
        check_text(value, where, name)
    return doc


def _python_document(item: Any, i: int, id_field: str | None, text_field: str,
                     title_field: str | None) -> Document:
    where = f"document #{i}"
    if isinstance(item, Document):
        return _checked_document(item, where)
    if isinstance(item, str):
        return Document(id=str(i), text=check_text(item, where, "text"))
    if isinstance(item, dict):
        return record_to_document(item, where, id_field, text_field, title_field)
    hint = ""
    if isinstance(item, (bytes, bytearray)):
        hint = "; decode bytes to str first"
    elif isinstance(item, (list, tuple)):
        hint = "; pass each document as a dict such as {'_id': ..., 'text': ...}"
    raise DataError(f"{where}: expected str, dict or Document, got {type(item).__name__}{hint}")


def _iter_python_documents(items: Iterator[Any], id_field: str | None, text_field: str,
                           title_field: str | None) -> Iterator[tuple[str, int, Document]]:
    for i, item in enumerate(items):
        yield f"document #{i}", i, _python_document(item, i, id_field, text_field, title_field)


def _iterate_source(source: Any) -> Iterator[Any]:
    """An iterator over a Python collection of documents, or a clear error for something that is not one."""
    if isinstance(source, dict):
        raise DataError("documents: got a dict; pass its values() or a list of records")
    if isinstance(source, (bytes, bytearray, memoryview)):
        raise TypeError(f"documents: got {type(source).__name__}; pass a file path, or an iterable of "
                        "str/dict/Document")
    try:
        return iter(source)
    except TypeError:
        pass
    if callable(source):
        name = getattr(source, "__name__", type(source).__name__)
        call = f".{name}()" if hasattr(source, "__self__") else f"{name}()"
        raise TypeError(f"documents: got the callable {name!r} itself, not what it returns; call it: {call} "
                        "(for example Retriever.from_documents(load_beir(folder).corpus()))")
    raise TypeError(f"documents: expected a path or an iterable of str/dict/Document, got {type(source).__name__}")


def iter_documents(
    source: str | Path | Iterable[Any],
    *,
    format: str | None = None,
    id_field: str | None = None,
    text_field: str = "text",
    title_field: str | None = "title",
) -> Iterator[Document]:
    """Stream documents from a BEIR folder, a JSONL/CSV/TSV file, or an iterable.

    Iterables may hold strings (ids become ``"0"``, ``"1"``, ...), dicts with BEIR keys
    (``_id``/``id``, ``title``, ``text``) or :class:`Document` objects; any other item is a
    :class:`DataError` naming its index, and a source that is not iterable (such as the method
    ``load_beir(...).corpus`` passed without calling it) is a ``TypeError``. Duplicate ids raise
    :class:`DataError`; empty texts are kept (BEIR corpora contain some) and counted in the log.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            corpus = path / "corpus.jsonl"
            if not corpus.exists():
                raise DataError(f"{path}: folder has no corpus.jsonl (expected the BEIR layout)")
            path = corpus
        docs = _iter_file_documents(path, format, id_field, text_field, title_field)
        label = str(path)
    else:
        docs = _iter_python_documents(_iterate_source(source), id_field, text_field, title_field)
        label = "documents"
    yield from _check_unique(docs, label)


def _check_unique(docs: Iterator[tuple[str, int, Document]], label: str,
                  on_done: Callable[[dict[str, int]], None] | None = None) -> Iterator[Document]:
    seen: dict[str, int] = {}
    empty = 0
    unit = "line " if label != "documents" else "document #"
    for where, num, doc in docs:
        if doc.id in seen:
            raise DataError(f"{where}: duplicate document id {doc.id!r} (first seen at {unit}{seen[doc.id]})")
        seen[doc.id] = num
        if not doc.text.strip() and not doc.title.strip():
            empty += 1
        yield doc
    if not seen:
        raise DataError(f"{label}: no documents")
    if empty:
        logger.warning("%s: %d of %d documents have empty text; they are kept", label, empty, len(seen))
    if on_done is not None:
        on_done(seen)


def load_documents(source: str | Path | Iterable[Any], **kwargs: Any) -> list[Document]:
    """Like :func:`iter_documents` but returns a list."""
    return list(iter_documents(source, **kwargs))


def _warn_repeats(path: Path, count: int, what: str) -> None:
    if count:
        logger.warning("%s: %d repeated %s were kept once", path, count, what)


def _iter_query_records(path: Path) -> Iterator[tuple[int, str, str]]:
    """``(line, id, text)`` per query of a JSONL file or a headerless two-column ``id<TAB>text`` TSV."""
    if infer_format(path) == "jsonl":
        for n, rec in iter_jsonl(path):
            query = record_to_document(rec, _where(path, n), None, "text", None, kind="query")
            yield n, query.id, query.text
        return
    for n, line in iter_lines(path):
        if not line.strip():
            continue
        parts = line.rstrip("\r\n").split("\t")
        if len(parts) != 2:
            raise DataError(f"{_where(path, n)}: expected 'id<TAB>text', got {len(parts)} tab-separated fields "
                            "(TSV has no quoting, so query text cannot hold a tab; use queries.jsonl)")
        if not parts[0].strip():
            raise DataError(f"{_where(path, n)}: missing or empty query id")
        yield n, check_id(parts[0], _where(path, n), "id"), parts[1]


def _read_queries(path: Path) -> tuple[dict[str, str], int]:
    """Queries by id and the number of identical repeats dropped; a repeated id with other text is an error."""
    queries: dict[str, str] = {}
    repeats = 0
    for n, qid, text in _iter_query_records(path):
        if qid in queries:
            if queries[qid] != text:
                first = next(m for m, q, _ in _iter_query_records(path) if q == qid)
                raise DataError(f"{_where(path, n)}: query id {qid!r} repeats line {first} with different text")
            repeats += 1
            continue
        queries[qid] = text
    if not queries:
        raise DataError(f"{path}: no queries")
    return queries, repeats


def load_queries(path: str | Path) -> dict[str, str]:
    """Read queries from BEIR ``queries.jsonl`` (``_id``, ``text``) or a headerless ``id<TAB>text`` TSV.

    A TSV line must have exactly two fields (a second tab is an error: TSV cannot quote it). A query id
    repeated with the same text is kept once (counted in a warning); with different text it is an error.
    """
    path = Path(path)
    queries, repeats = _read_queries(path)
    _warn_repeats(path, repeats, "queries (same id and text)")
    return queries


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _grade(text: str) -> int | None:
    """A grade as written: an integer, or an integral float ('1.0', as pandas writes int columns); else None."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if math.isfinite(value) and value.is_integer() else None


def _iter_judgments(path: Path) -> Iterator[tuple[int, str, str, int]]:
    """``(line, query id, document id, grade)`` per judgment; a first line without a numeric grade is a header."""
    for n, line in iter_lines(path):
        parts = line.split()
        if not parts:
            continue
        if n == 1 and not _is_number(parts[-1]):
            continue  # header row
        if len(parts) == 3:
            qid, did, grade = parts
        elif len(parts) == 4:
            qid, _, did, grade = parts
        else:
            raise DataError(f"{_where(path, n)}: expected 'query-id corpus-id score' (or TREC 'qid 0 docid rel'), "
                            f"got {len(parts)} fields")
        value = _grade(grade)
        if value is None:
            raise DataError(f"{_where(path, n, 'score')}: relevance grade {grade[:40]!r} is not an integer")
        if not GRADE_RANGE[0] <= value <= GRADE_RANGE[1]:
            raise DataError(f"{_where(path, n, 'score')}: relevance grade {grade[:40]} is out of range")
        if "\x00" in line:  # the only bad character a strictly decoded line can hold
            check_id(qid, _where(path, n), "query-id")
            check_id(did, _where(path, n), "corpus-id")
        yield n, qid, did, value


def _read_qrels(path: Path) -> tuple[Qrels, int]:
    """Judgments and the number of identical repeats dropped; the same pair graded twice differently is an error."""
    qrels: Qrels = {}
    repeats = 0
    for n, qid, did, grade in _iter_judgments(path):
        row = qrels.setdefault(qid, {})
        if did in row:
            if row[did] != grade:
                first = next(m for m, q, d, _ in _iter_judgments(path) if (q, d) == (qid, did))
                raise DataError(f"{_where(path, n)}: query {qid!r}, document {did!r} is graded {grade} here "
                                f"but {row[did]} at line {first}")
            repeats += 1
            continue
        row[did] = grade
    if not qrels:
        raise DataError(f"{path}: no judgments")
    return qrels, repeats


def load_qrels(path: str | Path) -> Qrels:
    """Read relevance judgments from a BEIR TSV (``query-id corpus-id score``) or TREC qrels file.

    A judgment repeated with the same grade is kept once (counted in a warning); the same query and
    document graded twice differently is an error naming both lines.
    """
    path = Path(path)
    qrels, repeats = _read_qrels(path)
    _warn_repeats(path, repeats, "judgments (same query, document and grade)")
    return qrels


@dataclass
class DataIssues:
    """Tolerated problems found in a BEIR folder, each also logged once as a warning.

    ``unknown_documents`` counts judgments naming a document id that ``corpus.jsonl`` lacks (BEIR keeps
    them; they are relevant documents no system can retrieve). It is ``None`` until the corpus has been
    read to the end once (``corpus()`` fully iterated, or ``load_beir(..., check_corpus=True)``).
    """

    repeated_queries: int = 0
    repeated_judgments: int = 0
    unknown_documents: int | None = None
    unknown_document_examples: tuple[str, ...] = ()


@dataclass
class BeirDataset:
    """A BEIR folder: corpus (streamed on demand), the split's queries and its qrels."""

    path: Path
    split: str
    queries: dict[str, str]
    qrels: Qrels
    issues: DataIssues = field(default_factory=DataIssues)

    @property
    def corpus_path(self) -> Path:
        return self.path / "corpus.jsonl"

    def corpus(self) -> Iterator[Document]:
        """Stream the corpus documents; reading to the end also counts judgments naming unknown documents."""
        docs = _iter_file_documents(self.corpus_path, "jsonl", None, "text", "title")
        return _check_unique(docs, str(self.corpus_path), on_done=self._count_unknown_documents)

    def _count_unknown_documents(self, ids: Container[str]) -> None:
        unknown = sorted({d for docs in self.qrels.values() for d in docs if d not in ids})
        first_time = self.issues.unknown_documents is None
        self.issues.unknown_documents = sum(1 for docs in self.qrels.values() for d in docs if d not in ids)
        self.issues.unknown_document_examples = tuple(unknown[:5])
        if unknown and first_time:
            logger.warning("%s: %d judgments name %d documents not in %s (e.g. %s); kept, as BEIR does",
                           self.path / "qrels" / f"{self.split}.tsv", self.issues.unknown_documents, len(unknown),
                           self.corpus_path.name, unknown[:3])


def load_beir(folder: str | Path, split: str = "test", *, check_corpus: bool = False) -> BeirDataset:
    """Load a BEIR folder; keeps only the queries judged in ``qrels/<split>.tsv``, as BEIR does.

    A judged query missing from ``queries.jsonl`` is an error (BEIR fails on it too). Repeats and
    judgments naming unknown documents are counted in ``.issues`` (see :class:`DataIssues`); the corpus
    is read for that only when ``check_corpus`` is true or when ``corpus()`` is first read to the end.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    for name in ("corpus.jsonl", "queries.jsonl"):
        if not (folder / name).exists():
            raise DataError(f"{folder}: missing {name} (expected the BEIR layout)")
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.exists():
        have = sorted(p.stem for p in (folder / "qrels").glob("*.tsv")) if (folder / "qrels").is_dir() else []
        raise DataError(f"{qrels_path}: no such split; available: {have}")
    qrels, repeated_judgments = _read_qrels(qrels_path)
    _warn_repeats(qrels_path, repeated_judgments, "judgments (same query, document and grade)")
    all_queries, repeated_queries = _read_queries(folder / "queries.jsonl")
    _warn_repeats(folder / "queries.jsonl", repeated_queries, "queries (same id and text)")
    missing = [q for q in qrels if q not in all_queries]
    if missing:
        raise DataError(f"{qrels_path}: {len(missing)} judged queries have no text in queries.jsonl, e.g. {missing[:3]}")
    queries = {qid: all_queries[qid] for qid in qrels}
    issues = DataIssues(repeated_queries=repeated_queries, repeated_judgments=repeated_judgments)
    data = BeirDataset(path=folder, split=split, queries=queries, qrels=qrels, issues=issues)
    if check_corpus:
        for _ in data.corpus():
            pass
    return data


def read_text_lines(path: str | Path) -> Iterator[str]:
    """Yield the non-blank lines of a UTF-8 text file (used for unlabeled training text)."""
    for _, line in iter_lines(Path(path)):
        if line.strip():
            yield line.rstrip("\r\n")


__all__ = [
    "BeirDataset", "DataError", "DataIssues", "check_id", "check_text", "iter_documents", "load_documents", "load_queries", "load_qrels",
    "load_beir", "iter_jsonl", "iter_delimited", "read_text_lines",
]
