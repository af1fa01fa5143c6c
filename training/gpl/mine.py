"""GPL's second stage: hard negatives for each generated query from BM25, the base embedder, or both.

Each generated query's own document is its one judged positive, so :func:`training.negatives.negative_ids`
never returns it as a negative. Negatives are drawn from the whole corpus (not only the documents that got
queries), ``num_negatives`` per query, sampled from the first stage's top ``depth``.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from retrieval.types import Document

from training.gpl.filter import GeneratedQuery
from training.negatives import negative_ids

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MinedQuery:
    """A generated query with the ids of its positive (the source document) and of its mined negatives."""

    qid: str
    positive: str
    negatives: tuple[str, ...]


def mine_negatives(corpus: Sequence[Document], queries: Sequence[GeneratedQuery], num_negatives: int, depth: int,
                   seed: int, first_stage: str = "bm25", model: str | None = None,
                   show_progress: bool = True) -> list[MinedQuery]:
    """``num_negatives`` negative ids per query from ``first_stage``'s top ``depth``, the source document excluded."""
    texts = {q.qid: q.text for q in queries}
    qrels = {q.qid: {q.doc: 1} for q in queries}
    rows = negative_ids(list(corpus), texts, qrels, num_negatives, depth, seed, show_progress=show_progress,
                        first_stage=first_stage, model=model)
    return [MinedQuery(qid, pos, negs) for qid, pos, negs in rows]
