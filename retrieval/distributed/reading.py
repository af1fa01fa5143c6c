"""Reading a collection with Ray Data in blocks (JSONL, BEIR folder, CSV/TSV, Parquet), never whole in the driver.

Every record goes through the library's own :func:`~retrieval.data.record_to_document`, so ids, texts and titles
are checked exactly as a single-machine build checks them. Order is kept: row ``i`` of the dataset is the
``i``-th document of the file, as in ``iter_documents``.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.data import iter_documents, record_to_document
from retrieval.distributed.cluster import ray_module
from retrieval.errors import DataError

COLUMNS = ("_id", "title", "text")
FORMATS = ("jsonl", "csv", "tsv", "parquet")


def source_format(path: Path, fmt: str | None) -> str:
    """The format of a collection file: given, or from its name (``.gz`` allowed for text formats)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise DataError(f"{path}: unknown format {fmt!r}; expected one of {FORMATS}")
        return fmt
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    last = suffixes[-1] if suffixes else ""
    if last in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if last in (".csv", ".tsv", ".parquet"):
        return last[1:]
    raise DataError(f"{path}: cannot tell the format from the name; pass format= one of {FORMATS}")


def _columns(docs: Iterable[Any]) -> dict[str, np.ndarray]:
    ids, titles, texts = [], [], []
    for d in docs:
        ids.append(d.id)
        titles.append(d.title)
        texts.append(d.text)
    return {"_id": np.array(ids, dtype=object), "title": np.array(titles, dtype=object),
            "text": np.array(texts, dtype=object)}


def parse_json_lines(batch: dict[str, np.ndarray], where: str, id_field: str | None, text_field: str,
                     title_field: str | None) -> dict[str, np.ndarray]:
    """A batch of raw JSONL lines (column ``text``) as checked documents; blank lines are skipped."""
    docs = []
    for line in batch["text"]:
        if not str(line).strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: malformed JSON ({exc}) in line {str(line)[:80]!r}") from None
        if not isinstance(record, dict):
            raise DataError(f"{where}: each line must be a JSON object, got {str(line)[:80]!r}")
        docs.append(record_to_document(record, where, id_field, text_field, title_field))
    return _columns(docs)


def parse_records(batch: dict[str, np.ndarray], where: str, id_field: str | None, text_field: str,
                  title_field: str | None) -> dict[str, np.ndarray]:
    """A batch of table rows (CSV/TSV/Parquet columns) as checked documents; numeric ids become strings."""
    names = list(batch)
    docs = []
    for i in range(len(batch[names[0]]) if names else 0):
        record = {n: _plain(batch[n][i]) for n in names}
        docs.append(record_to_document(record, where, id_field, text_field, title_field))
    return _columns(docs)


def _plain(value: Any) -> Any:
    """A numpy scalar as a Python value; ids that are numbers become their decimal string."""
    if isinstance(value, (np.integer, int)) and not isinstance(value, bool):
        return str(int(value))
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_dataset(source: str | Path | Iterable[Any], *, format: str | None = None, id_field: str | None = None,
                 text_field: str = "text", title_field: str | None = "title") -> Any:
    """A Ray Dataset of ``_id``, ``title``, ``text`` rows in collection order.

    ``source`` is a BEIR folder, a JSONL/CSV/TSV (optionally ``.gz``) or Parquet file (or folder of Parquet
    files), read by Ray Data in blocks on the cluster; an in-memory iterable (already in the driver) is checked
    as ``iter_documents`` checks it and handed to Ray Data as is.
    """
    ray = ray_module()
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    fields = dict(id_field=id_field, text_field=text_field, title_field=title_field)
    if not isinstance(source, (str, Path)):
        docs = list(iter_documents(source, **fields))
        return ray.data.from_items([{"_id": d.id, "title": d.title, "text": d.text} for d in docs])
    path = Path(source).resolve()
    if path.is_dir() and (path / "corpus.jsonl").is_file():
        path = path / "corpus.jsonl"
    if path.is_dir() and format in (None, "parquet"):
        fmt = "parquet"
    elif not path.exists():
        raise DataError(f"{path}: no such file or folder")
    else:
        fmt = source_format(path, format)
    kwargs = dict(where=str(path), **fields)
    if fmt == "jsonl":
        return ray.data.read_text(str(path)).map_batches(parse_json_lines, fn_kwargs=kwargs, batch_format="numpy")
    if fmt == "parquet":
        return ray.data.read_parquet(str(path)).map_batches(parse_records, fn_kwargs=kwargs, batch_format="numpy")
    import pyarrow.csv as pacsv

    parse = pacsv.ParseOptions(delimiter="\t" if fmt == "tsv" else ",")
    return ray.data.read_csv(str(path), parse_options=parse).map_batches(parse_records, fn_kwargs=kwargs,
                                                                         batch_format="numpy")
