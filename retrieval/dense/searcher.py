"""The dense first stage: a bi-encoder plus a FAISS inner-product index over document embeddings.

Indexes are chosen by name (``flat``, ``hnsw``, ``ivf``, ``ivfpq``, ``auto``) or by any FAISS factory
string (see ``index.py``). Every document gets a stable int64 FAISS id, increasing in row order, so
``rows = searchsorted(faiss_ids, labels)`` maps FAISS results back to DocStore rows. Indexes that cannot
delete (HNSW) keep removed ids as tombstones that a FAISS ``IDSelector`` filters out at search time, and
are rebuilt from their stored vectors once a quarter of them is dead.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.dense.encoders import BiEncoder, EncoderConfig, load_encoder
from retrieval.dense.index import (IndexConfig, faiss_module, ivf_lists, new_index, pq_shape,  # noqa: F401
                                   single_query_threads,
                                   resolve_index, set_search_params)
from retrieval.errors import IndexFormatError
from retrieval.models import looks_like_path, resolve_model
from retrieval.persistence import load_arrays, manifest_field, read_manifest, save_arrays, write_manifest
from retrieval.safe_files import check_array, read_file, read_str_list
from retrieval.protocols import RowHits
from retrieval.types import Document

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
COMPACT_FRACTION = 0.25      # rebuild a tombstoned index once this share of its vectors is removed


def same_model(a: str, b: str) -> bool:
    """True when two model names are the same string or resolve to the same local folder."""
    if a == b:
        return True
    try:
        ra, rb = resolve_model(a), resolve_model(b)
    except (FileNotFoundError, ImportError):
        return False
    return ra.is_local and rb.is_local and Path(ra.path).resolve() == Path(rb.path).resolve()


def as_encoder(encoder: Any, show_progress: bool = True) -> BiEncoder:
    """A ready encoder as it is; an :class:`EncoderConfig` (or None: the default) loaded."""
    if encoder is None:
        return load_encoder(EncoderConfig(show_progress=show_progress))
    if isinstance(encoder, EncoderConfig):
        return load_encoder(encoder)
    if not callable(getattr(encoder, "encode_documents", None)):
        raise ValueError(f"encoder must be a BiEncoder or an EncoderConfig, got {type(encoder).__name__}")
    return encoder


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
    def build(cls, docs: Sequence[Document], show_progress: bool = True, *,
              encoder: BiEncoder | EncoderConfig | None = None, index: IndexConfig | str = "auto") -> "DenseSearcher":
        """Embed ``docs`` and index them with ``index`` (a name, factory string or :class:`IndexConfig`).

        ``encoder`` is a ready :class:`BiEncoder`, or an :class:`EncoderConfig` to load (default: the bundled
        model). Flat options (``model=``, ``nprobe=``...) are taken by ``Retriever.from_documents``.
        """
        encoder = as_encoder(encoder, show_progress)
        emb = encoder.encode_documents(docs, show_progress=show_progress)
        return cls.from_embeddings([d.id for d in docs], emb, encoder, index=index)

    @classmethod
    def from_embeddings(cls, doc_ids: Sequence[str], embeddings: np.ndarray, encoder: BiEncoder, *,
                        index: IndexConfig | str = "auto") -> "DenseSearcher":
        """Index precomputed document embeddings (rows in ``doc_ids`` order) made by ``encoder``."""
        emb = np.ascontiguousarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != len(doc_ids) or emb.shape[1] != encoder.dim:
            raise ValueError(f"embeddings of shape {emb.shape} do not fit {len(doc_ids)} docs of dim {encoder.dim}")
        if len(set(doc_ids)) != len(doc_ids):
            raise ValueError("document ids must be unique")
        config = resolve_index(index, len(doc_ids), encoder.dim)
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
        with single_query_threads(len(q)):
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
        faiss = faiss_module()
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
            self.index.remove_ids(faiss_module().IDSelectorBatch(fids))
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
        faiss_module().write_index(self.index, str(folder / "index.faiss"))
        save_arrays(folder, {"faiss_ids": self.faiss_ids, "removed": self.removed})
        (folder / "doc_ids.json").write_text(json.dumps(self.doc_ids, ensure_ascii=False), encoding="utf-8")
        return write_manifest(folder, kind="dense", format_version=FORMAT_VERSION, **self.manifest())

    LOAD_OPTIONS = ("model", "encoder", "int8", "bf16", "backend", "batch_size", "device", "show_progress",
                    "nprobe", "ef_search")   # the keywords of load() after folder and config

    @classmethod
    def load(cls, folder: Path, config: dict[str, Any] | None = None, *, model: str | None = None,
             encoder: BiEncoder | None = None, int8: bool | None = None, bf16: bool | None = None,
             backend: str | None = None, batch_size: int = 32,
             device: str | None = None, show_progress: bool = True, nprobe: int | None = None,
             ef_search: int | None = None) -> "DenseSearcher":
        """Open a saved dense stage; a ``model``/``encoder`` that differs from the one it was built with fails.

        The FAISS file, id arrays and ``doc_ids.json`` are checked against each other before the model loads.
        """
        folder = Path(folder)
        manifest = read_manifest(folder, "dense", FORMAT_VERSION)
        where = folder / "manifest.json"
        saved = manifest_field(manifest, "encoder", dict, where)
        index_config = saved_index_config(folder, manifest_field(manifest, "index", dict, where),
                                          nprobe=nprobe, ef_search=ef_search)
        index, faiss_ids, removed, doc_ids = read_stage_files(folder, manifest_field(manifest, "next_id", int, where))
        try:
            name = saved_model_name(folder, saved, model)
            if encoder is None:
                # Unset flags keep the saved fast path; asking for the other one switches to it.
                use_int8 = (saved["int8"] and not bf16) if int8 is None else int8
                use_bf16 = (saved.get("bf16", False) and not use_int8) if bf16 is None else bf16
                use_backend = backend or ("torch" if use_bf16 else saved.get("backend", "torch"))
                settings = dict(int8=use_int8, bf16=use_bf16, backend=use_backend,
                                max_seq_length=saved["max_seq_length"], query_prefix=saved["query_prefix"],
                                doc_prefix=saved["doc_prefix"])
                if use_backend == "openvino" and use_int8 and saved.get("calibration"):
                    settings["calibration"] = saved["calibration"]   # the int8 model the vectors came from
        except KeyError as exc:
            raise IndexFormatError(f"{where}: 'encoder' misses key {exc}") from None
        if encoder is None:
            encoder = load_encoder(name, **settings, batch_size=batch_size, device=device, show_progress=show_progress)
        try:
            _check_encoder(folder, saved, encoder)
        except KeyError as exc:
            raise IndexFormatError(f"{where}: 'encoder' misses key {exc}") from None
        set_search_params(index, index_config)
        return cls(encoder, index, index_config, doc_ids, faiss_ids, removed, manifest["next_id"])


def read_faiss(path: Path) -> Any:
    """A FAISS index from a regular file (read once, checksum verified); damage names the file."""
    data = np.frombuffer(read_file(path), dtype=np.uint8)
    try:
        return faiss_module().deserialize_index(data)
    except (RuntimeError, MemoryError, ValueError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise IndexFormatError(f"{path}: not a FAISS index FAISS can read ({detail[:200]})") from None


def stored_ids(index: Any) -> np.ndarray | None:
    """The int64 ids a FAISS index holds (IDMap or IVF), or None for an index kind that keeps none."""
    faiss = faiss_module()
    if hasattr(index, "id_map"):
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return None
    lists = ivf.invlists
    parts = [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
             for i in range(ivf.nlist) if lists.list_size(i)]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def _sorted_ids(arr: np.ndarray, path: Path, next_id: int) -> np.ndarray:
    ids = check_array(arr, path, "iu")
    if len(ids) and (ids.min() < 0 or ids.max() >= next_id):
        raise IndexFormatError(f"{path}: ids must lie in [0, {next_id}) (next_id in the manifest)")
    ids = ids.astype(np.int64)
    if (np.diff(ids) <= 0).any():
        raise IndexFormatError(f"{path}: ids must be strictly increasing")
    return ids


def read_stage_files(folder: Path, next_id: int) -> tuple[Any, np.ndarray, np.ndarray, list[str]]:
    """(FAISS index, live ids, tombstoned ids, doc ids) of a saved stage, checked against each other."""
    arrays = load_arrays(folder, ["faiss_ids", "removed"])
    faiss_ids = _sorted_ids(arrays["faiss_ids"], folder / "faiss_ids.npy", next_id)
    removed = _sorted_ids(arrays["removed"], folder / "removed.npy", next_id)
    if np.intersect1d(faiss_ids, removed).size:
        raise IndexFormatError(f"{folder / 'removed.npy'}: names ids that faiss_ids.npy holds as live")
    doc_ids = read_str_list(folder / "doc_ids.json", "document id")
    if len(doc_ids) != len(faiss_ids):
        raise IndexFormatError(f"{folder / 'doc_ids.json'}: {len(doc_ids)} ids for {len(faiss_ids)} in faiss_ids.npy")
    path = folder / "index.faiss"
    index = read_faiss(path)
    held = stored_ids(index)
    expected = np.union1d(faiss_ids, removed)
    if index.ntotal != len(expected) or (held is not None and not np.array_equal(np.sort(held), expected)):
        raise IndexFormatError(f"{path}: holds {index.ntotal} vectors whose ids are not the {len(faiss_ids)} live "
                               f"+ {len(removed)} removed ids of faiss_ids.npy/removed.npy; the parts disagree")
    return index, faiss_ids, removed, doc_ids


def saved_index_config(folder: Path, saved: Any, **knobs: int | None) -> IndexConfig:
    """The saved :class:`IndexConfig`, with the search knobs the caller sets; a bad entry names the manifest."""
    try:
        config = IndexConfig.from_dict(saved)
        return replace(config, **{k: v for k, v in knobs.items() if v is not None})
    except (TypeError, ValueError) as exc:
        raise IndexFormatError(f"{folder / 'manifest.json'}: bad index config ({exc})") from None


def saved_model_name(folder: Path, saved: dict[str, Any], model: str | None) -> str:
    """The model to load for a saved stage: ``model`` if given, else the stored reference.

    A stored local folder is an absolute path (older manifests may hold a relative one); it is loaded from
    there or not at all -- never looked up relative to the working directory or on the hub.
    """
    where = folder / "manifest.json"
    stored = str(saved["model"])
    if model is not None:
        if not saved.get("fingerprint") and not same_model(str(model), stored):
            raise IndexFormatError(f"{where}: index was built with model {stored!r} (dim {saved['dim']}); got "
                                   f"model={model!r}. Rebuild, or load with model={stored!r}.")
        return str(model)
    if saved.get("source") == "local" and not Path(stored).is_dir():
        raise IndexFormatError(f"{where}: index was built with the local model folder {stored!r}, which does not "
                               "exist; pass model=<folder> to load the same model from where it is now")
    if "source" not in saved and looks_like_path(stored) and not Path(stored).is_absolute():
        logger.warning("%s: written by an older release with the relative model path %r; it is resolved against "
                       "the current folder and cannot be checked. Save the index again to store a checked one.",
                       where, stored)
    return stored


def _check_encoder(folder: Path, saved: dict[str, Any], encoder: BiEncoder) -> None:
    """Fail clearly when the query encoder cannot produce vectors comparable with the saved ones."""
    where = folder / "manifest.json"
    if encoder.dim != saved["dim"]:
        raise IndexFormatError(f"{where}: index dimension is {saved['dim']} (model {saved['model']!r}); encoder "
                               f"{encoder.model_name!r} gives {encoder.dim}")
    if encoder.normalize != saved["normalize"]:
        raise IndexFormatError(f"{where}: index vectors normalize={saved['normalize']}, encoder "
                               f"{encoder.model_name!r} normalize={encoder.normalize}")
    pooling = getattr(encoder, "pooling", None)
    if saved.get("pooling") and pooling and pooling != saved["pooling"]:
        raise IndexFormatError(f"{where}: index vectors were pooled by {saved['pooling']!r} (model "
                               f"{saved['model']!r}); encoder {encoder.model_name!r} pools by {pooling!r}")
    stored, found = saved.get("fingerprint"), getattr(encoder, "fingerprint", None)
    if stored and found:
        if stored != found:
            raise IndexFormatError(
                f"{where}: index was built with model {saved['model']!r} (fingerprint {stored[:12]}); the model "
                f"loaded from {getattr(encoder, 'reference', encoder.model_name)!r} has fingerprint {found[:12]}: "
                "its weights or config differ. Rebuild the index, or load with model= pointing at the original.")
    elif not same_model(encoder.model_name, saved["model"]):
        raise IndexFormatError(f"{where}: index was built with model {saved['model']!r}; encoder is "
                               f"{encoder.model_name!r}")
