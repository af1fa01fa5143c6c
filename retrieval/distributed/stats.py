"""Global BM25 statistics for a sharded collection: document frequencies and average length over every shard.

BM25's idf and average document length are collection-wide; a shard scoring with its own would rank
differently from one index. The driver merges each shard's (terms, df, total length) into global values and
gives every shard the idf of its own terms; :class:`GlobalStatsIndex` then scores with them: it answers
``BM25Index.collection_stats`` with the collection's values, and the index's own weight code does the rest.

Exactness: idf is computed once, over the merged document frequencies (numbered in first-occurrence order over
the shards in row order, the order one index numbers them); lengths are integers, summed exactly. Every weight is
then the float a single index computes (tested bit for bit, all variants).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from retrieval.sparse.scoring import BM25Config, BM25Index, idf


@dataclass(frozen=True)
class ShardTerms:
    """One shard's BM25 counts: its terms (in its own vocabulary order), their document frequencies, total length."""

    terms: list[str]
    df: np.ndarray
    n_docs: int
    total_len: int


def shard_terms(index: BM25Index) -> ShardTerms:
    """The counts a shard reports to the driver."""
    tf = index.tf
    return ShardTerms(terms=index.vocab_list(), df=np.diff(tf.tocsc().indptr).astype(np.int64),
                      n_docs=int(tf.shape[0]), total_len=int(tf.sum(dtype=np.int64)))


def global_idfs(shards: Sequence[ShardTerms], config: BM25Config) -> list[np.ndarray]:
    """Per shard, the idf of each of its terms (in its vocabulary order) computed over the whole collection."""
    vocab: dict[str, int] = {}
    maps = []
    for shard in shards:
        maps.append(np.fromiter((vocab.setdefault(t, len(vocab)) for t in shard.terms), dtype=np.int64,
                                count=len(shard.terms)))
    df = np.zeros(len(vocab), dtype=np.int64)
    for shard, ids in zip(shards, maps):
        df[ids] += shard.df          # a term appears once per shard vocabulary: no repeated index
    n_docs = sum(s.n_docs for s in shards)
    term_idf = idf(df, n_docs, config)
    return [term_idf[ids] for ids in maps]


class GlobalStatsIndex(BM25Index):
    """A shard's BM25 index that scores with the whole collection's idf and average length (read-only)."""

    def __init__(self, tf: sp.csr_matrix, vocab: dict[str, int], config: BM25Config, term_idf: np.ndarray,
                 avgdl: float) -> None:
        super().__init__(tf, vocab, config)
        if len(term_idf) != len(vocab):
            raise ValueError(f"got {len(term_idf)} idf values for a vocabulary of {len(vocab)} terms")
        self.term_idf = np.asarray(term_idf, dtype=np.float64)
        self.avgdl = float(avgdl)

    @classmethod
    def of(cls, index: BM25Index, term_idf: np.ndarray, avgdl: float) -> "GlobalStatsIndex":
        """``index``'s counts, scored with the given global statistics."""
        return cls(index.tf, index.vocab, index.config, term_idf, avgdl)

    def collection_stats(self) -> tuple[np.ndarray, float]:
        """(idf per term, average length) of the whole collection, not of this shard."""
        return self.term_idf, self.avgdl

    def add(self, token_lists: Sequence[Sequence[str]]) -> None:
        raise ValueError("a shard of a sharded index is read-only: its idf is the whole collection's; rebuild "
                         "the sharded index to add documents")

    def remove(self, rows: Sequence[int]) -> None:
        raise ValueError("a shard of a sharded index is read-only; rebuild the sharded index to remove documents")
