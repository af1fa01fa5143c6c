"""Load documents, queries and qrels from BEIR folders, JSONL/CSV/TSV files or Python iterables.

Files are streamed line by line; every problem is reported as a :class:`DataError` naming the
file, the line and the field, so a user can fix the input instead of reading a traceback.
"""
from __future__ import annotations

import csv
import gzip
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from retrieval.errors import DataError
from retrieval.types import Document, Qrels

logger = logging.getLogger(__name__)

ID_FIELDS = ("_id", "id", "docid", "doc_id")
FORMATS = ("jsonl", "csv", "tsv")


def _where(path: Path | str, line: int | None = None, field: str | None = None) -> str:
    loc = str(path)
    if line is not None:
        loc += f", line {line}"
    if field is not None:
        loc += f", field {field!r}"
    return loc


def _open_binary(path: Path) -> BinaryIO:
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected a file")
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return path.open("rb")


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for each line, decoding UTF-8 strictly and naming bad lines."""
    n = 0
    with _open_binary(path) as fh:
        for n, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{_where(path, n)}: not valid UTF-8 (byte {exc.start}: {raw[exc.start:exc.start + 4]!r})"
                ) from None
            if n == 1 and line.startswith("\ufeff"):
                line = line[1:]
            yield n, line
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
        if not isinstance(obj, dict):
            raise DataError(f"{_where(path, n)}: expected a JSON object, got {type(obj).__name__}")
        seen += 1
        yield n, obj
    if seen == 0:
        raise DataError(f"{path}: file has no records")


def iter_delimited(path: Path | str, delimiter: str) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(line_number, row)`` for a CSV/TSV file with a header row."""
    path = Path(path)
    counter = {"line": 0}

    def lines() -> Iterator[str]:
        for n, line in iter_lines(path):
            counter["line"] = n
            yield line

    reader = csv.reader(lines(), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{path}: file is empty") from None
    header = [h.strip() for h in header]
    seen = 0
    for row in reader:
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise DataError(
                f"{_where(path, counter['line'])}: {len(row)} columns, header has {len(header)} ({header})"
            )
        seen += 1
        yield counter["line"], dict(zip(header, row))
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


def record_to_document(
    record: dict[str, Any], where: str, id_field: str | None, text_field: str, title_field: str | None
) -> Document:
    """Turn one raw record into a :class:`Document`, checking the id and text fields."""
    id_name = _pick_id_field(record, id_field, where)
    doc_id = record.get(id_name)
    if doc_id is None or (isinstance(doc_id, str) and not doc_id.strip()):
        raise DataError(f"{where}, field {id_name!r}: missing or empty document id")
    if isinstance(doc_id, (dict, list, float)):
        raise DataError(f"{where}, field {id_name!r}: document id must be a string or integer")
    text = record.get(text_field)
    if text is None:
        raise DataError(f"{where}, field {text_field!r}: missing document text")
    if not isinstance(text, str):
        raise DataError(f"{where}, field {text_field!r}: text must be a string, got {type(text).__name__}")
    title = record.get(title_field, "") if title_field else ""
    if title is None:
        title = ""
    if not isinstance(title, str):
        raise DataError(f"{where}, field {title_field!r}: title must be a string, got {type(title).__name__}")
    return Document(id=str(doc_id), text=text, title=title)


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


def _iter_python_documents(items: Iterable[Any], id_field: str | None, text_field: str,
                           title_field: str | None) -> Iterator[tuple[str, int, Document]]:
    for i, item in enumerate(items):
        where = f"document #{i}"
        if isinstance(item, Document):
            yield where, i, item
        elif isinstance(item, str):
            yield where, i, Document(id=str(i), text=item)
        elif isinstance(item, dict):
            yield where, i, record_to_document(item, where, id_field, text_field, title_field)
        else:
            raise DataError(f"document #{i}: expected str, dict or Document, got {type(item).__name__}")


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
    (``_id``/``id``, ``title``, ``text``) or :class:`Document` objects. Duplicate ids raise
    :class:`DataError`; empty texts are kept (BEIR corpora contain some) and counted in the log.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            corpus = path / "corpus.jsonl"
            if not corpus.exists():
                raise DataError(f"{path}: folder has no corpus.jsonl (expected the BEIR layout)")
            path = corpus
        docs = _iter_file_documents(path, format, id_field, text_field, title_field)
        label = str(path)
    else:
        if isinstance(source, dict):
            raise DataError("documents: got a dict; pass its values() or a list of records")
        docs = _iter_python_documents(source, id_field, text_field, title_field)
        label = "documents"
    yield from _check_unique(docs, label)


def _check_unique(docs: Iterator[tuple[str, int, Document]], label: str) -> Iterator[Document]:
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


def load_documents(source: str | Path | Iterable[Any], **kwargs: Any) -> list[Document]:
    """Like :func:`iter_documents` but returns a list."""
    return list(iter_documents(source, **kwargs))


def load_queries(path: str | Path) -> dict[str, str]:
    """Read queries from BEIR ``queries.jsonl`` (``_id``, ``text``) or a headerless ``id<TAB>text`` TSV."""
    path = Path(path)
    queries: dict[str, str] = {}
    if infer_format(path) == "jsonl":
        for n, rec in iter_jsonl(path):
            doc = record_to_document(rec, _where(path, n), None, "text", None)
            queries[doc.id] = doc.text
        return queries
    for n, line in iter_lines(path):
        if not line.strip():
            continue
        parts = line.rstrip("\r\n").split("\t")
        if len(parts) < 2:
            raise DataError(f"{_where(path, n)}: expected 'id<TAB>text'")
        queries[parts[0]] = parts[1]
    return queries


def load_qrels(path: str | Path) -> Qrels:
    """Read relevance judgments from a BEIR TSV (``query-id corpus-id score``) or TREC qrels file."""
    path = Path(path)
    qrels: Qrels = {}
    for n, line in iter_lines(path):
        parts = line.split()
        if not parts:
            continue
        if n == 1 and not parts[-1].lstrip("-").isdigit():
            continue  # header row
        if len(parts) == 3:
            qid, did, grade = parts
        elif len(parts) == 4:
            qid, _, did, grade = parts
        else:
            raise DataError(f"{_where(path, n)}: expected 'query-id corpus-id score' (or TREC 'qid 0 docid rel')")
        try:
            qrels.setdefault(qid, {})[did] = int(grade)
        except ValueError:
            raise DataError(f"{_where(path, n, 'score')}: relevance grade {grade!r} is not an integer") from None
    if not qrels:
        raise DataError(f"{path}: no judgments")
    return qrels


@dataclass
class BeirDataset:
    """A BEIR folder: corpus (streamed on demand), the split's queries and its qrels."""

    path: Path
    split: str
    queries: dict[str, str]
    qrels: Qrels

    @property
    def corpus_path(self) -> Path:
        return self.path / "corpus.jsonl"

    def corpus(self) -> Iterator[Document]:
        """Stream the corpus documents."""
        return iter_documents(self.corpus_path)


def load_beir(folder: str | Path, split: str = "test") -> BeirDataset:
    """Load a BEIR folder; keeps only the queries judged in ``qrels/<split>.tsv``, as BEIR does."""
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
    qrels = load_qrels(qrels_path)
    all_queries = load_queries(folder / "queries.jsonl")
    missing = [q for q in qrels if q not in all_queries]
    if missing:
        raise DataError(f"{qrels_path}: {len(missing)} judged queries have no text in queries.jsonl, e.g. {missing[:3]}")
    queries = {qid: all_queries[qid] for qid in qrels}
    return BeirDataset(path=folder, split=split, queries=queries, qrels=qrels)


def read_text_lines(path: str | Path) -> Iterator[str]:
    """Yield the non-blank lines of a UTF-8 text file (used for unlabeled training text)."""
    for _, line in iter_lines(Path(path)):
        if line.strip():
            yield line.rstrip("\r\n")


__all__ = [
    "BeirDataset", "DataError", "iter_documents", "load_documents", "load_queries", "load_qrels",
    "load_beir", "iter_jsonl", "iter_delimited", "read_text_lines",
]
