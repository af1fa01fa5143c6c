"""The query-likelihood LLM reranker: score = log P(query | passage, instruction), read in one forward pass.

UPR (Sachan et al., "Improving Passage Retrieval with Zero-Shot Question Generation", 2022) and Zhuang et al.
("Open-source Large Language Models are Strong Zero-shot Query Likelihood Models for Document Ranking",
2023): the model reads the passage and an instruction to write a question, and the score is how likely the
actual query is as that question, token by token (teacher forcing). Nothing is generated, so the answer
format a small model may not follow never matters, and every passage is one forward pass.

Usage::

    from retrieval import load_reranker
    reranker = load_reranker("llm-ql:smollm2", backend="llama-cpp", depth=20, interpolate=0.5)

Demonstrations (``examples=``, a JSONL file of ``{"passage": ..., "query": ...}`` lines or a list of pairs) put
a few passage -> query pairs before every prompt, as PaRaDe (Drozdov et al., 2023) does; with the llama.cpp
backend their tokens are computed once per query and kept in the KV cache.

Backends: both local ones, and HTTP servers whose ``/completions`` echo the prompt with log-probs
(``echo=True, logprobs=1``: vLLM, llama-cpp-python's server); chat endpoints do not echo.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.data import check_text, iter_jsonl
from retrieval.errors import DataError
from retrieval.rerank.llm.backends import LLMBackend
from retrieval.rerank.base import checked_input
from retrieval.rerank.llm.base import _LLMReranker
from retrieval.rerank.llm.prompts import QL_INSTRUCTION, query_likelihood_messages, truncate_words
from retrieval.types import Hit

REDUCTIONS = ("mean", "sum")
Examples = str | Path | Sequence[tuple[str, str] | Mapping[str, str]]


def _example(item: Any, where: str) -> tuple[str, str]:
    """One demonstration as (passage, query), both non-empty text; ``where`` names it in errors."""
    if isinstance(item, Mapping):
        missing = [f for f in ("passage", "query") if f not in item]
        if missing:
            raise DataError(f"{where}: missing field {missing[0]!r} (a demonstration needs 'passage' and 'query')")
        pair = (item["passage"], item["query"])
    elif isinstance(item, (tuple, list)) and len(item) == 2:
        pair = (item[0], item[1])
    else:
        raise DataError(f"{where}: expected a (passage, query) pair or an object with 'passage' and 'query', "
                        f"got {type(item).__name__}")
    for field, value in zip(("passage", "query"), pair):
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{where}, field {field!r}: expected non-empty text, got {value!r:.60}")
        check_text(value, where, field)
    return pair[0].strip(), pair[1].strip()


def read_examples(examples: Examples) -> list[tuple[str, str]]:
    """Demonstrations from a JSONL file (one ``{"passage", "query"}`` object a line) or a list of pairs/objects."""
    if isinstance(examples, (str, Path)):
        path = Path(examples)
        if not path.is_file():
            raise DataError(f"{path}: no such demonstrations file (JSONL of {{'passage': ..., 'query': ...}})")
        return [_example(obj, f"{path}, line {n}") for n, obj in iter_jsonl(path)]
    if isinstance(examples, Mapping) or not isinstance(examples, Sequence):
        raise DataError(f"examples: expected a JSONL path or a list of (passage, query) pairs, "
                        f"got {type(examples).__name__}")
    return [_example(item, f"examples[{i}]") for i, item in enumerate(examples)]


class QueryLikelihoodStats:
    """Summed over every passage scored so far: query tokens and their log-probs (the mean over finite ones;
    a backend that returns NaN or infinite log-probs shows up in ``nonfinite``)."""

    def __init__(self) -> None:
        self.passages = 0
        self.tokens = 0
        self.nonfinite = 0
        self.logprob_sum = 0.0

    def add(self, rows: Sequence[np.ndarray]) -> None:
        self.passages += len(rows)
        for row in rows:
            finite = np.isfinite(row)
            self.tokens += len(row)
            self.nonfinite += int((~finite).sum())
            self.logprob_sum += float(row[finite].sum())

    def to_dict(self) -> dict[str, Any]:
        return {"passages": self.passages,
                "mean_query_tokens": self.tokens / self.passages if self.passages else None,
                "mean_token_logprob": (self.logprob_sum / (self.tokens - self.nonfinite)
                                       if self.tokens > self.nonfinite else None),
                "nonfinite": self.nonfinite}

    def state(self) -> dict[str, Any]:
        """The raw counters as JSON, so counts from separate processes (benchmark shards) can be summed."""
        return {"kind": "query-likelihood", "passages": self.passages, "tokens": self.tokens,
                "nonfinite": self.nonfinite, "logprob_sum": self.logprob_sum}

    def merge(self, state: dict[str, Any]) -> None:
        """Add another instance's ``state()``."""
        if state.get("kind") != "query-likelihood":
            raise ValueError(f"cannot add reply counts of {state.get('kind')} to query-likelihood")
        self.passages += state["passages"]
        self.tokens += state["tokens"]
        self.nonfinite += state["nonfinite"]
        self.logprob_sum += state["logprob_sum"]

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> QueryLikelihoodStats:
        stats = cls()
        stats.merge(state)
        return stats


class QueryLikelihoodReranker(_LLMReranker):
    """Score = mean (``reduce="mean"``) or sum of log P(query token | passage, instruction, earlier query tokens).

    For one query every passage scores the same tokens, so the two reductions rank alike; they differ
    only in scale (which ``interpolate`` min-max normalises away). ``sum`` is the full log-likelihood.
    """

    scores_each_passage = True   # a passage's score does not depend on the others

    def __init__(self, backend: LLMBackend, reduce: str = "mean", depth: int | None = None,
                 max_passage_words: int | None = 100, show_progress: bool = False,
                 interpolate: float | None = None, instruction: str = QL_INSTRUCTION,
                 examples: Examples | None = None) -> None:
        if reduce not in REDUCTIONS:
            raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
        if not callable(getattr(backend, "continuation_logprobs", None)):
            raise ValueError(f"{type(backend).__name__} cannot score a continuation (no continuation_logprobs)")
        super().__init__(backend, depth=depth, max_passage_words=max_passage_words, show_progress=show_progress,
                         interpolate=interpolate)
        query_likelihood_messages("", instruction)      # an empty instruction fails here, not at the first query
        self.reduce = reduce
        self.instruction = instruction
        pairs = read_examples(examples) if examples is not None else []
        # demonstration passages are cut like the scored ones, so a shot costs what a scored passage does
        self.examples = [(truncate_words(p, max_passage_words), q) for p, q in pairs]
        self.examples_from = str(examples) if isinstance(examples, (str, Path)) else None   # for benchmark records
        self.n_examples = len(self.examples)
        self.stats = QueryLikelihoodStats()

    def score(self, query: str, hits: Sequence[Hit]) -> np.ndarray:
        """One score per hit: the reduced log-likelihood of ``query`` (0.0 for an empty query)."""
        if not hits:
            return np.zeros(0)
        prompts = [query_likelihood_messages(self._passage(h), self.instruction, self.examples) for h in hits]
        rows = [np.asarray(r, dtype=np.float64) for r in
                self.backend.continuation_logprobs(prompts, [query.strip()] * len(hits))]
        if len(rows) != len(hits):
            raise ValueError(f"the backend returned {len(rows)} log-prob rows for {len(hits)} passages")
        self.stats.add(rows)
        reduce = np.mean if self.reduce == "mean" else np.sum
        return np.array([float(reduce(r)) if len(r) else 0.0 for r in rows])

    def rerank(self, query: str, hits: list[Hit]) -> list[Hit]:
        hits = checked_input(query, hits)
        return self._apply(hits, self.score(query, self._head(hits)))
