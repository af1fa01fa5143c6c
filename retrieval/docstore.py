"""Document storage for hits: ids in memory, texts in memory or read lazily from a saved JSONL file."""
from __future__ import annotations

import json
import mmap
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from retrieval.data import DataError
from retrieval.errors import IndexFormatError
from retrieval.safe_files import check_array, load_array, map_file, read_str_list
from retrieval.types import Document

DOCS_FILE = "docs.jsonl"


def read_record(file: mmap.mmap, start: int, end: int, row: int, doc_id: str, path: Path | None) -> dict:
    """The JSON record of one saved row; a damaged line or one holding another id raises IndexFormatError."""
    try:
        rec = json.loads(file[start:end])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexFormatError(f"{path or DOCS_FILE} line {row + 1}: damaged record ({exc})") from None
    if isinstance(rec, dict) and not all(isinstance(rec.get(f, ""), str) for f in ("title", "text")):
        raise IndexFormatError(f"{path or DOCS_FILE} line {row + 1}: title and text must be strings")
    if not isinstance(rec, dict) or rec.get("_id") != doc_id:
        found = rec.get("_id") if isinstance(rec, dict) else rec
        raise IndexFormatError(f"{path or DOCS_FILE} line {row + 1}: holds {found!r}, doc_ids.json says {doc_id!r}; "
                               "the index folder is damaged")
    return rec


class DocStore:
    """Row-addressed documents; rows 0..n-1 are shared with every first stage of a Retriever.

    After :meth:`load`, the first rows live in a memory-mapped ``docs.jsonl`` (byte spans in
    ``_starts``/``_ends``); documents added later are kept in memory after them.
    """

    def __init__(self, docs: Iterable[Document] = ()) -> None:
        self.ids: list[str] = []
        self._row: dict[str, int] = {}
        self._mem: list[Document] = []
        self._file: mmap.mmap | None = None
        self._path: Path | None = None   # the saved docs.jsonl behind _file, named in errors
        self._starts = np.zeros(0, dtype=np.int64)
        self._ends = np.zeros(0, dtype=np.int64)
        self.add(docs)

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, docs: Iterable[Document]) -> list[int]:
        """Append documents; raises on an id already present. Returns their rows."""
        docs = list(docs)
        seen = set()
        for d in docs:
            if d.id in self._row or d.id in seen:
                raise DataError(f"document id {d.id!r} is already in the index")
            seen.add(d.id)
        first = len(self.ids)
        # copy-on-write: a DocView taken before this call keeps seeing the old rows
        self.ids = self.ids + [d.id for d in docs]
        self._row.update((d.id, first + i) for i, d in enumerate(docs))
        self._mem = self._mem + docs
        return list(range(first, len(self.ids)))

    def rows(self, ids: Sequence[str]) -> list[int]:
        """Rows of the given ids; raises ``KeyError`` naming unknown ones."""
        missing = [i for i in ids if i not in self._row]
        if missing:
            raise KeyError(f"unknown document ids: {missing[:5]}")
        return [self._row[i] for i in ids]

    def remove(self, rows: Sequence[int]) -> None:
        """Delete rows; later rows shift down (stages do the same)."""
        drop = np.unique(np.asarray(rows, dtype=np.int64))
        nf = len(self._starts)
        file_drop = drop[drop < nf]
        self._starts = np.delete(self._starts, file_drop)
        self._ends = np.delete(self._ends, file_drop)
        mem_drop = set((drop[drop >= nf] - nf).tolist())
        self._mem = [d for i, d in enumerate(self._mem) if i not in mem_drop]
        dropped = set(drop.tolist())
        self.ids = [d for i, d in enumerate(self.ids) if i not in dropped]
        self._row = {d: i for i, d in enumerate(self.ids)}

    def view(self) -> "DocView":
        """An immutable snapshot of the rows as they are now; later add/remove calls do not change it."""
        return DocView(self.ids, self._starts, self._ends, self._mem, self._file, self._path)

    def __getitem__(self, row: int) -> Document:
        nf = len(self._starts)
        if row < nf and self._file is not None:
            rec = read_record(self._file, int(self._starts[row]), int(self._ends[row]), row, self.ids[row], self._path)
            return Document(id=rec["_id"], title=rec.get("title", ""), text=rec.get("text", ""))
        return self._mem[row - nf]

    def __iter__(self) -> Iterator[Document]:
        return (self[i] for i in range(len(self)))

    # --- persistence -------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        """Write ``docs.jsonl`` (BEIR keys), ``doc_offsets.npy`` (line boundaries) and ``doc_ids.json``."""
        offsets = np.zeros(len(self) + 1, dtype=np.int64)
        with (folder / "docs.jsonl").open("wb") as fh:
            for i, d in enumerate(self):
                line = json.dumps({"_id": d.id, "title": d.title, "text": d.text}, ensure_ascii=False)
                fh.write(line.encode("utf-8") + b"\n")
                offsets[i + 1] = fh.tell()
        np.save(folder / "doc_offsets.npy", offsets, allow_pickle=False)
        (folder / "doc_ids.json").write_text(json.dumps(self.ids, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path, check_ids: bool = True) -> "DocStore":
        """Open a saved store; texts stay on disk (memory-mapped) until a hit needs them.

        Offsets and ids are checked against each other and the file size; ``check_ids`` also compares each
        line's ``_id`` with ``doc_ids.json`` (a full scan: needed when no checksums vouch for the files).
        """
        path = folder / DOCS_FILE
        offsets = check_array(load_array(folder / "doc_offsets.npy"), folder / "doc_offsets.npy", "iu")
        ids = read_str_list(folder / "doc_ids.json", "document id")
        file = map_file(path)
        size = len(file) if file is not None else 0
        check_offsets(offsets, size, len(ids), folder)
        if file is not None and check_ids:
            check_line_ids(file, offsets, ids, path)
        store = cls()
        store._file, store._path = file, path
        offsets = offsets.astype(np.int64)
        store._starts, store._ends = offsets[:-1].copy(), offsets[1:].copy()
        store.ids = ids
        store._row = {d: i for i, d in enumerate(ids)}
        return store


def check_offsets(offsets: np.ndarray, size: int, n_ids: int, folder: Path) -> None:
    """Line boundaries must start at 0, grow strictly, end at the file size, and number one per id plus one."""
    where = folder / "doc_offsets.npy"
    if len(offsets) != n_ids + 1:
        raise IndexFormatError(f"{where}: {len(offsets)} offsets for {n_ids} ids in doc_ids.json (need ids + 1)")
    if offsets[0] != 0 or offsets[-1] != size:
        raise IndexFormatError(f"{where}: offsets run from {offsets[0]} to {offsets[-1]}, {DOCS_FILE} has {size} "
                               "bytes; the index folder is damaged")
    if n_ids and not (np.diff(offsets.astype(np.int64)) > 0).all():
        raise IndexFormatError(f"{where}: offsets do not grow line by line; the index folder is damaged")


def check_line_ids(file: mmap.mmap, offsets: np.ndarray, ids: list[str], path: Path) -> None:
    """Each saved line must start with the ``_id`` that doc_ids.json gives its row (older indexes have no checksums)."""
    decoder = json.JSONDecoder()
    head = b'{"_id": '
    for row, (start, doc_id) in enumerate(zip(offsets[:-1].tolist(), ids)):
        line = file[start:start + len(head) + 6 * len(doc_id) + 16]   # room for the id, escaped
        try:
            found = decoder.raw_decode(line[len(head):].decode("utf-8", "replace"))[0] \
                if line.startswith(head) else None
        except json.JSONDecodeError:
            found = None
        if found != doc_id:
            raise IndexFormatError(f"{path} line {row + 1}: does not hold id {doc_id!r}, which doc_ids.json gives "
                                   f"row {row}; the index folder is damaged")


class DocView:
    """A snapshot of a DocStore's rows: ids by row, and title/text read (from the mmap or memory) on demand.

    Hits keep a view, so their text stays the text of their own document even if the store changes later.
    """

    __slots__ = ("ids", "_starts", "_ends", "_mem", "_file", "_path")

    def __init__(self, ids: list[str], starts: np.ndarray, ends: np.ndarray, mem: list[Document],
                 file: mmap.mmap | None, path: Path | None = None) -> None:
        self.ids, self._starts, self._ends, self._mem, self._file = ids, starts, ends, mem, file
        self._path = path

    def title_text(self, row: int) -> tuple[str, str]:
        """(title, text) of one row."""
        nf = len(self._starts)
        if row < nf and self._file is not None:
            rec = read_record(self._file, int(self._starts[row]), int(self._ends[row]), row, self.ids[row], self._path)
            return rec.get("title", ""), rec.get("text", "")
        doc = self._mem[row - nf]
        return doc.title, doc.text

