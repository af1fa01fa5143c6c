"""Pointwise LLM rerankers: yes/no relevance (P("Yes")) and 0-5 rating (expected grade), from next-token probabilities.

Usage::

    from retrieval import load_reranker
    reranker = load_reranker("llm-yesno:smollm2", depth=20)
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from retrieval.rerank.base import checked_input
from retrieval.rerank.llm.backends import LLMBackend
from retrieval.rerank.llm.base import _LLMReranker, _softmax
from retrieval.rerank.llm.prompts import (RATING_CHOICES, YES_NO_CHOICES, Messages, rating_messages, yes_no_messages)
from retrieval.types import Hit

logger = logging.getLogger(__name__)


class _PointwiseReranker(_LLMReranker):
    """Scores each passage on its own from the next-token probabilities of a fixed set of answers.

    Subclasses set ``choices`` (the answers), ``build_messages(query, passage)`` (the prompt) and
    ``from_probabilities(probs [n, n_choices]) -> scores [n]``.
    """

    scores_each_passage = True   # a passage's score does not depend on the others (see benchmarks/rerank.py)
    choices: tuple[str, ...]
    build_messages: Callable[[str, str], Messages]
    from_probabilities: Callable[[np.ndarray], np.ndarray]

    def __init__(self, backend: LLMBackend, depth: int | None = None, max_passage_words: int | None = 100,
                 show_progress: bool = False, interpolate: float | None = None) -> None:
        super().__init__(backend, depth=depth, max_passage_words=max_passage_words, show_progress=show_progress,
                         interpolate=interpolate)
        self.stats = PointwiseStats(self.choices)

    def score(self, query: str, hits: Sequence[Hit]) -> np.ndarray:
        """One score per hit, higher is more relevant."""
        if not hits:
            return np.zeros(0)
        prompts = [self.build_messages(query, self._passage(h)) for h in hits]
        logprobs = np.asarray(self.backend.choice_logprobs(prompts, self.choices), dtype=np.float64)
        self.stats.add(logprobs)
        return self.from_probabilities(_softmax(logprobs))

    def rerank(self, query: str, hits: list[Hit]) -> list[Hit]:
        hits = checked_input(query, hits)
        return self._apply(hits, self.score(query, self._head(hits)))


class PointwiseStats:
    """How the model answered, summed over every passage scored so far: how much of its next-token probability
    went to the answer tokens at all (a model that does not follow the format puts little there), and which
    answer it preferred."""

    def __init__(self, choices: Sequence[str]) -> None:
        self.choices = tuple(choices)
        self.passages = 0
        self.choice_mass_sum = 0.0
        self.preferred = dict.fromkeys(self.choices, 0)

    def add(self, logprobs: np.ndarray) -> None:
        clean = np.where(np.isnan(logprobs), -np.inf, np.minimum(logprobs, 0.0))
        self.passages += len(clean)
        self.choice_mass_sum += float(np.exp(clean).sum(axis=1).clip(max=1.0).sum())
        for j in clean.argmax(axis=1) if len(clean) else []:
            self.preferred[self.choices[int(j)]] += 1

    def to_dict(self) -> dict[str, Any]:
        return {"passages": self.passages, "preferred": dict(self.preferred),
                "mean_choice_mass": self.choice_mass_sum / self.passages if self.passages else None}

    def state(self) -> dict[str, Any]:
        """The raw counters as JSON, so counts from separate processes (benchmark shards) can be summed."""
        return {"kind": "pointwise", "choices": list(self.choices), "passages": self.passages,
                "choice_mass_sum": self.choice_mass_sum, "preferred": dict(self.preferred)}

    def merge(self, state: dict[str, Any]) -> None:
        """Add another instance's ``state()``; the choices must be the same."""
        if state.get("kind") != "pointwise" or tuple(state["choices"]) != self.choices:
            raise ValueError(f"cannot add reply counts of {state.get('kind')} {state.get('choices')} to "
                             f"pointwise {list(self.choices)}")
        self.passages += state["passages"]
        self.choice_mass_sum += state["choice_mass_sum"]
        for choice, n in state["preferred"].items():
            self.preferred[choice] += n

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> PointwiseStats:
        stats = cls(state["choices"])
        stats.merge(state)
        return stats


def _yes_probability(probs: np.ndarray) -> np.ndarray:
    return probs[:, 0]


def _expected_grade(probs: np.ndarray) -> np.ndarray:
    return probs @ np.arange(probs.shape[1], dtype=np.float64)  # [n, 6] @ [6] -> [n]


class YesNoReranker(_PointwiseReranker):
    """Score = P("Yes") / (P("Yes") + P("No")) for "Does the passage answer the query?"."""

    choices = YES_NO_CHOICES
    build_messages = staticmethod(yes_no_messages)
    from_probabilities = staticmethod(_yes_probability)


class RatingReranker(_PointwiseReranker):
    """Score = expected grade sum_g g * P(g) over the digits 0-5 (renormalised over those six tokens)."""

    choices = RATING_CHOICES
    build_messages = staticmethod(rating_messages)
    from_probabilities = staticmethod(_expected_grade)
