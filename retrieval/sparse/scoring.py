"""BM25 over sparse term-weight matrices: the scoring core is a few pure functions on arrays.

The index keeps raw term counts (term-major CSR segments) and derives BM25 weights from them lazily, per
term, under the current collection statistics, so k1/b/variant can change and documents can be added or
removed without re-tokenising or rewriting the collection. A query is a sparse vector of term counts; scores
for a batch of queries are one sparse matrix product per segment, which scipy runs without the GIL.
"""
from __future__ import annotations

import logging
import math
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
    """Inverse document frequency per term, by variant (Lucene: log(1 + (N - df + .5) / (df + .5))).

    okapi floors negative idf at ``epsilon`` x the mean idf over the terms that occur (df > 0), summed exactly
    (``math.fsum``), so neither terms left behind by removed documents nor the vocabulary's order change it.
    """
    df = np.asarray(df).astype(np.float64)
    if cfg.variant == "lucene":
        return np.log1p((n_docs - df + 0.5) / (df + 0.5))
    if cfg.variant == "atire":
        return np.log(n_docs / np.maximum(df, 1.0))
    raw = np.log(n_docs - df + 0.5) - np.log(df + 0.5)  # robertson / okapi
    occurring = raw[df > 0]
    if cfg.variant == "okapi" and occurring.size:
        raw = np.where(raw < 0, cfg.epsilon * (math.fsum(occurring) / occurring.size), raw)
    return raw


def average_length(n_docs: int, total_len: float) -> float:
    """Mean document length (1.0 for an empty collection), the same float however the total was summed."""
    return float(total_len) / n_docs if n_docs and total_len > 0 else 1.0


def doc_norms(doc_len: np.ndarray, avgdl: float, cfg: BM25Config) -> np.ndarray:
    """Per document, the length normalisation k1 * (1 - b + b * len / avgdl) (float64)."""
    return cfg.k1 * (1.0 - cfg.b + cfg.b * np.asarray(doc_len, dtype=np.float64) / avgdl)


def weight_values(counts: np.ndarray, term_idf: np.ndarray, norm: np.ndarray, cfg: BM25Config) -> np.ndarray:
    """BM25 weight of (term, doc) entries from their counts, idf and document norms (see ``doc_norms``).

    Elementwise, so any subset of entries gets exactly the values a whole-collection computation gives them.
    """
    counts = counts.astype(np.float64)
    sat = counts / (counts + norm)
    if cfg.variant in ("okapi", "atire"):
        sat *= cfg.k1 + 1.0
    return (sat * term_idf).astype(cfg.dtype)


def weights_from_stats(tf: sp.csr_matrix, cfg: BM25Config, term_idf: np.ndarray, avgdl: float) -> sp.csr_matrix:
    """terms x docs BM25 weights of a docs x terms count matrix under given collection statistics (a shard
    scored with the whole collection's idf and average length scores as the whole collection would)."""
    doc_len = np.asarray(tf.sum(axis=1)).ravel()
    by_term = tf.T.tocsr()
    by_term.sort_indices()
    data = weight_values(by_term.data, np.repeat(np.asarray(term_idf, dtype=np.float64), np.diff(by_term.indptr)),
                         doc_norms(doc_len, avgdl, cfg)[by_term.indices], cfg)
    return sp.csr_matrix((data, by_term.indices, by_term.indptr), shape=by_term.shape)


def term_weights(tf: sp.csr_matrix, cfg: BM25Config) -> sp.csr_matrix:
    """BM25 weight of every (term, doc) pair under the collection's own statistics; returns vocab x docs CSR."""
    doc_len = np.asarray(tf.sum(axis=1)).ravel()
    df = np.diff(tf.tocsc().indptr)
    return weights_from_stats(tf, cfg, idf(df, tf.shape[0], cfg), average_length(tf.shape[0], doc_len.sum()))


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


def top_k_rows(scores: sp.csr_matrix, k: int, keep: np.ndarray | None = None,
               rows: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per row of a sparse score matrix: (doc indices, scores) of the k best, best first; ties by index.

    ``keep`` (bool per column) drops columns (removed documents); ``rows`` maps kept columns to the numbers
    returned. Both keep the column order, so ties break as they would in a matrix without the dropped columns.
    """
    out = []
    indptr, indices, data = scores.indptr, scores.indices, scores.data
    for r in range(scores.shape[0]):
        s, e = indptr[r], indptr[r + 1]
        idx, val = indices[s:e], data[s:e]
        if keep is not None:
            live = keep[idx]
            idx, val = idx[live], val[live]
        if len(idx) > k:   # the k best; documents tied at the cut are taken by index, not as partition left them
            cut = val[np.argpartition(-val, k - 1)[k - 1]]
            above = np.flatnonzero(val > cut)
            tied = np.flatnonzero(val == cut)
            tied = tied[np.argsort(idx[tied], kind="stable")[:k - len(above)]]
            part = np.concatenate([above, tied])
            idx, val = idx[part], val[part]
        order = np.lexsort((idx, -val))
        idx = idx[order].astype(np.int64)
        out.append((idx if rows is None else rows[idx], val[order]))
    return out


@dataclass
class _Segment:
    """Consecutive documents, term-major (a term's postings are one row), with weights refreshed per term.

    ``weights`` runs parallel to ``counts.data``; a term's slice is valid while ``stamp[term]`` equals the
    index's statistics version (every add or remove starts a new one, since idf and average length move).
    """

    counts: sp.csr_matrix    # terms x docs of this segment
    doc_len: np.ndarray      # terms per document (float64: exact for integer counts)
    weights: np.ndarray
    stamp: np.ndarray
    _matrix: sp.csr_matrix | None = None

    @classmethod
    def of(cls, tf: sp.csr_matrix, dtype: str) -> "_Segment":
        """A segment from docs x terms counts."""
        counts = tf.T.tocsr()
        counts.sort_indices()
        return cls(counts, np.asarray(tf.sum(axis=1), dtype=np.float64).ravel(),
                   np.zeros(counts.nnz, dtype=dtype), np.full(counts.shape[0], -1, dtype=np.int64))

    @property
    def n_docs(self) -> int:
        return self.counts.shape[1]

    def grow_terms(self, n_terms: int) -> None:
        """Give terms added to the vocabulary since this segment was made empty postings."""
        extra = n_terms - self.counts.shape[0]
        if extra > 0:
            c = self.counts
            indptr = np.concatenate([c.indptr, np.full(extra, c.indptr[-1], dtype=c.indptr.dtype)])
            self.counts = sp.csr_matrix((c.data, c.indices, indptr), shape=(n_terms, c.shape[1]))
            self.stamp = np.concatenate([self.stamp, np.full(extra, -1, dtype=np.int64)])

    CHUNK = 1 << 22    # postings per step of a full pass (bounded temporaries, cache-friendly)

    def refresh(self, terms: np.ndarray, version: int, term_idf: np.ndarray, norms: np.ndarray,
                cfg: BM25Config) -> None:
        """Recompute the weights of those ``terms`` that are stale under ``version``: O(their postings).

        ``norms`` are this segment's document norms under the same statistics (``doc_norms``).
        """
        stale = terms[self.stamp[terms] != version]
        if stale.size == 0:
            return
        c = self.counts
        starts, ends = c.indptr[stale], c.indptr[stale + 1]
        lengths = (ends - starts).astype(np.int64)
        total = int(lengths.sum())
        if total > c.nnz // 4:   # most of the segment: sequential passes over every stale term, in chunks
            stale = np.flatnonzero(self.stamp != version)
            for lo in range(0, c.nnz, self.CHUNK):
                hi = min(lo + self.CHUNK, c.nnz)
                t0, t1 = np.searchsorted(c.indptr, [lo, hi - 1], side="right") - 1
                bounds = np.clip(c.indptr[t0:t1 + 2], lo, hi)
                idf_of = np.repeat(term_idf[t0:t1 + 1], np.diff(bounds))
                self.weights[lo:hi] = weight_values(c.data[lo:hi], idf_of, norms[c.indices[lo:hi]], cfg)
        elif total:
            entries = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(total)
            self.weights[entries] = weight_values(c.data[entries], np.repeat(term_idf[stale], lengths),
                                                  norms[c.indices[entries]], cfg)
        self.stamp[stale] = version

    def weight_matrix(self) -> sp.csr_matrix:
        """terms x docs over the current weights (shares their array; only refreshed terms are meaningful)."""
        m = self._matrix
        if m is None or m.shape != self.counts.shape:
            c = self.counts
            m = self._matrix = sp.csr_matrix((self.weights, c.indices, c.indptr), shape=c.shape)
            m.data = self.weights    # in place: refreshes show through (the constructor may have copied)
        return m

    def terms_of(self, local_docs: np.ndarray) -> np.ndarray:
        """The term of every posting of these local documents (one per distinct term per document): for removals,
        O(segment postings)."""
        hit = np.zeros(self.n_docs, dtype=bool)
        hit[local_docs] = True
        entries = np.flatnonzero(hit[self.counts.indices])
        return np.searchsorted(self.counts.indptr, entries, side="right") - 1

    @staticmethod
    def merge(a: "_Segment", b: "_Segment") -> "_Segment":
        n_terms = max(a.counts.shape[0], b.counts.shape[0])
        a.grow_terms(n_terms)
        b.grow_terms(n_terms)
        counts = sp.hstack([a.counts, b.counts], format="csr")
        counts.sort_indices()
        return _Segment(counts, np.concatenate([a.doc_len, b.doc_len]), np.zeros(counts.nnz, dtype=a.weights.dtype),
                        np.full(n_terms, -1, dtype=np.int64))


class BM25Index:
    """Term counts in segments + vocabulary + collection statistics; search by sparse products.

    Like Lucene, updates never rewrite the collection: ``add`` counts the new documents into a new segment and
    ``remove`` marks rows dead and takes their terms out of the statistics. BM25 weights are refreshed lazily
    per term, for the terms a query uses, so after an update a search pays for its own terms' postings only.
    Small segments merge with their neighbour (log-structured); dead rows are dropped at merge or save. Every
    score is bit for bit the one a fresh build over the same documents gives (tested).
    """

    MERGE_RATIO = 4    # a segment merges into its predecessor once that one is at most this many times larger

    def __init__(self, tf: sp.csr_matrix, vocab: dict[str, int], config: BM25Config | None = None) -> None:
        self.config = config or BM25Config()
        self.vocab = vocab
        tf = tf.tocsr()
        if tf.shape[1] < len(vocab):
            tf = sp.csr_matrix((tf.data, tf.indices, tf.indptr), shape=(tf.shape[0], len(vocab)))
        self._segments = [_Segment.of(tf, self.config.dtype)]
        self._df = np.diff(tf.tocsc().indptr).astype(np.int64)
        self._total_len = float(self._segments[0].doc_len.sum())
        self._alive: np.ndarray | None = None       # over all segments' rows; None: all alive
        self._version = 0
        self._stats: tuple[int, np.ndarray, float] | None = None
        self._rows: tuple[int, np.ndarray | None] = (0, None)
        self._lock = threading.Lock()   # concurrent searches (read-locked by Retriever) refresh weights together

    @classmethod
    def build(cls, token_lists: Sequence[Sequence[str]], config: BM25Config | None = None) -> "BM25Index":
        """Index tokenised documents (one list of terms per document)."""
        vocab: dict[str, int] = {}
        tf = count_matrix(token_lists, vocab, grow=True)
        return cls(tf, vocab, config)

    def _physical_rows(self) -> int:
        return sum(seg.n_docs for seg in self._segments)

    @property
    def n_docs(self) -> int:
        return self._physical_rows() if self._alive is None else int(self._alive.sum())

    @property
    def n_segments(self) -> int:
        return len(self._segments)

    def collection_stats(self) -> tuple[np.ndarray, float]:
        """(idf per term, average document length) that scores use: this collection's own, over live rows."""
        return idf(self._df, self.n_docs, self.config), average_length(self.n_docs, self._total_len)

    def _current_stats(self) -> tuple[np.ndarray, float]:
        if self._stats is None or self._stats[0] != self._version:
            term_idf, avgdl = self.collection_stats()
            self._stats = (self._version, np.asarray(term_idf, dtype=np.float64), float(avgdl))
        return self._stats[1], self._stats[2]

    def _row_numbers(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(live mask, row number per physical row), or (None, None) when no row is dead."""
        if self._alive is None:
            return None, None
        if self._rows[0] != self._version or self._rows[1] is None:
            self._rows = (self._version, np.cumsum(self._alive) - 1)
        return self._alive, self._rows[1]

    def _weight_matrices(self, terms: np.ndarray) -> tuple[list[sp.csr_matrix], np.ndarray | None, np.ndarray | None]:
        """Per segment, terms x docs weights with ``terms`` up to date, and the live mask and row numbers of the
        same state (under the lock: concurrent searches may refresh together)."""
        with self._lock:
            term_idf, avgdl = self._current_stats()
            for seg in self._segments:
                seg.grow_terms(len(self.vocab))
                if (seg.stamp[terms] != self._version).any():
                    seg.refresh(terms, self._version, term_idf, doc_norms(seg.doc_len, avgdl, self.config),
                                self.config)
            return [seg.weight_matrix() for seg in self._segments], *self._row_numbers()

    def _scores(self, q: sp.csr_matrix, mats: list[sp.csr_matrix]) -> sp.csr_matrix:
        parts = [q @ m for m in mats]
        return parts[0] if len(parts) == 1 else sp.hstack(parts, format="csr")

    @staticmethod
    def _top_k(q: sp.csr_matrix, mats: list[sp.csr_matrix], k: int, keep: np.ndarray | None,
               rows: np.ndarray | None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Top-k per query over all segments: each segment's own top-k, then an exact merge (ties by row)."""
        if len(mats) == 1:
            return top_k_rows(q @ mats[0], k, keep, rows)
        per_segment, start = [], 0
        for m in mats:
            live = None if keep is None else keep[start:start + m.shape[1]]
            hits = top_k_rows(q @ m, k, live)
            per_segment.append([(idx + start, val) for idx, val in hits])
            start += m.shape[1]
        out = []
        for parts in zip(*per_segment):
            idx = np.concatenate([p[0] for p in parts])
            val = np.concatenate([p[1] for p in parts])
            order = np.lexsort((idx, -val))[:k]
            idx = idx[order]
            out.append((idx if rows is None else rows[idx], val[order]))
        return out

    @property
    def tf(self) -> sp.csr_matrix:
        """The documents x terms count matrix of the live documents (built on demand: for saving and tests)."""
        n_terms = len(self.vocab)
        for seg in self._segments:
            seg.grow_terms(n_terms)
        by_term = self._segments[0].counts if len(self._segments) == 1 else \
            sp.hstack([seg.counts for seg in self._segments], format="csr")
        tf = by_term.T.tocsr()
        if self._alive is not None:
            tf = tf[self._alive]
        tf.sort_indices()
        return tf

    def prepare(self) -> None:
        """Compute every weight now (before serving or timing queries) rather than per term at first use."""
        self._weight_matrices(np.arange(len(self.vocab)))

    @property
    def weights(self) -> sp.csr_matrix:
        """terms x documents BM25 weights of the live documents (every term refreshed; for tests and tools)."""
        mats, _, _ = self._weight_matrices(np.arange(len(self.vocab)))
        w = mats[0] if len(mats) == 1 else sp.hstack(mats, format="csr")
        return w[:, self._alive] if self._alive is not None else w.copy()

    def add(self, token_lists: Sequence[Sequence[str]]) -> None:
        """Append documents as a new segment: O(new documents), plus small-segment merges (amortised)."""
        with self._lock:    # searches may run alongside: they see the collection before or after, never between
            new = count_matrix(token_lists, self.vocab, grow=True)
            if new.shape[0] == 0:
                return
            seg = _Segment.of(new, self.config.dtype)
            df = np.concatenate([self._df, np.zeros(len(self.vocab) - len(self._df), dtype=np.int64)])
            self._df = df + np.diff(new.tocsc().indptr)
            self._total_len += float(seg.doc_len.sum())
            self._segments.append(seg)
            if self._alive is not None:
                self._alive = np.concatenate([self._alive, np.ones(seg.n_docs, dtype=bool)])
            self._merge_small()
            self._version += 1

    def _merge_small(self) -> None:
        segs = self._segments
        while len(segs) > 1 and segs[-2].n_docs <= self.MERGE_RATIO * segs[-1].n_docs:
            b = segs.pop()
            a = segs.pop()
            segs.append(_Segment.merge(a, b))
            self._compact(len(segs) - 1)
        if self._alive is not None and self._alive.all():
            self._alive = None

    def _start(self, i: int) -> int:
        return sum(seg.n_docs for seg in self._segments[:i])

    def _compact(self, i: int) -> None:
        """Rewrite segment ``i`` without its removed rows (when merging anyway, or once a quarter of it is dead)."""
        if self._alive is None:
            return
        seg, start = self._segments[i], self._start(i)
        live = self._alive[start:start + seg.n_docs]
        if live.all():
            return
        if not live.any() and len(self._segments) > 1:    # nothing left: the segment goes
            del self._segments[i]
            self._alive = np.concatenate([self._alive[:start], self._alive[start + seg.n_docs:]])
            return
        counts = seg.counts[:, live].tocsr()
        counts.sort_indices()
        self._segments[i] = _Segment(counts, seg.doc_len[live], np.zeros(counts.nnz, dtype=seg.weights.dtype),
                                     np.full(counts.shape[0], -1, dtype=np.int64))
        self._alive = np.concatenate([self._alive[:start], live[live], self._alive[start + seg.n_docs:]])

    def remove(self, rows: Sequence[int]) -> None:
        """Drop documents by row number (later rows shift down): their terms leave the statistics now, their
        postings when their segment merges or is a quarter dead, or at save. O(postings of their segments)."""
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        if rows.size == 0:
            return
        with self._lock:
            if rows[0] < 0 or rows[-1] >= self.n_docs:
                raise IndexError(f"rows out of range 0..{self.n_docs - 1}: "
                                 f"{rows[(rows < 0) | (rows >= self.n_docs)][:5]}")
            alive = np.ones(self._physical_rows(), dtype=bool) if self._alive is None else self._alive.copy()
            physical = np.flatnonzero(alive)[rows]
            alive[physical] = False
            df, total_len, start, touched = self._df.copy(), self._total_len, 0, []
            for i, seg in enumerate(self._segments):
                local = physical[(physical >= start) & (physical < start + seg.n_docs)] - start
                if local.size:
                    terms = seg.terms_of(local)
                    df -= np.bincount(terms, minlength=len(df))[:len(df)]
                    total_len -= float(seg.doc_len[local].sum())
                    if not alive[start:start + seg.n_docs].mean() > 0.75:
                        touched.append(i)
                start += seg.n_docs
            self._df, self._total_len, self._alive = df, total_len, alive
            for i in reversed(touched):    # from the end: a segment that goes shifts only later ones
                self._compact(i)
            if self._alive.all():
                self._alive = None
            self._version += 1

    def query_matrix(self, token_lists: Sequence[Sequence[str]]) -> sp.csr_matrix:
        """Queries as rows of term counts over this vocabulary (unknown terms dropped).

        Terms stay in query order, not term-id order: the sparse product then sums each document's score in the
        order the query names its terms, so the float result does not depend on how the vocabulary happens to be
        numbered (an index grown by updates numbers terms differently from a fresh build, and must score equally).
        """
        q = count_matrix(token_lists, self.vocab, grow=False, dtype=self.config.dtype, sort_terms=False)
        q.resize((q.shape[0], len(self.vocab)))
        return q

    def _score_matrix(self, token_lists: Sequence[Sequence[str]]) -> sp.csr_matrix:
        """Queries x physical rows, sparse: every document's score (dead rows included, for the caller to drop)."""
        q = self.query_matrix(token_lists)
        mats, _, _ = self._weight_matrices(np.unique(q.indices))
        q.resize((q.shape[0], mats[0].shape[0]))     # the vocabulary may have grown meanwhile
        return self._scores(q, mats)

    def scores(self, token_lists: Sequence[Sequence[str]]) -> np.ndarray:
        """Dense scores (n_queries x n_docs); for tests and reference, not for search."""
        dense = self._score_matrix(token_lists).toarray()
        return dense[:, self._alive] if self._alive is not None else dense

    def score_rows(self, tokens: Sequence[str], rows: Sequence[int]) -> np.ndarray:
        """One query's BM25 scores of the given live rows (any rows, not only its top-k), bit for bit search's."""
        idx = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= self.n_docs):
            raise IndexError(f"row out of range for an index of {self.n_docs} documents")
        physical = idx if self._alive is None else np.flatnonzero(self._alive)[idx]
        return self._score_matrix([tokens])[:, physical].toarray().reshape(-1)

    def search(self, token_lists: Sequence[Sequence[str]], k: int,
               n_jobs: int | None = None, chunk: int = 256) -> list[tuple[np.ndarray, np.ndarray]]:
        """Top-k (doc rows, scores) per query; only documents sharing a term with the query are returned."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if not token_lists:
            return []
        q = self.query_matrix(token_lists)
        mats, keep, rows = self._weight_matrices(np.unique(q.indices))
        q.resize((q.shape[0], mats[0].shape[0]))     # the vocabulary may have grown meanwhile
        jobs = max(1, min(n_jobs or os.cpu_count() or 1, -(-q.shape[0] // 16)))
        step = min(chunk, -(-q.shape[0] // jobs))
        parts = [q[i:i + step] for i in range(0, q.shape[0], step)]
        run = lambda part: self._top_k(part, mats, k, keep, rows)  # noqa: E731
        if jobs == 1 or len(parts) == 1:
            results = [run(p) for p in parts]
        else:
            with ThreadPoolExecutor(jobs) as pool:
                results = list(pool.map(run, parts))
        return [hit for part in results for hit in part]

    # --- persistence: plain arrays, no pickle -------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        tf = self.tf   # assembled from the segments on each read: once
        return {"tf_data": tf.data, "tf_indices": tf.indices, "tf_indptr": tf.indptr}

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
