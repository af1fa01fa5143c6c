"""BM25 over a sparse term-weight matrix: the scoring core is a few pure functions on arrays.

The index keeps the raw term-frequency matrix (docs x vocab, CSR) and derives the BM25 weight
matrix (vocab x docs, CSR) from it, so k1/b/variant can change and documents can be added or
removed without re-tokenising. A query is a sparse vector of term counts; scores for a batch of
queries are one sparse matrix product, which scipy runs without the GIL, so batches use all cores.
"""
from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from retrieval.configs import Config, check_type
from retrieval.errors import IndexFormatError

logger = logging.getLogger(__name__)

VARIANTS = ("lucene", "okapi", "robertson", "atire")
DTYPES = ("float32", "float64")
IMPLEMENTATIONS = ("native", "rank_bm25")   # our sparse products, or rank-bm25 as an exact reference


@dataclass(frozen=True)
class BM25Config(Config):
    """BM25 parameters. ``okapi`` equals ``rank_bm25.BM25Okapi`` (idf floored at ``epsilon`` x mean idf).

    ``implementation="rank_bm25"`` scores with rank-bm25 itself (okapi only; exact, slow): a reference.
    """

    variant: str = field(default="lucene", metadata={"help": "BM25 variant", "choices": VARIANTS})
    k1: float = field(default=1.5, metadata={"help": "BM25 term-frequency saturation"})
    b: float = field(default=0.75, metadata={"help": "BM25 length normalisation"})
    epsilon: float = field(default=0.25, metadata={"help": "okapi: idf floor as a share of the mean idf"})
    dtype: str = field(default="float32", metadata={"help": "BM25 weight precision", "choices": DTYPES})
    implementation: str = field(default="native", metadata={
        "help": "native (sparse products) or rank_bm25 (exact okapi reference, slow)", "choices": IMPLEMENTATIONS})

    RENAMED: ClassVar[Mapping[str, str]] = {"backend": "implementation"}   # the old name, in older manifests

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown BM25 variant {self.variant!r}; choose one of {VARIANTS}")
        for name in ("k1", "b", "epsilon"):
            check_type("BM25Config", name, getattr(self, name), (int, float))
        if self.k1 < 0 or not 0 <= self.b <= 1:
            raise ValueError(f"need k1 >= 0 and 0 <= b <= 1, got k1={self.k1}, b={self.b}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype!r}")
        if self.implementation not in IMPLEMENTATIONS:
            raise ValueError(f"unknown BM25 implementation {self.implementation!r}; choose one of {IMPLEMENTATIONS}")
        if self.implementation == "rank_bm25" and self.variant != "okapi":
            raise ValueError("implementation='rank_bm25' implements variant='okapi' only")


def idf(df: np.ndarray, n_docs: int, cfg: BM25Config) -> np.ndarray:
    """Inverse document frequency per term, by variant (Lucene: log(1 + (N - df + .5) / (df + .5)))."""
    df = df.astype(np.float64)
    if cfg.variant == "lucene":
        return np.log1p((n_docs - df + 0.5) / (df + 0.5))
    if cfg.variant == "atire":
        return np.log(n_docs / np.maximum(df, 1.0))
    raw = np.log(n_docs - df + 0.5) - np.log(df + 0.5)  # robertson / okapi
    if cfg.variant == "okapi" and raw.size:
        raw = np.where(raw < 0, cfg.epsilon * raw.mean(), raw)
    return raw


def term_weights(tf: sp.csr_matrix, cfg: BM25Config) -> sp.csr_matrix:
    """BM25 weight of every (term, doc) pair: idf * saturated tf; returns vocab x docs CSR."""
    n_docs = tf.shape[0]
    doc_len = np.asarray(tf.sum(axis=1)).ravel().astype(np.float64)
    avgdl = doc_len.mean() if n_docs and doc_len.mean() > 0 else 1.0
    df = np.diff(tf.tocsc().indptr)
    return weights_from_stats(tf, cfg, idf(df, n_docs, cfg), avgdl)


def weights_from_stats(tf: sp.csr_matrix, cfg: BM25Config, term_idf: np.ndarray, avgdl: float) -> sp.csr_matrix:
    """``term_weights`` with the idf per column of ``tf`` and the average length given, not read from ``tf``.

    A shard of a collection passes the whole collection's values (see ``retrieval.distributed.stats``), so its
    weights equal those of one index over every document.
    """
    n_docs = tf.shape[0]
    doc_len = np.asarray(tf.sum(axis=1)).ravel().astype(np.float64)
    coo = tf.tocoo()
    counts = coo.data.astype(np.float64)
    norm = cfg.k1 * (1.0 - cfg.b + cfg.b * doc_len[coo.row] / avgdl)
    sat = counts / (counts + norm)
    if cfg.variant in ("okapi", "atire"):
        sat *= cfg.k1 + 1.0
    weights = sat * np.asarray(term_idf, dtype=np.float64)[coo.col]
    out = sp.csr_matrix((weights.astype(cfg.dtype), (coo.col, coo.row)), shape=(tf.shape[1], n_docs))
    out.sort_indices()
    return out


def count_matrix(token_lists: Sequence[Sequence[str]], vocab: dict[str, int], grow: bool,
                 dtype: Any = np.int32, sort_terms: bool = True) -> sp.csr_matrix:
    """Rows of term counts; unknown terms are added to ``vocab`` when ``grow`` else dropped.

    ``sort_terms=False`` keeps each row's terms in first-occurrence order (for queries: see ``query_matrix``).
    """
    indptr = [0]
    indices: list[int] = []
    data: list[int] = []
    for tokens in token_lists:
        counts = Counter(tokens)
        for term, c in counts.items():
            tid = vocab.get(term)
            if tid is None:
                if not grow:
                    continue
                tid = vocab[term] = len(vocab)
            indices.append(tid)
            data.append(c)
        indptr.append(len(indices))
    mat = sp.csr_matrix(
        (np.asarray(data, dtype=dtype), np.asarray(indices, dtype=np.int64), np.asarray(indptr, dtype=np.int64)),
        shape=(len(token_lists), len(vocab)),
    )
    if sort_terms:
        mat.sort_indices()
    else:
        mat.has_sorted_indices = False   # scipy must not assume an order it could exploit
    return mat


def top_k_rows(scores: sp.csr_matrix, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per row of a sparse score matrix: (doc indices, scores) of the k best, best first; ties by index."""
    out = []
    indptr, indices, data = scores.indptr, scores.indices, scores.data
    for r in range(scores.shape[0]):
        s, e = indptr[r], indptr[r + 1]
        idx, val = indices[s:e], data[s:e]
        if e - s > k:
            part = np.argpartition(-val, k - 1)[:k]
            idx, val = idx[part], val[part]
        order = np.lexsort((idx, -val))
        out.append((idx[order].astype(np.int64), val[order]))
    return out


class BM25Index:
    """Term-count matrix + vocabulary + derived BM25 weights; search by sparse products.

    Updates are amortised: ``add`` counts only the new documents and queues them as a segment, ``remove`` only
    marks rows; the segments are merged and the weights recomputed once, at the next search, save or ``tf``
    read. So a burst of small updates costs one rebuild, and every result equals a fresh build over the same
    documents in the same order (BM25's idf and average length are collection-wide: a stale weight would be wrong).
    """

    def __init__(self, tf: sp.csr_matrix, vocab: dict[str, int], config: BM25Config | None = None) -> None:
        self.config = config or BM25Config()
        self.vocab = vocab
        self._tf = tf.tocsr()
        self._pending: list[sp.csr_matrix] = []     # added rows not yet merged into _tf
        self._alive: np.ndarray | None = None       # over _tf's rows then the pending ones; None: all alive
        self._weights: sp.csr_matrix | None = None
        self._merging = threading.Lock()   # concurrent searches (read-locked by Retriever) may both merge

    @classmethod
    def build(cls, token_lists: Sequence[Sequence[str]], config: BM25Config | None = None) -> "BM25Index":
        """Index tokenised documents (one list of terms per document)."""
        vocab: dict[str, int] = {}
        tf = count_matrix(token_lists, vocab, grow=True)
        return cls(tf, vocab, config)

    def _physical_rows(self) -> int:
        return self._tf.shape[0] + sum(m.shape[0] for m in self._pending)

    @property
    def n_docs(self) -> int:
        return self._physical_rows() if self._alive is None else int(self._alive.sum())

    @property
    def pending(self) -> bool:
        """True while updates wait to be merged (the next search, save or ``tf`` read merges them)."""
        return bool(self._pending) or self._alive is not None

    @property
    def tf(self) -> sp.csr_matrix:
        """The documents x terms count matrix, with every queued update applied."""
        if self.pending:
            with self._merging:
                self._merge()
        return self._tf

    def _merge(self) -> None:
        if self.pending:
            n_terms = len(self.vocab)
            parts = [self._tf] + self._pending
            for part in parts:
                part.resize((part.shape[0], n_terms))
            tf = sp.vstack(parts, format="csr") if len(parts) > 1 else self._tf
            if self._alive is not None:
                tf = tf[self._alive]
            self._weights = None
            self._tf, self._pending, self._alive = tf, [], None

    @property
    def weights(self) -> sp.csr_matrix:
        """terms x documents BM25 weights, computed once per state of the collection."""
        weights = self._weights
        if weights is None:
            with self._merging:
                self._merge()
                if self._weights is None:
                    self._weights = term_weights(self._tf, self.config)
                weights = self._weights
        return weights

    def add(self, token_lists: Sequence[Sequence[str]]) -> None:
        """Append documents: counted now, merged (and all weights recomputed) at the next search."""
        new = count_matrix(token_lists, self.vocab, grow=True)
        if new.shape[0] == 0:
            return
        self._pending.append(new)
        if self._alive is not None:
            self._alive = np.concatenate([self._alive, np.ones(new.shape[0], dtype=bool)])
        self._weights = None

    def remove(self, rows: Sequence[int]) -> None:
        """Drop documents by row number (later rows shift down); applied at the next search."""
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        if rows.size == 0:
            return
        if rows[0] < 0 or rows[-1] >= self.n_docs:
            raise IndexError(f"rows out of range 0..{self.n_docs - 1}: {rows[(rows < 0) | (rows >= self.n_docs)][:5]}")
        if self._alive is None:
            self._alive = np.ones(self._physical_rows(), dtype=bool)
        self._alive[np.flatnonzero(self._alive)[rows]] = False
        self._weights = None

    def query_matrix(self, token_lists: Sequence[Sequence[str]]) -> sp.csr_matrix:
        """Queries as rows of term counts over this vocabulary (unknown terms dropped).

        Terms stay in query order, not term-id order: the sparse product then sums each document's score in the
        order the query names its terms, so the float result does not depend on how the vocabulary happens to be
        numbered (an index grown by updates numbers terms differently from a fresh build, and must score equally).
        """
        q = count_matrix(token_lists, self.vocab, grow=False, dtype=self.config.dtype, sort_terms=False)
        q.resize((q.shape[0], self.weights.shape[0]))
        return q

    def scores(self, token_lists: Sequence[Sequence[str]]) -> np.ndarray:
        """Dense scores (n_queries x n_docs); for tests and reference, not for search."""
        return (self.query_matrix(token_lists) @ self.weights).toarray()

    def search(self, token_lists: Sequence[Sequence[str]], k: int,
               n_jobs: int | None = None, chunk: int = 256) -> list[tuple[np.ndarray, np.ndarray]]:
        """Top-k (doc rows, scores) per query; only documents sharing a term with the query are returned."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if not token_lists:
            return []
        q = self.query_matrix(token_lists)
        jobs = max(1, min(n_jobs or os.cpu_count() or 1, -(-q.shape[0] // 16)))
        step = min(chunk, -(-q.shape[0] // jobs))
        parts = [q[i:i + step] for i in range(0, q.shape[0], step)]
        run = lambda part: top_k_rows(part @ self.weights, k)  # noqa: E731
        if jobs == 1 or len(parts) == 1:
            results = [run(p) for p in parts]
        else:
            with ThreadPoolExecutor(jobs) as pool:
                results = list(pool.map(run, parts))
        return [hit for part in results for hit in part]

    # --- persistence: plain arrays, no pickle -------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        return {"tf_data": self.tf.data, "tf_indices": self.tf.indices, "tf_indptr": self.tf.indptr}

    def vocab_list(self) -> list[str]:
        terms = [""] * len(self.vocab)
        for term, i in self.vocab.items():
            terms[i] = term
        return terms

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], vocab: list[str], config: BM25Config,
                    where: Path | None = None) -> "BM25Index":
        """Rebuild from saved arrays, after checking them (a bad one names its file under ``where``)."""
        data, indices, indptr = check_csr(arrays, len(vocab), where or Path("."))
        tf = sp.csr_matrix((data, indices, indptr), shape=(len(indptr) - 1, len(vocab)))
        return cls(tf, {t: i for i, t in enumerate(vocab)}, config)


def check_csr(arrays: dict[str, np.ndarray], n_terms: int, where: Path) -> tuple[np.ndarray, ...]:
    """(data, indices, indptr) of a term-count CSR matrix, checked so scipy can never read out of bounds.

    indptr: integers from 0, never decreasing, ending at nnz; indices: term ids in [0, n_terms), strictly
    increasing within a row; data: non-negative finite counts. Anything else raises IndexFormatError.
    """
    def bad(name: str, why: str) -> IndexFormatError:
        return IndexFormatError(f"{where / (name + '.npy')}: {why}; the index folder is damaged")

    data, indices, indptr = (arrays[n] for n in ("tf_data", "tf_indices", "tf_indptr"))
    for name, arr, kinds in (("tf_data", data, "iuf"), ("tf_indices", indices, "iu"), ("tf_indptr", indptr, "iu")):
        if arr.ndim != 1 or arr.dtype.kind not in kinds:
            raise bad(name, f"expected a 1-D {'numeric' if kinds == 'iuf' else 'integer'} array, "
                            f"found {arr.ndim}-D {arr.dtype}")
    if len(indptr) == 0 or indptr[0] != 0 or indptr[-1] != len(indices) or (np.diff(indptr.astype(np.int64)) < 0).any():
        raise bad("tf_indptr", f"row pointers must grow from 0 to the {len(indices)} entries of tf_indices.npy")
    if len(data) != len(indices):
        raise bad("tf_data", f"{len(data)} values for {len(indices)} entries in tf_indices.npy")
    if len(indices) and (indices.min() < 0 or indices.max() >= n_terms):
        raise bad("tf_indices", f"term ids must lie in [0, {n_terms}) (the size of vocab.json), found "
                                f"{indices.min()}..{indices.max()}")
    step = np.diff(indices.astype(np.int64))
    row_start = np.zeros(len(step), dtype=bool)
    starts = indptr[1:-1].astype(np.int64)
    row_start[starts[(starts > 0) & (starts < len(indices))] - 1] = True
    if (step[~row_start] <= 0).any():
        raise bad("tf_indices", "term ids must increase within each row")
    if data.dtype.kind == "f" and data.dtype.itemsize < 4:
        raise bad("tf_data", f"{data.dtype} counts are not supported; expected int or float32/float64")
    if len(data) and (not np.isfinite(data).all() or data.min() < 0):
        raise bad("tf_data", "term counts must be finite and non-negative")
    index_dtype = np.int32 if max(n_terms, len(indices)) < np.iinfo(np.int32).max else np.int64
    return data.astype(data.dtype.newbyteorder("=")), indices.astype(index_dtype), indptr.astype(index_dtype)
