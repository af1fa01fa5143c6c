"""Document storage for hits: ids in memory, texts in memory or read lazily from a saved JSONL file."""
from __future__ import annotations

import json
import mmap
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from retrieval.data import DataError
from retrieval.errors import IndexFormatError
from retrieval.types import Document


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
        return DocView(self.ids, self._starts, self._ends, self._mem, self._file)

    def __getitem__(self, row: int) -> Document:
        nf = len(self._starts)
        if row < nf and self._file is not None:
            rec = json.loads(self._file[int(self._starts[row]):int(self._ends[row])])
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
    def load(cls, folder: Path) -> "DocStore":
        """Open a saved store; texts stay on disk (memory-mapped) until a hit needs them."""
        path = folder / "docs.jsonl"
        for f in (path, folder / "doc_offsets.npy", folder / "doc_ids.json"):
            if not f.exists():
                raise IndexFormatError(f"{f}: missing; the index folder is incomplete")
        offsets = np.load(folder / "doc_offsets.npy", allow_pickle=False)
        ids = json.loads((folder / "doc_ids.json").read_text(encoding="utf-8"))
        if path.stat().st_size != offsets[-1] or len(ids) != len(offsets) - 1:
            raise IndexFormatError(f"{folder}: docs.jsonl, doc_offsets.npy and doc_ids.json disagree; folder damaged")
        store = cls()
        if offsets[-1] > 0:
            with path.open("rb") as fh:
                store._file = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        store._starts, store._ends = offsets[:-1].copy(), offsets[1:].copy()
        store.ids = ids
        store._row = {d: i for i, d in enumerate(ids)}
        return store


class DocView:
    """A snapshot of a DocStore's rows: ids by row, and title/text read (from the mmap or memory) on demand.

    Hits keep a view, so their text stays the text of their own document even if the store changes later.
    """

    __slots__ = ("ids", "_starts", "_ends", "_mem", "_file")

    def __init__(self, ids: list[str], starts: np.ndarray, ends: np.ndarray, mem: list[Document],
                 file: mmap.mmap | None) -> None:
        self.ids, self._starts, self._ends, self._mem, self._file = ids, starts, ends, mem, file

    def title_text(self, row: int) -> tuple[str, str]:
        """(title, text) of one row."""
        nf = len(self._starts)
        if row < nf and self._file is not None:
            rec = json.loads(self._file[int(self._starts[row]):int(self._ends[row])])
            return rec.get("title", ""), rec.get("text", "")
        doc = self._mem[row - nf]
        return doc.title, doc.text

