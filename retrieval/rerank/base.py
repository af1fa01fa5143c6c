"""What every reranker shares: the passage text of a hit, applying new scores as a permutation, interpolation.

Every reranker returns a permutation of its input: same hits, each once, best first, with ``score``
set to its own score and the first stage's score kept in ``hit.extra["first_stage_score"]``.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from retrieval.types import Hit, typed_list


def passage_text(hit: Hit) -> str:
    """Title and text joined by one space, as the first stage indexed them."""
    if hit.title and hit.text:
        return f"{hit.title} {hit.text}"
    return hit.title or hit.text


def checked_input(query: object, hits: object) -> list[Hit]:
    """What every ``rerank(query, hits)`` takes: a query string and hits (any iterable, read once). A wrong type is
    a TypeError naming it here, not an AttributeError from inside a prompt or a model (or "None" in a prompt)."""
    if not isinstance(query, str):
        raise TypeError(f"rerank takes a query string, got {type(query).__name__}: {query!r:.60}")
    return typed_list(hits, Hit, "rerank", "hit")


def apply_scores(hits: Sequence[Hit], scores: Sequence[float]) -> list[Hit]:
    """Reorder ``hits`` by ``scores`` (given for the first ``len(scores)`` hits), best first, ties stable.

    Hits beyond ``len(scores)`` (not reranked) follow in first-stage order with scores strictly below
    every reranked score. Returns new ``Hit`` objects; the old score goes to ``extra["first_stage_score"]``.
    """
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(values) > len(hits):
        raise ValueError(f"got {len(values)} scores for {len(hits)} hits")
    values = np.where(np.isnan(values), -np.inf, values)
    order = sorted(range(len(values)), key=lambda i: -values[i])  # sorted() is stable: ties keep input order
    lowest = float(values.min()) if len(values) else 0.0
    if lowest == np.inf:
        lowest = 0.0
    ranked = [(hits[i], float(values[i]), True) for i in order]
    ranked += [(h, lowest - 1.0 - j, False) for j, h in enumerate(hits[len(values):])]  # -inf stays -inf
    out = []
    for rank, (hit, score, reranked) in enumerate(ranked, start=1):
        extra = {**hit.extra, "reranked": reranked}
        extra.setdefault("first_stage_score", hit.score)
        out.append(hit.replace(score=score, rank=rank, extra=extra))
    return out


def checked_count(name: str, value: object, minimum: int = 1, optional: bool = False) -> int | None:
    """``value`` as an int >= ``minimum`` (or None, "no limit", with ``optional``); else ValueError naming it."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        bound = f"an integer >= {minimum}" + (" or None" if optional else "")
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    return int(value)


def checked_flag(name: str, value: object) -> bool:
    """``value`` as a bool; a string such as ``"yes"`` is refused rather than read as true."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return bool(value)


def checked_weight(weight: object) -> float:
    """An interpolation weight as a float in [0, 1]; anything else (a string, a bool, NaN) is a clear ValueError."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float, np.integer, np.floating)) \
            or not 0.0 <= float(weight) <= 1.0:
        raise ValueError(f"interpolate weight must be a number in [0, 1], got {weight!r}")
    return float(weight)


def interpolate_scores(scores: Sequence[float], first: Sequence[float], weight: float) -> np.ndarray:
    """``weight * minmax(scores) + (1 - weight) * minmax(first)`` over one query's candidates (a constant list
    normalises to zeros, so it adds nothing)."""
    weight = checked_weight(weight)

    def minmax(values: np.ndarray) -> np.ndarray:  # unlike fusion.minmax, a constant list adds nothing (zeros)
        span = float(values.max() - values.min()) if len(values) else 0.0
        return (values - values.min()) / span if span > 0 else np.zeros_like(values)

    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    base = np.asarray(first, dtype=np.float64).reshape(-1)
    if len(values) != len(base):
        raise ValueError(f"got {len(values)} scores for {len(base)} hits")
    return weight * minmax(values) + (1.0 - weight) * minmax(base)


def interpolate_first_stage(scores: Sequence[float], hits: Sequence[Hit], weight: float) -> np.ndarray:
    """``weight * minmax(scores) + (1 - weight) * minmax(first-stage scores)`` over one query's hits.

    Score interpolation with the first stage (as in Pyserini's and BEIR's rerank studies) keeps what
    BM25 knows when a reranker was trained on few in-domain labels. Min-max is taken per query; a
    constant score list normalises to zeros.
    """
    return interpolate_scores(scores, [h.extra.get("first_stage_score", h.score) for h in hits], weight)
