"""The listwise LLM reranker: RankGPT sliding windows over a permutation, replies parsed and repaired.

Usage::

    from retrieval import load_reranker
    reranker = load_reranker("llm-listwise:http://127.0.0.1:8080/v1#qwen2.5-7b", window=20, step=10)
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from tqdm.auto import tqdm

from retrieval.rerank.base import checked_count, checked_input
from retrieval.rerank.llm.backends import LLMBackend
from retrieval.rerank.llm.base import _LLMReranker
from retrieval.rerank.llm.prompts import (complete_permutation, listwise_messages,
                      named_indices, sliding_windows)
from retrieval.types import Hit

logger = logging.getLogger(__name__)


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

    def state(self) -> dict[str, Any]:
        """The raw counters as JSON, so counts from separate processes (benchmark shards) can be summed."""
        return {"kind": "listwise", **asdict(self)}

    def merge(self, state: dict[str, Any]) -> None:
        """Add another instance's ``state()``."""
        if state.get("kind") != "listwise":
            raise ValueError(f"cannot add reply counts of {state.get('kind')} to listwise")
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + state[f.name])

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ListwiseStats:
        stats = cls()
        stats.merge(state)
        return stats


class ListwiseReranker(_LLMReranker):
    """RankGPT: windows of ``window`` passages, moved up by ``step`` from the bottom; each reply reorders its window.

    Unparsed or missing ids keep their previous relative order, so a useless reply changes nothing.
    Scores are ``n - position`` of the final order (monotone; listwise rankers produce no calibrated score).
    """

    scores_each_passage = False   # a window's order depends on every passage in it

    def __init__(self, backend: LLMBackend, window: int = 20, step: int = 10, max_tokens: int | None = None,
                 depth: int | None = None, max_passage_words: int | None = 60, show_progress: bool = False,
                 interpolate: float | None = None) -> None:
        super().__init__(backend, depth=depth, max_passage_words=max_passage_words, show_progress=show_progress,
                         interpolate=interpolate)
        sliding_windows(1, window, step)  # validates window and step now, not at the first query
        self.window = window
        self.step = step
        self.max_tokens = checked_count("max_tokens", max_tokens, optional=True)
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
        hits = checked_input(query, hits)
        head = self._head(hits)
        order = self.order(query, head)
        reordered = [head[i] for i in order] + hits[len(head):]
        scores = [float(len(head) - position) for position in range(len(head))]
        return self._apply(reordered, scores)
