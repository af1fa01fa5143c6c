"""Corpus embeddings cached on disk, so a corpus is encoded once per model and settings, across processes.

:class:`CachedEncoder` wraps a bi-encoder (anything with ``encode_documents``, ``encode_queries`` and
``describe``). Its ``encode_documents`` reads ``docs-<key>.npy`` from the cache folder when it is there;
the key hashes three things, so a stale entry is never used:

* the model's fingerprint: the folder fingerprint a loaded model carries (:func:`retrieval.models.folder_fingerprint`),
  else a hash of the in-memory model's weights (a model being trained gets a new key after every step);
* the encoder's settings (``describe()``: dimension, pooling, normalisation, prefixes, length, fast path);
* the documents' ids and texts, in order.

Entries are written atomically (:func:`retrieval.persistence.atomic_save_array`); an unreadable or
mis-shaped entry is logged, encoded again and replaced.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.persistence import atomic_save_array
from retrieval.types import Document

logger = logging.getLogger(__name__)


def _value_digest(h: Any, value: Any) -> None:
    """Feed one state-dict entry to ``h``: tensors by dtype, shape and bytes (quantised ones dequantised)."""
    if isinstance(value, (tuple, list)):
        for item in value:
            _value_digest(h, item)
        return
    if not hasattr(value, "detach"):
        h.update(repr(value).encode("utf-8"))
        return
    import torch

    tensor = value.detach().cpu()
    tensor = tensor.dequantize() if tensor.is_quantized else tensor
    h.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode("utf-8"))
    h.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy())


def model_fingerprint(encoder: Any) -> str | None:
    """The fingerprint a loaded encoder carries; else a sha256 of its model's weights; None if it has neither."""
    found = getattr(encoder, "fingerprint", None)
    if found:
        return str(found)
    state_dict = getattr(getattr(encoder, "model", None), "state_dict", None)
    if not callable(state_dict):
        return None
    h = hashlib.sha256()
    for name, value in state_dict().items():
        h.update(name.encode("utf-8"))
        _value_digest(h, value)
    return "weights:" + h.hexdigest()


def corpus_digest(docs: Sequence[Document | str]) -> str:
    """sha256 of the documents' ids and texts in order (plain strings count as texts without ids)."""
    h = hashlib.sha256()
    for d in docs:
        doc_id, text = (d.id, d.full_text) if isinstance(d, Document) else ("", str(d))
        h.update(f"{len(doc_id)}:{doc_id}{len(text)}:".encode("utf-8") + text.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def cache_key(encoder: Any, docs: Sequence[Document | str]) -> str:
    """The cache entry name for ``docs`` embedded by ``encoder``: model fingerprint + settings + corpus."""
    settings = encoder.describe() if callable(getattr(encoder, "describe", None)) else {}
    head = json.dumps({"fingerprint": model_fingerprint(encoder), "settings": settings}, sort_keys=True, default=str)
    return hashlib.sha256(f"{head}\n{corpus_digest(docs)}".encode("utf-8")).hexdigest()[:32]


class CachedEncoder:
    """A bi-encoder whose document embeddings are kept in ``folder`` (see the module docstring for the key).

    Everything else (``encode_queries``, ``dim``, ``describe``...) is the wrapped encoder's. ``hits`` and
    ``misses`` count ``encode_documents`` calls answered from the cache and encoded afresh.
    """

    def __init__(self, encoder: Any, folder: str | Path) -> None:
        self.encoder = encoder
        self.folder = Path(folder)
        self.hits = 0
        self.misses = 0

    def __getattr__(self, name: str) -> Any:
        if name == "encoder":   # not set yet (copy/unpickle): do not recurse
            raise AttributeError(name)
        return getattr(self.encoder, name)

    def path_for(self, docs: Sequence[Document | str]) -> Path:
        return self.folder / f"docs-{cache_key(self.encoder, docs)}.npy"

    def _read(self, path: Path, n: int) -> np.ndarray | None:
        if not path.is_file():
            return None
        try:
            emb = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            logger.warning("%s: unreadable cache entry (%s); encoding again", path, exc)
            return None
        dim = getattr(self.encoder, "dim", None)
        if emb.ndim != 2 or emb.shape[0] != n or (dim is not None and emb.shape[1] != dim):
            logger.warning("%s: cache entry has shape %s, expected (%d, %s); encoding again", path, emb.shape, n, dim)
            return None
        return emb

    def encode_documents(self, docs: Sequence[Document | str], show_progress: bool | None = None) -> np.ndarray:
        """The cached embeddings of ``docs`` if present, else the wrapped encoder's (then stored)."""
        if isinstance(docs, str):
            raise TypeError("encode_documents takes a list of Documents or strings")
        docs = list(docs)
        path = self.path_for(docs)
        emb = self._read(path, len(docs))
        if emb is not None:
            logger.info("document embeddings from cache %s", path)
            self.hits += 1
            return emb
        self.misses += 1
        emb = self.encoder.encode_documents(docs, show_progress=show_progress)
        atomic_save_array(path, emb)
        return emb
