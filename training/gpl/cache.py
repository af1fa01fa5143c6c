"""The cached stages of a GPL run: ``OUT/gpl/<stage>/``, each with a manifest and JSONL outputs, resumable.

A stage folder holds ``manifest.json`` (the stage's *key*: its settings and the fingerprint of its input; whether
it finished; its counts and wall time) and its outputs. A stage whose manifest has the same key and is finished is
skipped; one with another key is discarded (with a warning naming what changed) and recomputed, so a changed
setting or input is never silently reused. Long stages write their rows in chunks,
``chunk-<start>-<end>.jsonl`` (rows ``start..end-1`` of the stage's input), each written atomically
(:func:`retrieval.persistence.atomic_file`): after a kill the stage resumes at the end of the last whole chunk.
Files are plain JSON, never pickle; a damaged file is an error naming the file and line.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from retrieval.errors import DataError
from retrieval.persistence import atomic_file, atomic_write_text

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
_CHUNK = re.compile(r"^chunk-(\d{9})-(\d{9})\.jsonl$")
_TEMP = re.compile(r"^\..*\.tmp$")   # atomic_file's temporary names


def digest(value: Any) -> str:
    """SHA-256 of ``value`` as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Write ``rows`` as JSON lines, atomically."""
    with atomic_file(path) as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a file this module wrote; DataError names the file and line of a bad one."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}, line {n}: malformed JSON ({exc.msg}); delete {path.parent} to "
                                "recompute this stage") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}, line {n}: expected a JSON object")
            rows.append(row)
    return rows


def field_of(row: Mapping[str, Any], key: str, kind: type | tuple[type, ...], path: Path, n: int) -> Any:
    """``row[key]`` when present and of ``kind``; else DataError naming the file, line and field."""
    value = row.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DataError(f"{path}, line {n}: field {key!r} missing or of the wrong type ({type(value).__name__})")
    return value


class Stage:
    """One stage folder: open it against a key, write chunks or outputs, mark it finished with its stats."""

    def __init__(self, folder: Path, key: Mapping[str, Any]) -> None:
        self.folder, self.key = Path(folder), json.loads(json.dumps(key))   # plain JSON types, as read back
        self.manifest = self._open()

    def _read_manifest(self) -> dict[str, Any] | None:
        path = self.folder / MANIFEST
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}, line {exc.lineno}: malformed JSON ({exc.msg}); delete {self.folder} to "
                            "recompute this stage") from None
        if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
            raise DataError(f"{path}: not a GPL stage manifest of format {FORMAT_VERSION}")
        return data

    def _open(self) -> dict[str, Any]:
        old = self._read_manifest()
        if old is not None and old.get("key") != self.key:
            before = old.get("key") if isinstance(old.get("key"), dict) else {}
            changed = sorted(k for k in set(before) | set(self.key) if before.get(k) != self.key.get(k))
            logger.warning("%s: settings or input changed (%s); recomputing this stage", self.folder,
                           ", ".join(changed))
            shutil.rmtree(self.folder)
            old = None
        self.folder.mkdir(parents=True, exist_ok=True)
        for path in self.folder.iterdir():
            if _TEMP.match(path.name):
                path.unlink(missing_ok=True)   # a killed atomic write
        if old is None:
            old = {"format_version": FORMAT_VERSION, "key": self.key, "complete": False}
            atomic_write_text(self.folder / MANIFEST, json.dumps(old, indent=2, sort_keys=True))
        return old

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    @property
    def stats(self) -> dict[str, Any]:
        return dict(self.manifest.get("stats") or {})

    def finish(self, stats: Mapping[str, Any]) -> None:
        """Mark the stage finished, recording ``stats`` (counts, seconds...)."""
        self.manifest = {**self.manifest, "complete": True, "stats": dict(stats)}
        atomic_write_text(self.folder / MANIFEST, json.dumps(self.manifest, indent=2, sort_keys=True))

    def chunks(self) -> list[tuple[int, int, Path]]:
        """The whole chunks from row 0 on without a gap, in order (a chunk after a gap is ignored)."""
        found = sorted((int(m[1]), int(m[2]), p) for p in self.folder.iterdir() if (m := _CHUNK.match(p.name)))
        out, end = [], 0
        for start, stop, path in found:
            if start != end or stop <= start:
                break
            out.append((start, stop, path))
            end = stop
        return out

    def done_rows(self) -> int:
        """Rows of the input covered by whole chunks: where a resumed stage starts."""
        chunks = self.chunks()
        return chunks[-1][1] if chunks else 0

    def write_chunk(self, start: int, end: int, rows: Iterable[Mapping[str, Any]]) -> Path:
        """Write rows ``start..end-1`` as one chunk file (atomically)."""
        path = self.folder / f"chunk-{start:09d}-{end:09d}.jsonl"
        write_jsonl(path, rows)
        return path

    def chunk_rows(self) -> Iterator[tuple[Path, int, dict[str, Any]]]:
        """``(file, line, row)`` for every row of the whole chunks, in order."""
        for _, _, path in self.chunks():
            for n, row in enumerate(read_jsonl(path), start=1):
                yield path, n, row
