"""The exact top-k merge of per-shard results, with ties resolved as the single index resolves them.

Shard rows are mapped to global rows (shard offset + local row) before merging, and each shard returns its own
top ``k``, so the union holds the global top ``k``. Ties follow the single index's own rule:

- BM25 (``top_k_rows``): score descending, then row ascending.
- FAISS flat (dense): equal scores are listed by id **descending** (its heap's final order).

At a tie on the cut itself (the k-th and (k+1)-th scores equal) the merge keeps the lowest rows. BM25 does too
up to ``argpartition``; FAISS keeps whichever of the tied vectors its heap happened to hold, a choice that depends
on every vector scanned and cannot be reproduced from the shards' lists (nor is one choice more correct than
another). Exact duplicates are the only way to get such ties with a real model.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ShardHits:
    """One query's results from one shard (or merged): global rows, scores and document ids, best first."""

    rows: np.ndarray      # (n,) int64 global rows
    scores: np.ndarray    # (n,) float32
    ids: list[str]

    def __len__(self) -> int:
        return len(self.rows)


EMPTY = ShardHits(np.zeros(0, np.int64), np.zeros(0, np.float32), [])


TIES = ("ascending", "descending")   # how equal scores are listed: by row ascending (BM25) or descending (FAISS)


def merge_top_k(parts: Sequence[ShardHits], k: int, ties: str = "ascending") -> ShardHits:
    """The ``k`` best of several shards' results for one query: score descending, equal scores by row ``ties``."""
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    parts = [p for p in parts if len(p)]
    if not parts:
        return EMPTY
    if len(parts) == 1 and len(parts[0]) <= k:
        return parts[0]
    rows = np.concatenate([p.rows for p in parts])
    scores = np.concatenate([p.scores for p in parts])
    order = np.lexsort((rows, -scores))[:k]              # the k best; at a tie on the cut, the lowest rows
    if ties == "descending":
        order = order[np.lexsort((-rows[order], -scores[order]))]
    ids = [i for p in parts for i in p.ids]
    return ShardHits(rows[order], scores[order], [ids[j] for j in order.tolist()])


def merge_batches(per_shard: Sequence[Sequence[ShardHits]], k: int, ties: str = "ascending") -> list[ShardHits]:
    """Merge per query: ``per_shard[s][q]`` is shard ``s``'s result for query ``q``."""
    n_queries = len(per_shard[0]) if per_shard else 0
    if any(len(results) != n_queries for results in per_shard):
        raise ValueError("every shard must answer every query")
    return [merge_top_k([results[q] for results in per_shard], k, ties) for q in range(n_queries)]
