"""Saving folders atomically with a versioned JSON manifest and plain ``.npy`` arrays (never pickle)."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.errors import IndexFormatError

MANIFEST = "manifest.json"


def library_version() -> str:
    from retrieval.version import __version__

    return __version__


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``path`` in one rename.

    A crash mid-write leaves the old folder (if any) untouched and at most a ``.tmp`` folder behind.
    """
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not path.is_dir():
        raise IndexFormatError(f"{path}: exists and is not a folder")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                with f.open("rb") as fh:
                    os.fsync(fh.fileno())
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, old / "x")
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file through a temp file + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_manifest(folder: Path, kind: str, format_version: int, **fields: Any) -> dict[str, Any]:
    """Write ``manifest.json`` with kind, format version and library version plus ``fields``."""
    manifest = {"kind": kind, "format_version": format_version, "library_version": library_version(), **fields}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
    return manifest


def read_manifest(folder: str | Path, kind: str, supported_version: int) -> dict[str, Any]:
    """Read and check a manifest: right kind, and a format version this library can read."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise IndexFormatError(f"{folder}: no such index folder")
    if not path.exists():
        raise IndexFormatError(f"{folder}: no {MANIFEST}; not a retrievekit {kind} folder")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexFormatError(f"{path}: unreadable manifest ({exc})") from None
    if manifest.get("kind") != kind:
        raise IndexFormatError(f"{path}: holds a {manifest.get('kind')!r}, expected a {kind!r}")
    version = manifest.get("format_version")
    if not isinstance(version, int):
        raise IndexFormatError(f"{path}: missing format_version")
    if version > supported_version:
        raise IndexFormatError(
            f"{path}: written with format version {version} by retrievekit {manifest.get('library_version')}; "
            f"this retrievekit {library_version()} reads up to version {supported_version}. Upgrade retrievekit."
        )
    return manifest


def save_arrays(folder: Path, arrays: dict[str, np.ndarray]) -> None:
    for name, arr in arrays.items():
        np.save(folder / f"{name}.npy", np.ascontiguousarray(arr), allow_pickle=False)


def load_arrays(folder: Path, names: list[str], mmap: bool = False) -> dict[str, np.ndarray]:
    out = {}
    for name in names:
        path = folder / f"{name}.npy"
        if not path.exists():
            raise IndexFormatError(f"{path}: missing array file")
        out[name] = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    return out
