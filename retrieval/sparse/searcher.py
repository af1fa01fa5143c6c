"""The BM25 first stage: tokenizer + sparse index (or rank-bm25 as an exact reference implementation)."""
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
from retrieval.safe_files import read_str_list
from retrieval.protocols import RowHits
from retrieval.sparse.parallel import count_texts
from retrieval.sparse.scoring import BM25Config, BM25Index
from retrieval.sparse.tokenize import Tokenizer, TokenizerConfig
from retrieval.types import Document

logger = logging.getLogger(__name__)


class RankBM25Reference:
    """``rank_bm25.BM25Okapi`` behind our search shape: exact reference scores, slow (pure Python)."""

    def __init__(self, token_lists: Sequence[Sequence[str]], config: BM25Config) -> None:
        try:
            from rank_bm25 import BM25Okapi
        except ImportError as exc:
            raise MissingDependency("implementation='rank_bm25' needs rank-bm25: pip install rank-bm25") from exc
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


def tokenizer_config(tokenizer: TokenizerConfig | str) -> TokenizerConfig:
    """A :class:`TokenizerConfig` from itself or a preset name."""
    if isinstance(tokenizer, str):
        return TokenizerConfig.preset(tokenizer)
    if not isinstance(tokenizer, TokenizerConfig):
        raise ValueError(f"tokenizer must be a TokenizerConfig or a preset name, got {type(tokenizer).__name__}")
    return tokenizer


def saved_configs(config: dict[str, Any], folder: Path,
                  allow_custom_pattern: bool = False) -> tuple[BM25Config, TokenizerConfig]:
    """The BM25 and tokenizer configs a saved stage names (older manifests kept ``backend`` beside them).

    A token pattern none of our presets writes is refused unless the caller opts in: a manifest must not be
    able to choose a regex that backtracks for ever on every query.
    """
    where = _manifest_of(folder)
    try:
        bm25 = dict(config["bm25"])
        if "backend" in config and "implementation" not in bm25:
            bm25["implementation"] = config["backend"]
        bm25_config, tok_config = BM25Config.from_dict(bm25), TokenizerConfig.from_dict(config["tokenizer"])
    except (KeyError, TypeError, ValueError) as exc:
        raise IndexFormatError(f"{where}: bad BM25 stage config ({exc!s})") from None
    if tok_config.custom_pattern and not allow_custom_pattern:
        raise IndexFormatError(f"{where}: token_pattern {tok_config.token_pattern!r} is not one this library "
                               "writes; if you built this index with that pattern and trust it, load with "
                               "allow_custom_pattern=True")
    return bm25_config, tok_config


def _manifest_of(folder: Path) -> Path:
    """The manifest that describes a stage folder: the nearest ``manifest.json`` at or above it."""
    for candidate in (folder, *folder.parents):
        if (candidate / "manifest.json").is_file():
            return candidate / "manifest.json"
    return folder / "manifest.json"


class BM25Searcher:
    """BM25 over title + text; ``BM25Config(implementation="rank_bm25")`` scores with rank-bm25 as a reference."""

    method = "bm25"

    def __init__(self, index: BM25Index, tokenizer: Tokenizer, n_jobs: int | None = None):
        self.index = index
        self.tokenizer = tokenizer
        self.n_jobs = n_jobs
        self._reference: RankBM25Reference | None = None

    @property
    def config(self) -> BM25Config:
        return self.index.config

    @classmethod
    def build(cls, docs: Sequence[Document], show_progress: bool = True, *, config: BM25Config | None = None,
              tokenizer: TokenizerConfig | str = "default", n_jobs: int | None = None,
              allow_custom_pattern: bool = False, index_workers: int | None = None) -> "BM25Searcher":
        """Tokenize and index ``docs``; ``tokenizer`` is a :class:`TokenizerConfig` or a preset name.

        ``allow_custom_pattern=True`` opts in to a ``token_pattern`` of your own (see :class:`Tokenizer`).
        ``index_workers`` processes tokenize (default: every core from 20,000 documents, else one); the index is
        the same whatever the number. Flat options (``k1=``, ``variant=``...) are taken by ``Retriever.from_documents``.
        """
        if config is not None and not isinstance(config, BM25Config):
            raise ValueError(f"config must be a BM25Config, got {type(config).__name__}")
        tok = Tokenizer(tokenizer_config(tokenizer), allow_custom_pattern=allow_custom_pattern)
        tf, vocab = count_texts([d.full_text for d in docs], tok, workers=index_workers, show_progress=show_progress)
        index = BM25Index(tf, vocab, config or BM25Config())
        logger.info("BM25 index: %d docs, %d terms", index.n_docs, len(index.vocab))
        return cls(index, tok, n_jobs=n_jobs)

    def _reference_scorer(self) -> RankBM25Reference:
        if self._reference is None:
            tf, terms = self.index.tf, self.index.vocab_list()
            token_lists = [
                [terms[t] for t, c in zip(tf.indices[tf.indptr[r]:tf.indptr[r + 1]],
                                          tf.data[tf.indptr[r]:tf.indptr[r + 1]]) for _ in range(int(c))]
                for r in range(tf.shape[0])
            ]
            self._reference = RankBM25Reference(token_lists, self.index.config)
        return self._reference

    def search(self, queries: Sequence[str], k: int) -> list[RowHits]:
        token_lists = [self.tokenizer(q) for q in queries]
        if self.config.implementation == "rank_bm25":
            return self._reference_scorer().search(token_lists, k)
        return self.index.search(token_lists, k, n_jobs=self.n_jobs)

    def score_rows(self, query: str, rows: Sequence[int]) -> np.ndarray:
        """BM25 scores of ``query`` for the given document rows (e.g. a positive outside the top-k)."""
        if self.config.implementation == "rank_bm25":
            return self._reference_scorer().model.get_batch_scores(self.tokenizer(query), list(rows))
        return self.index.score_rows(self.tokenizer(query), rows)

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
                "n_terms": len(self.index.vocab)}

    LOAD_OPTIONS = ("n_jobs", "allow_custom_pattern")   # the keywords of load() after folder and config

    @classmethod
    def load(cls, folder: Path, config: dict[str, Any], n_jobs: int | None = None,
             allow_custom_pattern: bool = False) -> "BM25Searcher":
        """Open a saved stage; every array is checked before scipy sees it (a bad one names its file)."""
        bm25_config, tok_config = saved_configs(config, folder, allow_custom_pattern)
        vocab = read_str_list(folder / "vocab.json", "term")
        n_terms = config.get("n_terms")
        if n_terms is not None and n_terms != len(vocab):
            raise IndexFormatError(f"{folder / 'vocab.json'}: {len(vocab)} terms, "
                                   f"{_manifest_of(folder)} says {n_terms}")
        arrays = load_arrays(folder, ["tf_data", "tf_indices", "tf_indptr"])
        index = BM25Index.from_arrays(arrays, vocab, bm25_config, where=folder)
        tok = Tokenizer(tok_config, allow_custom_pattern=allow_custom_pattern)
        return cls(index, tok, n_jobs=n_jobs)

    def __len__(self) -> int:
        return self.index.n_docs
