"""Saving folders atomically with a versioned JSON manifest and plain ``.npy`` arrays (never pickle).

A folder is written into a hidden sibling ``.NAME.tmp-<hex>`` and swapped in by renames. Replacing an
existing folder takes two renames (old -> ``.NAME.old-<hex>``, new -> ``NAME``); a journal
``.NAME.swap.json`` written before them names both, so a kill at any point leaves either the old or the
new folder at ``NAME``, or a journal that :func:`recover` (run by every save and ``Retriever.load``)
completes: forward when the new folder is whole, back otherwise. ``recover`` also deletes our own
leftovers of killed saves; a writer holds an advisory lock on its temp folder, so a live one is never
touched. Reading the files back safely is :mod:`retrieval.safe_files`.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import secrets
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

from retrieval.errors import IndexFormatError
from retrieval.safe_files import load_array, read_json

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; saves are still atomic, concurrent cleanup is not guarded
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
INDEX_ENTRIES = frozenset({MANIFEST, "docs.jsonl", "doc_offsets.npy", "doc_ids.json", "stage"})
JOURNAL = ".{name}.swap.json"
# Our own leftovers of a killed save: ".NAME.tmp-<16 hex>" / ".NAME.old-<16 hex>" (and the 8-character
# names older releases made with mkdtemp).
LEFTOVER = r"\.{name}\.(?:tmp|old)-(?:[0-9a-f]{{16}}|[a-z0-9_]{{8}})(?:\.journal[a-z0-9_]{{8}})?"


def library_version() -> str:
    from retrieval.version import __version__

    return __version__


# --- locks and fsync -----------------------------------------------------------------------------

@contextlib.contextmanager
def _locked(folder: Path, block: bool = True) -> Iterator[bool]:
    """Hold an exclusive advisory lock on ``folder``; yields False (holding nothing) when busy and not blocking.

    Where locks are unavailable (no fcntl, an unreadable folder, a file system without flock), a blocking
    call goes ahead unlocked and a non-blocking one reports busy, so an uncertain folder is never deleted.
    """
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)) if fcntl is not None else None
    except OSError:
        fd = None
    if fd is None:
        yield block
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
        except OSError:   # busy (BlockingIOError), or no locks on this file system
            yield block
            return
        yield True
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    """Make renames and new entries in ``folder`` durable."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # Windows cannot open a folder; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a directory
        pass
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under ``root`` (and ``root`` itself)."""
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(folder))


# --- recovery of interrupted saves ---------------------------------------------------------------

def _is_leftover(target: Path, name: str) -> bool:
    return re.fullmatch(LEFTOVER.format(name=re.escape(target.name)), name) is not None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _finish_swap(target: Path, journal: Path) -> None:
    """Complete the swap a journal describes: keep the new folder if it is whole, else put the old one back."""
    try:
        record = json.loads(journal.read_text(encoding="utf-8"))
        old, new = target.parent / record["old"], target.parent / record["new"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IndexFormatError(f"{journal}: unreadable journal of an interrupted save ({exc}); move the right "
                               f"copy to {target} by hand and delete the journal") from None
    if not (_is_leftover(target, old.name) and _is_leftover(target, new.name)):
        raise IndexFormatError(f"{journal}: names folders that are not ours ({old.name!r}, {new.name!r})")
    if os.path.lexists(target):        # the swap never started (new still aside) or it finished (old aside)
        _remove(new)
    elif new.is_dir():                 # killed between the renames: the new folder is whole, finish forward
        os.rename(new, target)
        logger.warning("finished an interrupted save of %s", target)
    elif old.is_dir():
        os.rename(old, target)
        logger.warning("rolled back an interrupted save of %s", target)
    fsync_dir(target.parent)
    _remove(old)
    journal.unlink()
    fsync_dir(target.parent)


def _restore_legacy(target: Path) -> None:
    """Older releases moved the old folder to ``.NAME.old-xxxxxxxx/x`` first; put a stranded one back."""
    for entry in sorted(target.parent.glob(f".{target.name}.old-*")):
        if _is_leftover(target, entry.name) and (entry / "x" / MANIFEST).is_file():
            os.rename(entry / "x", target)
            logger.warning("restored %s from an interrupted save of an older release", target)
            return


def recover(path: str | Path) -> None:
    """Finish or roll back an interrupted save of ``path`` and delete our own leftovers beside it.

    Cleaning is best effort: in a folder we may not write to, leftovers are logged and kept.
    """
    target = Path(path).resolve()
    parent = target.parent
    if not parent.is_dir():
        return
    with _locked(parent):
        journal = parent / JOURNAL.format(name=target.name)
        try:
            if journal.exists():
                _finish_swap(target, journal)
            if not os.path.lexists(target):
                _restore_legacy(target)
        except OSError as exc:
            raise IndexFormatError(f"{target}: could not finish an interrupted save ({exc})") from None
        try:
            _clean_leftovers(target)
        except OSError as exc:
            logger.warning("cannot clean up beside %s: %s", target, exc)


def _clean_leftovers(target: Path) -> None:
    """Delete ``.NAME.tmp-*``/``.NAME.old-*`` beside ``target`` unless a live writer holds one."""
    for entry in list(target.parent.iterdir()):
        if not _is_leftover(target, entry.name):
            continue
        if entry.is_dir() and not entry.is_symlink():
            with _locked(entry, block=False) as free:
                if not free:
                    continue
                shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        logger.info("removed leftover %s of an interrupted save", entry)


# --- replacing a folder --------------------------------------------------------------------------

def _sibling(target: Path, kind: str) -> Path:
    return target.parent / f".{target.name}.{kind}-{secrets.token_hex(8)}"


def check_not_cwd(target: Path) -> None:
    """Refuse to replace the current folder or one of its parents."""
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise IndexFormatError(f"{target}: is the current folder or one of its parents; refusing to replace it")


def check_index_target(path: str | Path, kind: str = "retriever", source: str | Path | None = None,
                       entries: frozenset[str] = INDEX_ENTRIES) -> None:
    """Refuse to save over anything but a retrievekit ``kind`` folder (or an empty folder), over the current
    folder or a parent of it, and into or around ``source`` (the index being read)."""
    target = Path(path).resolve()
    check_not_cwd(target)
    if source is not None:
        source = Path(source).resolve()
        if source in target.parents:
            raise IndexFormatError(f"{target}: lies inside the index being read ({source}); save somewhere else")
        if target in source.parents:
            raise IndexFormatError(f"{target}: contains the index being read ({source}); save somewhere else")
    if not os.path.lexists(target):
        return
    if not target.is_dir():
        raise IndexFormatError(f"{target}: exists and is not a folder; refusing to replace it")
    names = sorted(os.listdir(target))
    if not names:
        return
    refuse = (f"{target}: exists and is not a retrievekit index ({{}}); refusing to replace a folder of other "
              "files. Save to a new or empty folder, or remove it yourself.")
    if MANIFEST not in names:
        raise IndexFormatError(refuse.format(f"no {MANIFEST}"))
    try:
        found = read_json(target / MANIFEST)
    except IndexFormatError as exc:
        raise IndexFormatError(refuse.format(f"unreadable {MANIFEST}: {exc}")) from None
    if not isinstance(found, dict) or found.get("kind") != kind:
        raise IndexFormatError(refuse.format(f"its {MANIFEST} does not say kind {kind!r}"))
    unknown = [n for n in names if n not in entries]
    if unknown:
        raise IndexFormatError(f"{target}: is an index but also holds {unknown[:5]}, which retrievekit did not "
                               "write; refusing to delete them. Move them out first.")


def _write_journal(target: Path, old: Path, new: Path) -> Path:
    journal = target.parent / JOURNAL.format(name=target.name)
    atomic_write_text(journal, json.dumps({"old": old.name, "new": new.name}), prefix=f"{new.name}.journal")
    return journal


def _swap(target: Path, tmp: Path) -> Path | None:
    """Put ``tmp`` at ``target``; an existing ``target`` is moved aside first (journaled). Returns the old copy."""
    parent = target.parent
    if not os.path.lexists(target):
        os.rename(tmp, target)
        fsync_dir(parent)
        return None
    old = _sibling(target, "old")
    journal = _write_journal(target, old, tmp)
    os.rename(target, old)
    os.rename(tmp, target)
    fsync_dir(parent)
    journal.unlink()
    fsync_dir(parent)
    return old


@contextlib.contextmanager
def atomic_dir(path: str | Path, guard: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``path`` (see the module docstring).

    ``guard(target)`` may refuse the target (raise); it runs before writing and again just before the swap.
    A crash mid-write leaves the old folder (if any) at ``path``; the next save or load cleans up.
    """
    target = Path(path).resolve()
    check_not_cwd(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover(target)
    if guard is not None:
        guard(target)
    if os.path.lexists(target) and not target.is_dir():
        raise IndexFormatError(f"{target}: exists and is not a folder")
    tmp = _sibling(target, "tmp")
    old = None
    with contextlib.ExitStack() as held:
        with _locked(target.parent):   # created and locked at once: a concurrent recover() never takes it
            tmp.mkdir()
            held.enter_context(_locked(tmp))
        try:
            yield tmp
            fsync_tree(tmp)
            with _locked(target.parent):
                if guard is not None:
                    guard(target)
                old = _swap(target, tmp)
        except BaseException:
            if not (target.parent / JOURNAL.format(name=target.name)).exists():   # else recover() decides
                shutil.rmtree(tmp, ignore_errors=True)
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_file(path: str | Path, mode: str = "w", prefix: str | None = None) -> Iterator[IO[Any]]:
    """Open a temp sibling of ``path`` for writing (``"w"`` text, ``"wb"`` binary); on success it is fsynced and
    renamed over ``path`` (then the folder is fsynced), so readers see the old file or the whole new one.
    ``prefix`` names the temp file ``PREFIX<8 hex>`` (save journals use it so cleanup knows them as ours)."""
    path = Path(path)
    if path.is_dir():   # checked first: the rename would fail only after the whole file was written
        raise IsADirectoryError(errno.EISDIR, "is a folder; a file path is needed here", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    name = f"{prefix}{uuid.uuid4().hex[:8]}" if prefix else f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    tmp = path.with_name(name)
    try:
        encoding = None if "b" in mode else "utf-8"
        with open(tmp, mode.replace("w", "x"), encoding=encoding, newline=None if encoding is None else "\n") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str, prefix: str | None = None) -> None:
    """Write a whole text file atomically (see :func:`atomic_file`)."""
    with atomic_file(path, prefix=prefix) as fh:
        fh.write(text)


def write_manifest(folder: Path, kind: str, format_version: int, **fields: Any) -> dict[str, Any]:
    """Write ``manifest.json`` with kind, format version and library version plus ``fields``."""
    manifest = {"kind": kind, "format_version": format_version, "library_version": library_version(), **fields}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
    return manifest


def read_manifest(folder: str | Path, kind: str, supported_version: int) -> dict[str, Any]:
    """Read and check a manifest: right kind, and a format version (a real int) this library can read."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise IndexFormatError(f"{folder}: no such index folder")
    if not os.path.lexists(path):
        raise IndexFormatError(f"{folder}: no {MANIFEST}; not a retrievekit {kind} folder")
    manifest = read_json(path)
    if not isinstance(manifest, dict):
        raise IndexFormatError(f"{path}: not a JSON object")
    if manifest.get("kind") != kind:
        raise IndexFormatError(f"{path}: holds a {manifest.get('kind')!r}, expected a {kind!r}")
    version = manifest.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise IndexFormatError(f"{path}: format_version must be a positive int, got {version!r}")
    if version > supported_version:
        raise IndexFormatError(
            f"{path}: written with format version {version} by retrievekit {manifest.get('library_version')}; "
            f"this retrievekit {library_version()} reads up to version {supported_version}. Upgrade retrievekit."
        )
    return manifest


def manifest_field(manifest: dict[str, Any], key: str, types: type | tuple[type, ...], where: Path) -> Any:
    """``manifest[key]`` if present and of ``types`` (bools are not ints); else IndexFormatError naming ``where``."""
    if key not in manifest:
        raise IndexFormatError(f"{where}: missing key {key!r}")
    value = manifest[key]
    types = types if isinstance(types, tuple) else (types,)
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        raise IndexFormatError(f"{where}: {key!r} has the wrong type ({type(value).__name__})")
    return value


def save_arrays(folder: Path, arrays: dict[str, np.ndarray]) -> None:
    for name, arr in arrays.items():
        np.save(folder / f"{name}.npy", np.ascontiguousarray(arr), allow_pickle=False)


def load_arrays(folder: Path, names: list[str]) -> dict[str, np.ndarray]:
    """``name.npy`` for each name: regular files only, size checked against the header (see safe_files)."""
    return {name: load_array(folder / f"{name}.npy") for name in names}


def atomic_save_array(path: str | Path, array: np.ndarray) -> Path:
    """Save one ``.npy`` file (never pickled) atomically (used for caches, which several processes may write)."""
    with atomic_file(path, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array), allow_pickle=False)
    return Path(path)
