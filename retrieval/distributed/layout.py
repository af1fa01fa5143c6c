"""The saved sharded index: a folder with a manifest listing its shards, each shard a normal saved index.

    INDEX/manifest.json          kind "sharded": method, documents, shards (name, first row, documents, SHA-256
                                 of the shard's own manifest), BM25 collection statistics, encoder facts, fusion
    INDEX/shards/shard-00000/    a normal ``Retriever`` folder (``Retriever.load`` opens it on its own)
    INDEX/stats/shard-00000.idf.npy   BM25: the collection-wide idf of that shard's terms (its vocabulary order)

The manifest's ``files`` table checks ``stats/``; each shard's manifest (whose hash the top manifest records)
checks that shard's files, so every byte is covered. The folder is written with the library's atomic folder
swap: a build killed at any point leaves the old index or none, never a half-written one.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.errors import IndexFormatError
from retrieval.persistence import MANIFEST, manifest_field, read_manifest, write_manifest
from retrieval.safe_files import FileTable, check_array, check_tree, file_digest, file_table, load_array, verifying

KIND = "sharded"
FORMAT_VERSION = 1
ENTRIES = frozenset({MANIFEST, "shards", "stats"})


@dataclass(frozen=True)
class ShardSpec:
    """Where one shard lives and which global rows it holds: ``offset`` .. ``offset + n_docs - 1``."""

    index: int
    name: str
    offset: int
    n_docs: int
    folder: str                     # absolute path of the shard's index folder
    idf_file: str | None = None     # absolute path of its global-idf array (bm25 and hybrid)

    @property
    def label(self) -> str:
        return f"shard {self.index} ({self.folder})"


@dataclass(frozen=True)
class Layout:
    """A sharded index as its manifest describes it."""

    root: Path
    method: str
    n_docs: int
    shards: tuple[ShardSpec, ...]
    avgdl: float | None
    encoder: dict[str, Any] | None
    fusion: dict[str, Any] | None
    build: dict[str, Any]

    @property
    def offsets(self) -> np.ndarray:
        return np.array([s.offset for s in self.shards], dtype=np.int64)


def shard_name(i: int) -> str:
    return f"shard-{i:05d}"


def write_layout(root: Path, method: str, shards: list[dict[str, Any]], *, bm25: dict[str, int] | None,
                 encoder: dict[str, Any] | None, fusion: dict[str, Any] | None, build: dict[str, Any]) -> None:
    """Write the top manifest of a sharded index whose shard folders (and ``stats/``) are already in ``root``."""
    listed = []
    for shard in shards:
        manifest = root / "shards" / shard["name"] / MANIFEST
        listed.append({**shard, "manifest_sha256": file_digest(manifest)})
    stats = root / "stats"
    files = {f"stats/{k}": v for k, v in file_table(stats).items()} if stats.is_dir() else {}
    write_manifest(root, kind=KIND, format_version=FORMAT_VERSION, method=method,
                   n_docs=sum(s["n_docs"] for s in shards), shards=listed, bm25_stats=bm25, encoder=encoder,
                   fusion=fusion, build=build, files=files)


def read_layout(root: str | Path, verify: bool = True) -> Layout:
    """Read and check the top manifest: shard folders present, rows contiguous, shard manifests unchanged."""
    root = Path(root).resolve()
    manifest = read_manifest(root, KIND, FORMAT_VERSION)
    where = root / MANIFEST
    check_tree(root)
    method = manifest_field(manifest, "method", str, where)
    n_docs = manifest_field(manifest, "n_docs", int, where)
    listed = manifest_field(manifest, "shards", list, where)
    bm25 = manifest.get("bm25_stats")
    specs, offset = [], 0
    for i, entry in enumerate(listed):
        spec = _shard_spec(root, i, entry, offset, where, with_idf=bm25 is not None)
        if verify and file_digest(Path(spec.folder) / MANIFEST) != entry["manifest_sha256"]:
            raise IndexFormatError(f"{Path(spec.folder) / MANIFEST}: differs from the one {where} recorded; the "
                                   "shard was changed or replaced after the build")
        specs.append(spec)
        offset += spec.n_docs
    if offset != n_docs:
        raise IndexFormatError(f"{where}: shards hold {offset} documents, 'n_docs' says {n_docs}")
    avgdl = None
    if bm25 is not None:
        from retrieval.sparse.scoring import average_length

        avgdl = average_length(manifest_field(bm25, "n_docs", int, where),
                               manifest_field(bm25, "total_len", int, where))
    return Layout(root, method, n_docs, tuple(specs), avgdl, manifest.get("encoder"), manifest.get("fusion"),
                  manifest.get("build") or {})


def _shard_spec(root: Path, i: int, entry: Any, offset: int, where: Path, with_idf: bool) -> ShardSpec:
    if not isinstance(entry, dict) or not {"name", "offset", "n_docs", "manifest_sha256"} <= set(entry):
        raise IndexFormatError(f"{where}: shard entry {i} must hold name, offset, n_docs and manifest_sha256")
    name = str(entry["name"])
    if name != shard_name(i) or entry["offset"] != offset or not isinstance(entry["n_docs"], int):
        raise IndexFormatError(f"{where}: shard entry {i} ({name!r}) is out of order or does not start at row "
                               f"{offset}")
    folder = root / "shards" / name
    if not (folder / MANIFEST).is_file():
        raise IndexFormatError(f"{folder}: shard {i} is missing; the sharded index is incomplete")
    idf_file = str(root / "stats" / f"{name}.idf.npy") if with_idf else None
    return ShardSpec(i, name, offset, entry["n_docs"], str(folder), idf_file)


def load_idf(spec: ShardSpec, root: Path, verify: bool = True) -> np.ndarray:
    """A shard's global-idf array, checked against the top manifest's ``files`` table."""
    if spec.idf_file is None:
        raise IndexFormatError(f"{root / MANIFEST}: {spec.label} has no BM25 statistics (a {KIND} dense index)")
    manifest = read_manifest(root, KIND, FORMAT_VERSION)
    table = FileTable(root, manifest_field(manifest, "files", dict, root / MANIFEST), root / MANIFEST)
    with verifying(table if verify else None):
        path = Path(spec.idf_file)
        return check_array(load_array(path), path, "f")
