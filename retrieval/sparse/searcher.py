"""The BM25 first stage: tokenizer + sparse index (or rank-bm25 as an exact reference backend)."""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from retrieval.errors import IndexFormatError, MissingDependency
from retrieval.persistence import load_arrays, save_arrays
from retrieval.protocols import RowHits
from retrieval.sparse.scoring import BM25Config, BM25Index
from retrieval.sparse.tokenize import Tokenizer, TokenizerConfig
from retrieval.types import Document

logger = logging.getLogger(__name__)

BACKENDS = ("native", "rank_bm25")


class RankBM25Backend:
    """``rank_bm25.BM25Okapi`` behind our search shape: exact reference scores, slow (pure Python)."""

    def __init__(self, token_lists: Sequence[Sequence[str]], config: BM25Config) -> None:
        try:
            from rank_bm25 import BM25Okapi
        except ImportError as exc:
            raise MissingDependency("backend='rank_bm25' needs rank-bm25: pip install rank-bm25") from exc
        self.model = BM25Okapi([list(t) for t in token_lists], k1=config.k1, b=config.b, epsilon=config.epsilon)

    def search(self, token_lists: Sequence[Sequence[str]], k: int) -> list[RowHits]:
        out = []
        for tokens in token_lists:
            scores = self.model.get_scores(list(tokens))
            rows = np.flatnonzero(scores > 0)
            order = np.lexsort((rows, -scores[rows]))[:k]
            out.append((rows[order], scores[rows[order]]))
        return out


def _tokenize_all(tokenizer: Tokenizer, docs: Sequence[Document], show_progress: bool) -> list[list[str]]:
    return [tokenizer(d.full_text) for d in tqdm(docs, desc="Tokenizing", unit="doc", disable=not show_progress)]


class BM25Searcher:
    """BM25 over title + text. ``backend="rank_bm25"`` swaps in rank-bm25 (okapi only) as a reference."""

    method = "bm25"

    def __init__(self, index: BM25Index, tokenizer: Tokenizer, backend: str = "native", n_jobs: int | None = None):
        if backend not in BACKENDS:
            raise ValueError(f"unknown BM25 backend {backend!r}; choose one of {BACKENDS}")
        if backend == "rank_bm25" and index.config.variant != "okapi":
            raise ValueError("backend='rank_bm25' implements variant='okapi' only")
        self.index = index
        self.tokenizer = tokenizer
        self.backend = backend
        self.n_jobs = n_jobs
        self._reference: RankBM25Backend | None = None

    @classmethod
    def build(cls, docs: Sequence[Document], show_progress: bool = True, *,
              tokenizer: TokenizerConfig | str = "default", variant: str = "lucene", k1: float = 1.5,
              b: float = 0.75, backend: str = "native", dtype: str = "float32",
              n_jobs: int | None = None) -> "BM25Searcher":
        """Tokenize and index ``docs``; ``tokenizer`` is a :class:`TokenizerConfig` or a preset name."""
        tok_cfg = TokenizerConfig.preset(tokenizer) if isinstance(tokenizer, str) else tokenizer
        tok = Tokenizer(tok_cfg)
        config = BM25Config(variant=variant, k1=k1, b=b, dtype=dtype)
        index = BM25Index.build(_tokenize_all(tok, docs, show_progress), config)
        logger.info("BM25 index: %d docs, %d terms", index.n_docs, len(index.vocab))
        return cls(index, tok, backend=backend, n_jobs=n_jobs)

    def _reference_backend(self) -> RankBM25Backend:
        if self._reference is None:
            tf, terms = self.index.tf, self.index.vocab_list()
            token_lists = [
                [terms[t] for t, c in zip(tf.indices[tf.indptr[r]:tf.indptr[r + 1]],
                                          tf.data[tf.indptr[r]:tf.indptr[r + 1]]) for _ in range(int(c))]
                for r in range(tf.shape[0])
            ]
            self._reference = RankBM25Backend(token_lists, self.index.config)
        return self._reference

    def search(self, queries: Sequence[str], k: int) -> list[RowHits]:
        token_lists = [self.tokenizer(q) for q in queries]
        if self.backend == "rank_bm25":
            return self._reference_backend().search(token_lists, k)
        return self.index.search(token_lists, k, n_jobs=self.n_jobs)

    def add(self, docs: Sequence[Document]) -> None:
        self.index.add(_tokenize_all(self.tokenizer, docs, show_progress=False))
        self._reference = None

    def remove(self, rows: Sequence[int]) -> None:
        self.index.remove(rows)
        self._reference = None

    def save(self, folder: Path) -> dict[str, Any]:
        folder.mkdir(parents=True, exist_ok=True)
        save_arrays(folder, self.index.arrays())
        (folder / "vocab.json").write_text(json.dumps(self.index.vocab_list(), ensure_ascii=False), encoding="utf-8")
        return {"tokenizer": self.tokenizer.config.to_dict(), "bm25": self.index.config.to_dict(),
                "backend": self.backend, "n_terms": len(self.index.vocab)}

    @classmethod
    def load(cls, folder: Path, config: dict[str, Any], n_jobs: int | None = None, **_: Any) -> "BM25Searcher":
        vocab_path = folder / "vocab.json"
        if not vocab_path.exists():
            raise IndexFormatError(f"{vocab_path}: missing")
        vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
        arrays = load_arrays(folder, ["tf_data", "tf_indices", "tf_indptr"])
        index = BM25Index.from_arrays(arrays, vocab, BM25Config(**config["bm25"]))
        tok = Tokenizer(TokenizerConfig.from_dict(config["tokenizer"]))
        return cls(index, tok, backend=config.get("backend", "native"), n_jobs=n_jobs)
