"""GPL's third stage: a cross-encoder teacher scores (query, positive) and (query, negative); margin = the difference.

The teacher is any ``cross-encoder:`` spec :func:`retrieval.rerank.registry.load_reranker` accepts (a hub name
such as cross-encoder/ms-marco-MiniLM-L-6-v2, the paper's teacher, or ``OUT/model`` of ``retrieval train
cross-encoder``); its raw logits are the scores. Pseudo-labels are ``CE(q, pos) - CE(q, neg)`` per negative.

With a weight W (:func:`fused_label_queries`) the teacher is instead the reranking pipeline a cross-encoder
trained on few in-domain labels is used in: BM25's top-N reranked with ``interpolate=W``. Its scores are the
fused ``W * minmax(CE) + (1 - W) * minmax(BM25)`` over that list, which is what ranks well when the
cross-encoder alone ranks below the student.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from retrieval.rerank.base import interpolate_scores

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueryScores:
    """The teacher's score of a query's positive and of each of its negatives (in mining order), and where the
    teacher ranks the positive among all it scored for the query (1 = first; None in caches made before)."""

    qid: str
    positive: float
    negatives: tuple[float, ...]
    positive_rank: int | None = None

    def margins(self) -> list[float]:
        """``CE(q, pos) - CE(q, neg)`` for each negative: the MarginMSE targets."""
        return [self.positive - n for n in self.negatives]


def load_teacher(spec: str, batch_size: int = 32, max_length: int = 256, device: str = "cpu") -> Any:
    """The cross-encoder reranker a ``cross-encoder:`` spec names (other reranker kinds are refused)."""
    from retrieval.rerank.cross_encoder import CrossEncoderReranker
    from retrieval.rerank.registry import load_reranker

    if spec.partition(":")[0] != "cross-encoder":
        raise ValueError(f"the GPL teacher must be a cross-encoder:MODEL spec, got {spec!r}")
    reranker = load_reranker(spec, batch_size=batch_size, max_length=max_length, device=device)
    if not isinstance(reranker, CrossEncoderReranker):
        raise ValueError(f"{spec!r} did not load a cross-encoder")
    return reranker


def score_pairs(teacher: Any, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
    """Raw teacher logits for (query, passage) pairs, ``[len(pairs)]``."""
    import torch

    if not pairs:
        return np.zeros(0, dtype=np.float32)
    scores = teacher.model.predict(list(pairs), batch_size=teacher.batch_size, activation_fn=torch.nn.Identity(),
                                   show_progress_bar=False)
    return np.asarray(scores, dtype=np.float32).reshape(-1)


def label_queries(teacher: Any, rows: Sequence[tuple[str, str, str, Sequence[str]]]) -> list[QueryScores]:
    """Scores for ``(qid, query, positive text, negative texts)`` rows, all pairs sent to the teacher together."""
    pairs = [(q, p) for _, q, pos, negs in rows for p in (pos, *negs)]
    scores = score_pairs(teacher, pairs).tolist()
    out, i = [], 0
    for qid, _, _, negs in rows:
        positive, negatives = float(scores[i]), tuple(float(s) for s in scores[i + 1:i + 1 + len(negs)])
        out.append(QueryScores(qid, positive, negatives, rank_of(positive, negatives)))
        i += 1 + len(negs)
    return out


def rank_of(score: float, others: Sequence[float]) -> int:
    """1 + how many of ``others`` score strictly higher (ties go to ``score``)."""
    return 1 + sum(o > score for o in others)


def fused_label_queries(teacher: Any, bm25: Any, texts: Sequence[str],
                        rows: Sequence[tuple[str, str, int, Sequence[int]]], depth: int,
                        weight: float) -> list[QueryScores]:
    """Fused scores for ``(qid, query, positive row, negative rows)`` rows (rows of ``texts`` and of ``bm25``, a
    :class:`~retrieval.sparse.searcher.BM25Searcher` over the same documents).

    Per query the candidates are BM25's top ``depth`` plus the positive and negatives wherever BM25 ranks them;
    the cross-encoder scores every candidate, and both lists are min-max fused over the candidates with
    :func:`~retrieval.rerank.base.interpolate_scores`, as ``load_reranker(..., interpolate=weight)`` fuses them.
    """
    tops = bm25.search([query for _, query, _, _ in rows], depth)
    pairs: list[tuple[str, str]] = []
    candidates: list[tuple[list[int], list[float]]] = []
    for (_, query, pos, negs), (top_rows, top_scores) in zip(rows, tops):
        first = dict(zip(top_rows.tolist(), top_scores.tolist()))
        missing = [r for r in dict.fromkeys((pos, *negs)) if r not in first]
        if missing:
            first.update(zip(missing, np.asarray(bm25.score_rows(query, missing), dtype=np.float64).tolist()))
        ids = list(first)
        candidates.append((ids, [first[r] for r in ids]))
        pairs += [(query, texts[r]) for r in ids]
    scores = score_pairs(teacher, pairs).tolist()
    out, i = [], 0
    for (qid, _, pos, negs), (ids, first_scores) in zip(rows, candidates):
        fused = dict(zip(ids, interpolate_scores(scores[i:i + len(ids)], first_scores, weight).tolist()))
        i += len(ids)
        rank = rank_of(fused[pos], [s for r, s in fused.items() if r != pos])
        out.append(QueryScores(qid, fused[pos], tuple(fused[r] for r in negs), rank))
    return out
