"""A tiny deterministic stand-in for BiEncoder: hashed bag of words, so tests need no model."""
from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import numpy as np

from retrieval.types import Document


class HashEncoder:
    """Each word maps to a fixed random vector (seeded by its CRC32); a text is the normalised sum."""

    def __init__(self, dim: int = 64, model_name: str = "hash-bow") -> None:
        self.dim, self.model_name, self.normalize = dim, model_name, True
        self.calls = 0

    def _vec(self, word: str) -> np.ndarray:
        return np.random.default_rng(zlib.crc32(word.encode("utf-8"))).standard_normal(self.dim)

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        out = np.zeros((len(texts), self.dim), dtype=np.float64)
        for i, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                out[i] += self._vec(word)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return (out / np.where(norms == 0, 1, norms)).astype(np.float32)

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        return self._embed(list(queries))

    def encode_documents(self, docs: Sequence[Document | str], show_progress: bool | None = None) -> np.ndarray:
        return self._embed([d.full_text if isinstance(d, Document) else d for d in docs])

    def describe(self) -> dict:
        return {"model": self.model_name, "dim": self.dim, "normalize": True, "pooling": "mean",
                "query_prefix": "", "doc_prefix": "", "max_seq_length": 128, "int8": False}
