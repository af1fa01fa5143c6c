"""Pointwise LLM rerankers: yes/no relevance (P("Yes")) and 0-5 rating (expected grade), from next-token probabilities.

Usage::

    from retrieval import load_reranker
    reranker = load_reranker("llm-yesno:smollm2", depth=20)
"""
from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from retrieval.rerank.llm.backends import LLMBackend, load_backend
from retrieval.rerank.llm.prompts import (RATING_CHOICES, YES_NO_CHOICES, Messages, complete_permutation, listwise_messages,
                      named_indices, rating_messages, sliding_windows, truncate_words, yes_no_messages)
from retrieval.rerank.base import apply_scores, passage_text
from retrieval.types import Hit

logger = logging.getLogger(__name__)
from retrieval.rerank.llm.base import _LLMReranker, _softmax


class _PointwiseReranker(_LLMReranker):
    """Scores each passage on its own from the next-token probabilities of a fixed set of answers.

    Subclasses set ``choices`` (the answers), ``build_messages(query, passage)`` (the prompt) and
    ``from_probabilities(probs [n, n_choices]) -> scores [n]``.
    """

    choices: tuple[str, ...]
    build_messages: Callable[[str, str], Messages]
    from_probabilities: Callable[[np.ndarray], np.ndarray]

    def score(self, query: str, hits: Sequence[Hit]) -> np.ndarray:
        """One score per hit, higher is more relevant."""
        if not hits:
            return np.zeros(0)
        prompts = [self.build_messages(query, self._passage(h)) for h in hits]
        logprobs = self.backend.choice_logprobs(prompts, self.choices)
        return self.from_probabilities(_softmax(np.asarray(logprobs, dtype=np.float64)))

    def rerank(self, query: str, hits: list[Hit]) -> list[Hit]:
        return apply_scores(hits, self.score(query, self._head(hits)))


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
