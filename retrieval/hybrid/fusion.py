"""Rank fusion of first-stage results: reciprocal-rank fusion and min-max normalised linear fusion.

Each input is one query's ``(rows, scores)`` from one first stage, best first. A document missing
from a list contributes nothing to RRF and a normalised score of 0 to linear fusion (as Pyserini
and txtai do). Ties in the fused score break by row, so results are deterministic.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from retrieval.protocols import RowHits

FUSIONS = ("rrf", "linear")


def _weights(n: int, weights: Sequence[float] | None) -> np.ndarray:
    if weights is None:
        return np.ones(n, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"got {len(w)} weights for {n} rankings")
    if np.any(w < 0):
        raise ValueError(f"fusion weights must be >= 0, got {w.tolist()}")
    return w


def _accumulate(rankings: Sequence[RowHits], contributions: list[np.ndarray], k: int) -> RowHits:
    """Sum per-list contributions by row and keep the ``k`` best (ties: lower row first)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    all_rows = np.concatenate([np.asarray(r, dtype=np.int64) for r, _ in rankings] or [np.zeros(0, np.int64)])
    if all_rows.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    all_vals = np.concatenate(contributions)
    rows, inverse = np.unique(all_rows, return_inverse=True)
    fused = np.zeros(len(rows), dtype=np.float64)
    np.add.at(fused, inverse, all_vals)
    order = np.lexsort((rows, -fused))[:k]
    return rows[order], fused[order].astype(np.float32)


def rrf(rankings: Sequence[RowHits], k: int, rrf_k: float = 60.0, weights: Sequence[float] | None = None) -> RowHits:
    """Reciprocal-rank fusion (Cormack et al., 2009): ``score(d) = sum_i w_i / (rrf_k + rank_i(d))``, ranks from 1."""
    if rrf_k < 0:
        raise ValueError(f"rrf_k must be >= 0, got {rrf_k}")
    w = _weights(len(rankings), weights)
    contributions = [w[i] / (rrf_k + np.arange(1, len(rows) + 1, dtype=np.float64))
                     for i, (rows, _) in enumerate(rankings)]
    return _accumulate(rankings, contributions, k)


def minmax(scores: np.ndarray) -> np.ndarray:
    """Scale scores to [0, 1] over the list; a list of equal scores maps to all ones."""
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        return s
    lo, hi = s.min(), s.max()
    if hi - lo <= 0:
        return np.ones_like(s)
    return (s - lo) / (hi - lo)


def linear(rankings: Sequence[RowHits], k: int, weights: Sequence[float] | None = None) -> RowHits:
    """Normalised linear fusion: ``score(d) = sum_i w_i * minmax_i(d)``, 0 where list i lacks d."""
    w = _weights(len(rankings), weights)
    contributions = [w[i] * minmax(scores) for i, (_, scores) in enumerate(rankings)]
    return _accumulate(rankings, contributions, k)


def fuse(rankings: Sequence[RowHits], k: int, method: str = "rrf", weights: Sequence[float] | None = None,
         rrf_k: float = 60.0) -> RowHits:
    """Fuse one query's rankings by ``method`` ("rrf" or "linear")."""
    if method == "rrf":
        return rrf(rankings, k, rrf_k=rrf_k, weights=weights)
    if method == "linear":
        return linear(rankings, k, weights=weights)
    raise ValueError(f"unknown fusion {method!r}; choose one of {FUSIONS}")
