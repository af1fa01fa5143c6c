"""LLM rerankers: pointwise yes/no, pointwise 0-5 rating, and RankGPT-style listwise sliding windows.

Each takes an :class:`~retrieval.llm.LLMBackend`, so the same code runs a bundled 135M model on a CPU
or a large model behind an OpenAI-compatible server. Pointwise scores come from next-token
probabilities (no sampling); listwise order comes from parsed permutations, repaired when malformed.

Usage::

    from retrieval.rerank import load_reranker
    reranker = load_reranker("llm-yesno:smollm2", depth=20)
    reranker = load_reranker("llm-listwise:http://127.0.0.1:8080/v1#qwen2.5-7b", window=20, step=10)
"""
from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .llm import LLMBackend, load_backend
from .prompts import (RATING_CHOICES, YES_NO_CHOICES, Messages, complete_permutation, listwise_messages,
                      named_indices, rating_messages, sliding_windows, truncate_words, yes_no_messages)
from .rerank import apply_scores, passage_text
from .types import Hit

logger = logging.getLogger(__name__)


def _softmax(logprobs: np.ndarray) -> np.ndarray:
    """Row-wise softmax over the choices only (renormalises the choice probabilities to sum to 1)."""
    logprobs = np.where(np.isnan(logprobs), -np.inf, np.minimum(logprobs, 0.0))  # a log-prob is <= 0
    with np.errstate(invalid="ignore"):
        shifted = logprobs - logprobs.max(axis=1, keepdims=True)  # all -inf rows become nan: uniform below
    exp = np.exp(np.where(np.isnan(shifted), -np.inf, shifted))
    total = exp.sum(axis=1, keepdims=True)
    return np.divide(exp, total, out=np.full_like(exp, 1.0 / exp.shape[1]), where=total > 0)


class _LLMReranker:
    """Shared construction: a backend, a rerank depth, and passage truncation."""

    def __init__(self, backend: LLMBackend, depth: int | None = None, max_passage_words: int | None = 100,
                 show_progress: bool = False) -> None:
        self.backend = backend
        self.depth = depth
        self.max_passage_words = max_passage_words
        self.show_progress = show_progress

    @classmethod
    def from_spec(cls, model: str | None, **options: Any) -> "_LLMReranker":
        """Split ``options`` between this reranker and :func:`~retrieval.llm.load_backend`, then build both."""
        own = set(inspect.signature(cls.__init__).parameters) - {"self", "backend"}
        mine = {k: v for k, v in options.items() if k in own}
        rest = {k: v for k, v in options.items() if k not in own}
        if "show_progress" in mine:
            rest["show_progress"] = mine["show_progress"]
        return cls(load_backend(model or "smollm2", **rest), **mine)

    def _passage(self, hit: Hit) -> str:
        return truncate_words(passage_text(hit), self.max_passage_words)

    def _head(self, hits: list[Hit]) -> list[Hit]:
        return hits if self.depth is None else hits[: self.depth]


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


@dataclass
class ListwiseStats:
    """How well the model's replies parsed, summed over every window ranked so far (a small model's weak spot)."""

    windows: int = 0
    ids_shown: int = 0
    ids_named: int = 0            # distinct valid ids the replies named; the rest kept their earlier order
    windows_unparsed: int = 0     # replies that named no valid id: the window kept its order
    windows_reordered: int = 0    # replies that changed the window's order

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = asdict(self)
        data["named_fraction"] = self.ids_named / self.ids_shown if self.ids_shown else None
        return data


class ListwiseReranker(_LLMReranker):
    """RankGPT: windows of ``window`` passages, moved up by ``step`` from the bottom; each reply reorders its window.

    Unparsed or missing ids keep their previous relative order, so a useless reply changes nothing.
    Scores are ``n - position`` of the final order (monotone; listwise rankers produce no calibrated score).
    """

    def __init__(self, backend: LLMBackend, window: int = 20, step: int = 10, max_tokens: int | None = None,
                 depth: int | None = None, max_passage_words: int | None = 60, show_progress: bool = False) -> None:
        super().__init__(backend, depth=depth, max_passage_words=max_passage_words, show_progress=show_progress)
        sliding_windows(1, window, step)  # validates window and step now, not at the first query
        self.window = window
        self.step = step
        self.max_tokens = max_tokens
        self.stats = ListwiseStats()

    def order(self, query: str, hits: Sequence[Hit]) -> list[int]:
        """The new order of ``hits`` as indices into it, best first."""
        order = list(range(len(hits)))
        windows = sliding_windows(len(hits), self.window, self.step)
        for start, end in tqdm(windows, desc="Listwise windows", disable=not self.show_progress):
            current = order[start:end]
            prompt = listwise_messages(query, [self._passage(hits[i]) for i in current])
            budget = self.max_tokens or 6 * len(current) + 10  # "[12] > " is about 5 tokens
            reply = self.backend.complete(prompt, budget)
            named = named_indices(reply, len(current))   # parsed once: the order and the reply stats share it
            permutation = complete_permutation(named, len(current))
            logger.debug("window %d-%d reply %r -> %s", start, end, reply[:120], permutation)
            self._count(len(current), len(named), permutation)
            order[start:end] = [current[i] for i in permutation]
        return order

    def _count(self, shown: int, named: int, permutation: list[int]) -> None:
        self.stats.windows += 1
        self.stats.ids_shown += shown
        self.stats.ids_named += named
        self.stats.windows_unparsed += named == 0
        self.stats.windows_reordered += permutation != list(range(shown))

    def rerank(self, query: str, hits: list[Hit]) -> list[Hit]:
        head = self._head(hits)
        order = self.order(query, head)
        reordered = [head[i] for i in order] + hits[len(head):]
        scores = [float(len(head) - position) for position in range(len(head))]
        return apply_scores(reordered, scores)
