"""The dense first stage: a bi-encoder plus a FAISS inner-product index over document embeddings.

Indexes are chosen by name (``flat``, ``hnsw``, ``ivf``, ``ivfpq``, ``auto``) or by any FAISS factory
string. Every document gets a stable int64 FAISS id, increasing in row order, so ``rows = searchsorted(
faiss_ids, labels)`` maps FAISS results back to DocStore rows. Indexes that cannot delete (HNSW) keep
removed ids as tombstones that a FAISS ``IDSelector`` filters out at search time, and are rebuilt from
their stored vectors once a quarter of them is dead.
"""
from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.dense.encoders import BiEncoder, load_encoder
from retrieval.errors import IndexFormatError, MissingDependency
from retrieval.models import resolve_model
from retrieval.persistence import load_arrays, read_manifest, save_arrays, write_manifest
from retrieval.protocols import RowHits
from retrieval.types import Document

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
INDEX_NAMES = ("auto", "flat", "hnsw", "ivf", "ivfpq")
AUTO_FLAT_MAX = 100_000      # exact search stays under ~20 ms/query up to here on 2 cores (384-d)
AUTO_HNSW_MAX = 5_000_000    # beyond this, HNSW's graph does not fit a laptop: compressed IVF-PQ
COMPACT_FRACTION = 0.25      # rebuild a tombstoned index once this share of its vectors is removed


def _faiss():
    try:
        import faiss
    except ImportError as exc:
        raise MissingDependency("dense retrieval needs FAISS: pip install faiss-cpu") from exc
    return faiss


@dataclass
class IndexConfig:
    """The FAISS index of a dense stage: the name asked for, the factory string used, and search knobs."""

    name: str = "auto"
    factory: str = "Flat"
    nprobe: int | None = None
    ef_search: int | None = None
    ef_construction: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ivf_lists(n: int) -> int:
    """IVF list count: ~4 sqrt(n), with at least 39 training points per list (FAISS's k-means minimum)."""
    return int(max(1, min(4 * math.sqrt(max(n, 1)), n // 39)))


def pq_shape(dim: int, n: int) -> tuple[int, int]:
    """PQ sub-quantisers (a divisor of dim near dim/8, i.e. 1 byte per 8 dims) and bits (2^bits <= n)."""
    m = max(d for d in range(1, max(1, dim // 8) + 1) if dim % d == 0)
    nbits = int(max(1, min(8, math.floor(math.log2(max(n, 2))))))
    return m, nbits


def resolve_index(name: str, n: int, dim: int) -> IndexConfig:
    """Turn an index name (or a FAISS factory string) into a factory string with defaults for ``n`` docs."""
    key = name.lower()
    if key == "auto":
        key = "flat" if n <= AUTO_FLAT_MAX else "hnsw" if n <= AUTO_HNSW_MAX else "ivfpq"
    if key == "flat":
        return IndexConfig(name=name, factory="Flat")
    if key == "hnsw":
        return IndexConfig(name=name, factory="HNSW32,Flat", ef_search=128, ef_construction=200)
    if key in ("ivf", "ivfpq"):
        if n < 2:
            raise ValueError(f"index={name!r} must be trained on documents; got {n}. Use index='flat' or 'hnsw'.")
        nlist = ivf_lists(n)
        if key == "ivf":
            return IndexConfig(name=name, factory=f"IVF{nlist},Flat", nprobe=min(nlist, 16))
        m, nbits = pq_shape(dim, n)
        # "np": skip polysemous training (minutes of annealing; it only helps Hamming-filtered search)
        return IndexConfig(name=name, factory=f"IVF{nlist},PQ{m}x{nbits}np", nprobe=min(nlist, 16))
    return IndexConfig(name=name, factory=name, nprobe=None, ef_search=None)


def new_index(config: IndexConfig, dim: int, train: np.ndarray) -> Any:
    """Create (and train if needed) an inner-product FAISS index that takes our own int64 ids."""
    faiss = _faiss()
    try:
        index = faiss.index_factory(dim, config.factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ValueError(f"index={config.name!r}: FAISS cannot build factory string {config.factory!r} ({exc})") from None
    if config.ef_construction is not None and hasattr(faiss.downcast_index(index), "hnsw"):
        faiss.downcast_index(index).hnsw.efConstruction = config.ef_construction
    if not index.is_trained:
        if len(train) == 0:
            raise ValueError(f"index {config.factory!r} must be trained; build it on at least some documents")
        index.train(np.ascontiguousarray(train, dtype=np.float32))
    if not _is_ivf(index):
        index = faiss.IndexIDMap2(index)   # IVF indexes store ids natively; the others get a translation layer
    _set_search_params(index, config)
    return index


def _is_ivf(index: Any) -> bool:
    try:
        _faiss().extract_index_ivf(index)
        return True
    except RuntimeError:
        return False


def _set_search_params(index: Any, config: IndexConfig) -> None:
    faiss = _faiss()
    space = faiss.ParameterSpace()
    if config.nprobe is not None and _is_ivf(index):
        space.set_index_parameter(index, "nprobe", int(config.nprobe))
    if config.ef_search is not None:
        inner = faiss.downcast_index(index.index) if hasattr(index, "id_map") else faiss.downcast_index(index)
        if hasattr(inner, "hnsw"):
            inner.hnsw.efSearch = int(config.ef_search)


def same_model(a: str, b: str) -> bool:
    """True when two model names are the same string or resolve to the same local folder."""
    if a == b:
        return True
    try:
        ra, rb = resolve_model(a), resolve_model(b)
    except (FileNotFoundError, ImportError):
        return False
    return ra.is_local and rb.is_local and Path(ra.path).resolve() == Path(rb.path).resolve()


class DenseSearcher:
    """Bi-encoder + FAISS index over DocStore rows (method "dense")."""

    method = "dense"

    def __init__(self, encoder: BiEncoder, index: Any, config: IndexConfig, doc_ids: Sequence[str],
                 faiss_ids: np.ndarray, removed: np.ndarray | None = None, next_id: int | None = None) -> None:
        if index.d != encoder.dim:
            raise IndexFormatError(f"FAISS index has dimension {index.d}, encoder {encoder.model_name!r} has {encoder.dim}")
        self.encoder = encoder
        self.index = index
        self.config = config
        self.doc_ids = list(doc_ids)
        self.faiss_ids = np.asarray(faiss_ids, dtype=np.int64)
        self.removed = np.zeros(0, np.int64) if removed is None else np.asarray(removed, dtype=np.int64)
        self.next_id = int(next_id if next_id is not None else (self.faiss_ids.max(initial=-1) + 1))
        if len(self.doc_ids) != len(self.faiss_ids) or index.ntotal != len(self.faiss_ids) + len(self.removed):
            raise IndexFormatError(f"dense index holds {index.ntotal} vectors for {len(self.doc_ids)} ids "
                                   f"({len(self.removed)} removed); the parts disagree")

    # --- building ------------------------------------------------------------------------------
    @classmethod
    def build(cls, docs: Sequence[Document], show_progress: bool = True, *, model: str = "minilm",
              index: str = "auto", int8: bool = False, backend: str = "torch", bf16: bool = False,
              batch_size: int = 32,
              max_seq_length: int | None = None,
              query_prefix: str | None = None, doc_prefix: str | None = None, device: str | None = None,
              nprobe: int | None = None, ef_search: int | None = None, ef_construction: int | None = None,
              encoder: BiEncoder | None = None) -> "DenseSearcher":
        """Embed ``docs`` with ``model`` (or a ready ``encoder``) and index them with ``index``."""
        if encoder is None:
            encoder = load_encoder(model, int8=int8, backend=backend, bf16=bf16, max_seq_length=max_seq_length,
                                   query_prefix=query_prefix, doc_prefix=doc_prefix, batch_size=batch_size,
                                   device=device, show_progress=show_progress)
        emb = encoder.encode_documents(docs, show_progress=show_progress)
        return cls.from_embeddings([d.id for d in docs], emb, encoder, index=index, nprobe=nprobe,
                                   ef_search=ef_search, ef_construction=ef_construction)

    @classmethod
    def from_embeddings(cls, doc_ids: Sequence[str], embeddings: np.ndarray, encoder: BiEncoder, *,
                        index: str = "auto", nprobe: int | None = None, ef_search: int | None = None,
                        ef_construction: int | None = None) -> "DenseSearcher":
        """Index precomputed document embeddings (rows in ``doc_ids`` order) made by ``encoder``."""
        emb = np.ascontiguousarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != len(doc_ids) or emb.shape[1] != encoder.dim:
            raise ValueError(f"embeddings of shape {emb.shape} do not fit {len(doc_ids)} docs of dim {encoder.dim}")
        if len(set(doc_ids)) != len(doc_ids):
            raise ValueError("document ids must be unique")
        config = resolve_index(index, len(doc_ids), encoder.dim)
        config.nprobe = nprobe if nprobe is not None else config.nprobe
        config.ef_search = ef_search if ef_search is not None else config.ef_search
        config.ef_construction = ef_construction if ef_construction is not None else config.ef_construction
        faiss_index = new_index(config, encoder.dim, emb)
        fids = np.arange(len(doc_ids), dtype=np.int64)
        if len(fids):
            faiss_index.add_with_ids(emb, fids)
        logger.info("dense index %s: %d docs, dim %d", config.factory, len(fids), encoder.dim)
        return cls(encoder, faiss_index, config, doc_ids, fids)

    # --- searching -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.faiss_ids)

    def row_of(self, doc_id: str) -> int:
        """DocStore row of a document id (linear scan; the Retriever's DocStore has the fast map)."""
        return self.doc_ids.index(doc_id)

    def search(self, queries: Sequence[str], k: int) -> list[RowHits]:
        """Encode queries and return each one's ``k`` nearest rows by inner product, best first."""
        return self.search_vectors(self.encoder.encode_queries(list(queries)), k)

    def search_vectors(self, query_emb: np.ndarray, k: int) -> list[RowHits]:
        """``search`` for query embeddings already computed (shape (n, dim), float32)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        q = np.ascontiguousarray(query_emb, dtype=np.float32).reshape(-1, self.encoder.dim)
        if len(self) == 0:
            return [(np.zeros(0, np.int64), np.zeros(0, np.float32)) for _ in range(len(q))]
        params = self._search_params()
        kk = min(k, len(self))
        scores, labels = self.index.search(q, kk, params=params) if params is not None else self.index.search(q, kk)
        out = []
        for s, lab in zip(scores, labels):
            keep = lab >= 0
            rows = np.searchsorted(self.faiss_ids, lab[keep])
            out.append((rows.astype(np.int64), s[keep].astype(np.float32)))
        return out

    def _search_params(self) -> Any:
        if len(self.removed) == 0:
            return None
        faiss = _faiss()
        params = faiss.SearchParameters()
        if self.config.ef_search is not None and hasattr(self.index, "id_map"):
            inner = faiss.downcast_index(self.index.index)
            if hasattr(inner, "hnsw"):
                params = faiss.SearchParametersHNSW(efSearch=int(self.config.ef_search))
        batch = faiss.IDSelectorBatch(self.removed)
        params.sel = faiss.IDSelectorNot(batch)
        params._keep = (batch, params.sel)   # the selectors must outlive the search call
        return params

    # --- updating ------------------------------------------------------------------------------
    def add(self, docs: Sequence[Document]) -> None:
        """Embed and append documents (rows after the current ones)."""
        ids = [d.id for d in docs]
        clash = set(ids) & set(self.doc_ids)
        if clash or len(set(ids)) != len(ids):
            raise ValueError(f"document ids already indexed or repeated: {sorted(clash)[:5] or ids[:5]}")
        emb = self.encoder.encode_documents(docs, show_progress=False)
        fids = np.arange(self.next_id, self.next_id + len(ids), dtype=np.int64)
        if len(fids):
            self.index.add_with_ids(emb, fids)
        self.next_id += len(ids)
        self.doc_ids.extend(ids)
        self.faiss_ids = np.concatenate([self.faiss_ids, fids])

    def remove(self, rows: Sequence[int]) -> None:
        """Delete rows; later rows shift down. HNSW-like indexes keep tombstones (compacted when many)."""
        drop = np.unique(np.asarray(rows, dtype=np.int64))
        if drop.size == 0:
            return
        if drop[0] < 0 or drop[-1] >= len(self):
            raise IndexError(f"rows out of range 0..{len(self) - 1}: {drop[(drop < 0) | (drop >= len(self))][:5]}")
        fids = self.faiss_ids[drop]
        try:
            self.index.remove_ids(_faiss().IDSelectorBatch(fids))
        except RuntimeError:
            self.removed = np.union1d(self.removed, fids)
        self.faiss_ids = np.delete(self.faiss_ids, drop)
        dropped = set(drop.tolist())
        self.doc_ids = [d for i, d in enumerate(self.doc_ids) if i not in dropped]
        if len(self.removed) > COMPACT_FRACTION * self.index.ntotal:
            self.compact()

    def compact(self) -> None:
        """Rebuild the index from its live vectors, dropping tombstones (needs a reconstructable index)."""
        if len(self.removed) == 0:
            return
        vectors = self.index.reconstruct_batch(self.faiss_ids) if len(self) else np.zeros((0, self.encoder.dim), np.float32)
        index = new_index(self.config, self.encoder.dim, vectors)
        if len(self):
            index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), self.faiss_ids)
        self.index, self.removed = index, np.zeros(0, np.int64)
        logger.info("compacted dense index to %d vectors", len(self))

    # --- persistence ---------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        """What the saved folder records: encoder facts, index config and sizes."""
        return {"encoder": self.encoder.describe(), "index": self.config.to_dict(), "n_docs": len(self),
                "n_removed": len(self.removed), "next_id": self.next_id}

    def save(self, folder: Path) -> dict[str, Any]:
        """Write ``index.faiss`` (FAISS's own format), id arrays, ``doc_ids.json`` and a versioned manifest."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        _faiss().write_index(self.index, str(folder / "index.faiss"))
        save_arrays(folder, {"faiss_ids": self.faiss_ids, "removed": self.removed})
        (folder / "doc_ids.json").write_text(json.dumps(self.doc_ids, ensure_ascii=False), encoding="utf-8")
        return write_manifest(folder, kind="dense", format_version=FORMAT_VERSION, **self.manifest())

    @classmethod
    def load(cls, folder: Path, config: dict[str, Any] | None = None, *, model: str | None = None,
             encoder: BiEncoder | None = None, int8: bool | None = None, bf16: bool | None = None,
             backend: str | None = None, batch_size: int = 32,
             device: str | None = None, show_progress: bool = True, nprobe: int | None = None,
             ef_search: int | None = None) -> "DenseSearcher":
        """Open a saved dense stage; a ``model``/``encoder`` that differs from the one it was built with fails."""
        folder = Path(folder)
        manifest = read_manifest(folder, "dense", FORMAT_VERSION)
        saved = manifest["encoder"]
        if model is not None and not same_model(str(model), saved["model"]):
            raise IndexFormatError(f"{folder / 'manifest.json'}: index was built with model {saved['model']!r} "
                                   f"(dim {saved['dim']}); got model={model!r}. Rebuild, or load with model="
                                   f"{saved['model']!r}.")
        if encoder is None:
            # Unset flags keep the saved fast path; asking for the other one switches to it.
            use_int8 = (saved["int8"] and not bf16) if int8 is None else int8
            use_bf16 = (saved.get("bf16", False) and not use_int8) if bf16 is None else bf16
            use_backend = backend or ("torch" if use_bf16 else saved.get("backend", "torch"))
            encoder = load_encoder(saved["model"], int8=use_int8, bf16=use_bf16, backend=use_backend,
                                   max_seq_length=saved["max_seq_length"], query_prefix=saved["query_prefix"],
                                   doc_prefix=saved["doc_prefix"], batch_size=batch_size, device=device,
                                   show_progress=show_progress)
        _check_encoder(folder, saved, encoder)
        index_config = IndexConfig(**manifest["index"])
        index_config.nprobe = nprobe if nprobe is not None else index_config.nprobe
        index_config.ef_search = ef_search if ef_search is not None else index_config.ef_search
        path = folder / "index.faiss"
        if not path.exists():
            raise IndexFormatError(f"{path}: missing")
        index = _faiss().read_index(str(path))
        arrays = load_arrays(folder, ["faiss_ids", "removed"])
        doc_ids = json.loads((folder / "doc_ids.json").read_text(encoding="utf-8"))
        _set_search_params(index, index_config)
        return cls(encoder, index, index_config, doc_ids, arrays["faiss_ids"], arrays["removed"], manifest["next_id"])


def _check_encoder(folder: Path, saved: dict[str, Any], encoder: BiEncoder) -> None:
    """Fail clearly when the query encoder cannot produce vectors comparable with the saved ones."""
    where = folder / "manifest.json"
    if encoder.dim != saved["dim"]:
        raise IndexFormatError(f"{where}: index dimension is {saved['dim']} (model {saved['model']!r}); encoder "
                               f"{encoder.model_name!r} gives {encoder.dim}")
    if encoder.normalize != saved["normalize"]:
        raise IndexFormatError(f"{where}: index vectors normalize={saved['normalize']}, encoder "
                               f"{encoder.model_name!r} normalize={encoder.normalize}")
    if not same_model(encoder.model_name, saved["model"]):
        raise IndexFormatError(f"{where}: index was built with model {saved['model']!r}; encoder is "
                               f"{encoder.model_name!r}")
