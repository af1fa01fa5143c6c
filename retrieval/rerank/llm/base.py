"""What the LLM rerankers share: a backend, a rerank depth, passage truncation, and choice probabilities."""
from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from retrieval.models import DEFAULT_LLM
from retrieval.rerank.llm.backends import LLMBackend, backend_options, load_backend
from retrieval.rerank.llm.prompts import truncate_words
from retrieval.rerank.base import (apply_scores, checked_count, checked_flag, checked_weight,
                                   interpolate_first_stage, passage_text)
from retrieval.types import Hit

logger = logging.getLogger(__name__)


def _softmax(logprobs: np.ndarray) -> np.ndarray:
    """Row-wise softmax over the choices only (renormalises the choice probabilities to sum to 1)."""
    logprobs = np.where(np.isnan(logprobs), -np.inf, np.minimum(logprobs, 0.0))  # a log-prob is <= 0
    with np.errstate(invalid="ignore"):
        shifted = logprobs - logprobs.max(axis=1, keepdims=True)  # all -inf rows become nan: uniform below
    exp = np.exp(np.where(np.isnan(shifted), -np.inf, shifted))
    total = exp.sum(axis=1, keepdims=True)
    return np.divide(exp, total, out=np.full_like(exp, 1.0 / exp.shape[1]), where=total > 0)


class _NotLoaded:
    """A stand-in backend for checking a reranker's options before its model loads; every call fails."""

    def __getattr__(self, name: str) -> Any:
        def not_loaded(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError(f"{name}: the model is not loaded (this backend only checks options)")
        return not_loaded


class _LLMReranker:
    """Shared construction: a backend, a rerank depth, and passage truncation."""

    def __init__(self, backend: LLMBackend, depth: int | None = None, max_passage_words: int | None = 100,
                 show_progress: bool = False, interpolate: float | None = None) -> None:
        self.backend = backend
        self.depth = checked_count("depth", depth, optional=True)
        self.max_passage_words = checked_count("max_passage_words", max_passage_words, optional=True)
        self.show_progress = checked_flag("show_progress", show_progress)
        self.interpolate = None if interpolate is None else checked_weight(interpolate)

    @classmethod
    def from_spec(cls, model: str | None, **options: Any) -> "_LLMReranker":
        """Split ``options`` between this reranker and :func:`~retrieval.rerank.llm.backends.load_backend`, then
        build both."""
        own = set(inspect.signature(cls.__init__).parameters) - {"self", "backend"}
        mine = {k: v for k, v in options.items() if k in own}
        rest = {k: v for k, v in options.items() if k not in own}
        kind, known = backend_options(model or DEFAULT_LLM, rest.get("backend", "transformers"))
        unknown = sorted(set(rest) - known - {"backend"})
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for {cls.__name__} on the {kind} LLM backend; the "
                             f"reranker takes {sorted(own)}, the backend {sorted(known)}")
        if "show_progress" in mine:
            rest["show_progress"] = mine["show_progress"]
        cls(_NotLoaded(), **mine)    # this reranker's own options fail now, before a model load of seconds
        return cls(load_backend(model or DEFAULT_LLM, **rest), **mine)

    def _passage(self, hit: Hit) -> str:
        return truncate_words(passage_text(hit), self.max_passage_words)

    def _head(self, hits: list[Hit]) -> list[Hit]:
        return hits if self.depth is None else hits[: self.depth]

    def _apply(self, hits: Sequence[Hit], scores: Sequence[float]) -> list[Hit]:
        """Scores for the first ``len(scores)`` hits -> the reranked permutation; with ``interpolate=W`` the
        score is ``W * minmax(LLM) + (1 - W) * minmax(first stage)``, as for the cross-encoder."""
        if self.interpolate is not None and len(scores):
            values = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
            finite = values[np.isfinite(values)]
            low = float(finite.min()) - 1.0 if len(finite) else 0.0  # -inf (a zero probability) ranks last, not NaN
            values = np.clip(np.where(np.isfinite(values), values, low), low, None)
            scores = interpolate_first_stage(values, hits[: len(values)], self.interpolate)
        return apply_scores(hits, scores)
