"""Reading the files of a saved index safely: regular files only, checksums verified, arrays checked.

Every file a loader reads goes through :func:`read_file` (or :func:`map_file` for the memory-mapped
``docs.jsonl``). It opens with ``O_NOFOLLOW | O_NONBLOCK`` and refuses anything but a regular file, so a
symlink (to ``/dev/zero``, or out of the folder) or a FIFO can neither be followed nor block the load.

While :func:`verifying` is active (``Retriever.load`` of a format-2 index), each file read must be listed in
the manifest's ``files`` table and match its size and SHA-256; ``.npy`` files and JSON lists must also have
the row count the table records. The file is read once: the same bytes are hashed and then parsed.
"""
from __future__ import annotations

import contextlib
import contextvars
import errno
import hashlib
import json
import mmap
import os
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from retrieval.errors import IndexFormatError

CHUNK = 1 << 20
HEADER_MAX = 1 << 16       # a .npy header we write is under 200 bytes; numpy itself refuses ones over 10,000
OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


class FileTable:
    """The ``files`` table of a manifest: relative path -> size, SHA-256 and row count, checked on read."""

    def __init__(self, root: Path, files: Any, manifest: Path) -> None:
        if not isinstance(files, Mapping):
            raise IndexFormatError(f"{manifest}: 'files' must map file names to checksums")
        self.root, self.manifest, self.entries = root, manifest, {}
        for rel, entry in files.items():
            parts = PurePosixPath(rel).parts
            ok = isinstance(entry, Mapping) and isinstance(entry.get("sha256"), str) and _is_count(entry.get("bytes"))
            if not parts or PurePosixPath(rel).is_absolute() or ".." in parts or not ok \
                    or not (entry.get("rows") is None or _is_count(entry["rows"])):
                raise IndexFormatError(f"{manifest}: bad entry {rel!r} in 'files'")
            self.entries[rel] = entry

    def entry(self, path: Path) -> dict[str, Any] | None:
        """The table's entry for ``path``; a file under the root that the table does not list is refused."""
        try:
            rel = Path(path).relative_to(self.root).as_posix()
        except ValueError:
            return None
        if rel not in self.entries:
            raise IndexFormatError(f"{path}: not listed in {self.manifest}; the index folder was changed after saving")
        return self.entries[rel]


_TABLE: contextvars.ContextVar[FileTable | None] = contextvars.ContextVar("retrievekit_file_table", default=None)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@contextlib.contextmanager
def verifying(table: FileTable | None) -> Iterator[None]:
    """While the block runs, files read under ``table.root`` are checked against ``table`` (None: not checked)."""
    token = _TABLE.set(table)
    try:
        yield
    finally:
        _TABLE.reset(token)


def open_regular(path: Path) -> int:
    """A read-only descriptor of ``path``, which must be a regular file: never a symlink, FIFO or device."""
    try:
        fd = os.open(path, OPEN_FLAGS)
    except FileNotFoundError:
        raise IndexFormatError(f"{path}: missing; the index folder is incomplete") from None
    except OSError as exc:
        why = "a symbolic link; index files must be regular files" if exc.errno == errno.ELOOP else exc.strerror
        raise IndexFormatError(f"{path}: cannot open ({why})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise IndexFormatError(f"{path}: not a regular file; index files must be regular files")
    return fd


def _check_digest(path: Path, data: Any, size: int) -> None:
    """Compare ``data`` (the whole file) with the active table's size and SHA-256 for ``path``."""
    table = _TABLE.get()
    entry = table.entry(path) if table is not None else None
    if entry is None:
        return
    if size != entry["bytes"]:
        raise IndexFormatError(f"{path}: {size} bytes, the manifest says {entry['bytes']}; file truncated or changed")
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise IndexFormatError(f"{path}: SHA-256 differs from the manifest's; file damaged or changed after saving")


def _check_rows(path: Path, rows: int) -> None:
    table = _TABLE.get()
    entry = table.entry(path) if table is not None else None
    if entry is not None and entry.get("rows") is not None and entry["rows"] != rows:
        raise IndexFormatError(f"{path}: {rows} rows, the manifest says {entry['rows']}")


def read_file(path: Path) -> bytearray:
    """The bytes of a regular file (verified when a table is active)."""
    fd = open_regular(path)
    with os.fdopen(fd, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        buf = bytearray(size)
        got = fh.readinto(memoryview(buf)) if size else 0
        if got != size or fh.read(1):
            raise IndexFormatError(f"{path}: changed size while being read")
    _check_digest(path, buf, size)
    return buf


def map_file(path: Path) -> mmap.mmap | None:
    """A read-only memory map of a regular file (None when empty), verified when a table is active."""
    fd = open_regular(path)
    try:
        size = os.fstat(fd).st_size
        mapped = mmap.mmap(fd, 0, access=mmap.ACCESS_READ) if size else None
    finally:
        os.close(fd)
    _check_digest(path, mapped if mapped is not None else b"", size)
    return mapped


def read_json(path: Path) -> Any:
    """Parsed JSON of a regular file; damage raises IndexFormatError naming it."""
    data = read_file(path)
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise IndexFormatError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(value, list):
        _check_rows(path, len(value))
    return value


def read_str_list(path: Path, what: str) -> list[str]:
    """A JSON list of unique strings (document ids, vocabulary terms); a duplicate names its two places."""
    value = read_json(path)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise IndexFormatError(f"{path}: expected a JSON list of {what} strings")
    if len(set(value)) != len(value):
        first: dict[str, int] = {}
        for i, v in enumerate(value):
            if v in first:
                raise IndexFormatError(f"{path}: {what} {v!r} appears twice (entries {first[v]} and {i})")
            first[v] = i
    return value


def _npy_header(buf: bytearray, path: Path) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran_order, dtype, data offset) of an in-memory ``.npy``; refuses object dtypes."""
    import io

    fh = io.BytesIO(bytes(buf[:HEADER_MAX]))
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except Exception as exc:  # noqa: BLE001 - numpy raises ValueError, SyntaxError, EOFError... on a bad header
        raise IndexFormatError(f"{path}: not a valid .npy file ({type(exc).__name__}: {exc})") from None
    if any(n < 0 for n in shape):
        raise IndexFormatError(f"{path}: negative shape {shape} in the .npy header")
    if dtype.hasobject:
        raise IndexFormatError(f"{path}: holds Python objects; index arrays are plain numbers")
    return shape, fortran, dtype, fh.tell()


def load_array(path: Path) -> np.ndarray:
    """A ``.npy`` array whose data size matches its header exactly (no pickle, no giant allocation)."""
    buf = read_file(path)
    shape, fortran, dtype, offset = _npy_header(buf, path)
    count = int(np.prod(shape, dtype=object)) if shape else 1
    if len(buf) - offset != count * dtype.itemsize:
        raise IndexFormatError(f"{path}: header says shape {shape} of {dtype} ({count * dtype.itemsize} bytes), "
                               f"the file holds {len(buf) - offset}; truncated or damaged")
    flat = np.frombuffer(buf, dtype=dtype, count=count, offset=offset)
    arr = flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)
    _check_rows(path, shape[0] if shape else 1)
    return arr


def check_array(arr: np.ndarray, path: Path, kinds: str, ndim: int = 1) -> np.ndarray:
    """``arr`` if its dtype kind is one of ``kinds`` ('i'/'u' integers, 'f' floats) and it has ``ndim`` dims."""
    if arr.dtype.kind not in kinds or arr.ndim != ndim:
        want = " or ".join({"i": "signed int", "u": "unsigned int", "f": "float"}[k] for k in kinds)
        raise IndexFormatError(f"{path}: expected a {ndim}-D {want} array, found {arr.ndim}-D {arr.dtype}")
    if arr.dtype.kind == "f" and arr.size and not np.isfinite(arr).all():
        raise IndexFormatError(f"{path}: holds NaN or infinite values")
    return arr


def file_digest(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_rows(path: Path) -> int | None:
    """The row count a file must have: first dimension of a ``.npy``, length of a JSON list, lines of JSONL."""
    if path.suffix == ".npy":
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            shape = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                     else np.lib.format.read_array_header_2_0)(fh)[0]
        return shape[0] if shape else 1
    if path.suffix == ".jsonl":
        with open(path, "rb") as fh:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(CHUNK), b""))
    if path.suffix == ".json" and path.name != "manifest.json":
        value = json.loads(path.read_text(encoding="utf-8"))
        return len(value) if isinstance(value, list) else None
    return None


def file_table(root: Path) -> dict[str, dict[str, Any]]:
    """Size, SHA-256 and row count of every file under ``root`` (its own ``manifest.json`` excepted)."""
    table = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel != "manifest.json":
            table[rel] = {"bytes": path.stat().st_size, "sha256": file_digest(path), "rows": file_rows(path)}
    return table


def check_tree(root: Path) -> None:
    """Refuse an index folder holding a symlink or a special file anywhere (nothing in it may lead outside)."""
    pending = [root]
    while pending:
        folder = pending.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                mode = entry.stat(follow_symlinks=False).st_mode
                if stat.S_ISLNK(mode):
                    raise IndexFormatError(f"{entry.path}: is a symbolic link; an index folder holds only "
                                           "regular files and folders")
                if stat.S_ISDIR(mode):
                    pending.append(Path(entry.path))
                elif not stat.S_ISREG(mode):
                    raise IndexFormatError(f"{entry.path}: is not a regular file (a FIFO, socket or device)")
