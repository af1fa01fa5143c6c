"""Hard negatives for supervised training: for each judged (query, positive), passages a first stage ranks high.

Both the cross-encoder and the supervised bi-encoder train on :class:`TrainingGroup` rows mined here. The
first stage is BM25 (lexical look-alikes), the dense base model itself (its own confusions, the negatives
ANCE and the sentence-transformers recipes mine), or both (the union of the two top-``depth`` lists, taken in
turn). Judged positives of the query are never negatives; a pool too small is filled with random corpus
documents, so every group has the same size.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass

from retrieval.data import load_beir
from retrieval.types import Document, Qrels

logger = logging.getLogger(__name__)

FIRST_STAGES = ("bm25", "dense", "both")


@dataclass(frozen=True)
class TrainingGroup:
    """One judged positive of a query with its mined hard negatives (all of the same length in a run)."""

    query: str
    positive: str
    negatives: tuple[str, ...]

    def pairs(self) -> list[tuple[str, str, float]]:
        """``(query, passage, label)`` rows: the positive (1.0) first, then the negatives (0.0)."""
        return [(self.query, self.positive, 1.0)] + [(self.query, n, 0.0) for n in self.negatives]


def _ranked_ids(corpus: list[Document], texts: list[str], depth: int, first_stage: str, model: str | None,
                show_progress: bool) -> list[list[str]]:
    """Per query text, the ids a first stage ranks in its top ``depth`` (``both``: BM25 and dense in turn)."""
    from retrieval.retriever import Retriever

    lists: list[list[list[str]]] = []
    if first_stage in ("bm25", "both"):
        bm25 = Retriever.from_documents(corpus, method="bm25", show_progress=show_progress)
        lists.append([[h.id for h in hits] for hits in bm25.retrieve_batch(texts, k=depth)])
    if first_stage in ("dense", "both"):
        if model is None:
            raise ValueError("dense hard negatives need the model to mine with")
        dense = Retriever.from_documents(corpus, method="dense", model=model, index="flat", show_progress=show_progress)
        lists.append([[h.id for h in hits] for hits in dense.retrieve_batch(texts, k=depth)])
    if len(lists) == 1:
        return lists[0]
    merged = []
    for a, b in zip(*lists):   # interleave, first mention kept: both stages' best come first
        seen: dict[str, None] = {}
        for pair in zip(a, b):
            seen.update(dict.fromkeys(pair))
        seen.update(dict.fromkeys(a + b))
        merged.append(list(seen))
    return merged


def negative_ids(corpus: list[Document], queries: dict[str, str], qrels: Qrels, num_negatives: int, depth: int,
                 seed: int, show_progress: bool = True, first_stage: str = "bm25",
                 model: str | None = None) -> list[tuple[str, str, tuple[str, ...]]]:
    """``(query id, positive id, negative ids)`` for every judged positive: ``num_negatives`` ids sampled from the
    first stage's top-``depth`` (judged positives never; a short pool is filled with random corpus documents).

    ``first_stage`` is ``bm25``, ``dense`` (``model`` names the embedder to mine with) or ``both``. Queries
    without positives are skipped.
    """
    if first_stage not in FIRST_STAGES:
        raise ValueError(f"first_stage must be one of {FIRST_STAGES}, got {first_stage!r}")
    by_id = {d.id: d for d in corpus}
    all_ids = list(by_id)
    qids = [q for q in queries if any(g > 0 for g in qrels.get(q, {}).values())]
    ranked = _ranked_ids(corpus, [queries[q] for q in qids], depth, first_stage, model, show_progress)
    rng = random.Random(seed)
    rows: list[tuple[str, str, tuple[str, ...]]] = []
    for qid, ids in zip(qids, ranked):
        judged = {d for d, g in qrels[qid].items() if g > 0}
        positives = [d for d in sorted(judged) if d in by_id]
        pool = [d for d in ids if d not in judged]
        for pos in positives:
            chosen = rng.sample(pool, min(num_negatives, len(pool)))
            if len(chosen) < num_negatives:
                chosen += _random_negatives(all_ids, judged | set(chosen), num_negatives - len(chosen), rng)
            rows.append((qid, pos, tuple(chosen)))
    if not rows:
        raise ValueError("no training pairs: no query of the split has a judged positive in the corpus")
    logger.info("mined %d groups of 1 positive + %d %s negatives for %d queries", len(rows), num_negatives,
                first_stage, len(qids))
    return rows


def mine_hard_negatives(corpus: list[Document], queries: dict[str, str], qrels: Qrels, num_negatives: int,
                        depth: int, seed: int, show_progress: bool = True, first_stage: str = "bm25",
                        model: str | None = None) -> list[TrainingGroup]:
    """Group every judged positive with ``num_negatives`` passages sampled from the first stage's top-``depth``
    (the texts of :func:`negative_ids`)."""
    by_id = {d.id: d for d in corpus}
    rows = negative_ids(corpus, queries, qrels, num_negatives, depth, seed, show_progress, first_stage, model)
    return [TrainingGroup(queries[qid], by_id[pos].full_text, tuple(by_id[d].full_text for d in negs))
            for qid, pos, negs in rows]


def _random_negatives(ids: list[str], exclude: set[str], need: int, rng: random.Random) -> list[str]:
    """``need`` distinct ids not in ``exclude``: a draw from the rest for small corpora, rejection beyond."""
    if len(ids) - len(exclude) < need:
        raise ValueError(f"the corpus has {len(ids)} documents: too few for {need} more negatives")
    if len(ids) <= 10_000:
        return rng.sample([d for d in ids if d not in exclude], need)
    out: list[str] = []
    while len(out) < need:  # a large corpus: almost every draw is usable
        candidate = ids[rng.randrange(len(ids))]
        if candidate not in exclude and candidate not in out:
            out.append(candidate)
    return out


def split_groups(data: str, split: str, max_queries: int | None, num_negatives: int, depth: int, seed: int, *,
                 show_progress: bool = True, first_stage: str = "bm25", model: str | None = None) -> list[TrainingGroup]:
    """Read a BEIR split (only its judged queries train) and mine its training groups."""
    dataset = load_beir(data, split)
    queries = dataset.queries
    if max_queries is not None:
        queries = dict(list(queries.items())[:max_queries])
    corpus = list(dataset.corpus())
    return mine_hard_negatives(corpus, queries, dataset.qrels, num_negatives, depth, seed, show_progress,
                               first_stage=first_stage, model=model)
