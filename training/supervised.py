"""Supervised bi-encoder fine-tuning on a BEIR split: judged (query, positive) pairs, in-batch and hard negatives.

The recipe behind sentence-transformers' retrieval models (and the second step of the TSDAE paper's adaptation
protocol): ``MultipleNegativesRankingLoss`` over rows ``(query, positive, hard negative 1..k)``. Every other
row's positive and negatives in the batch are negatives too. Hard negatives come from BM25, from the base model
itself, or both (:mod:`training.negatives`); judged positives never are. The run is an ordinary training run
(:func:`training.run`): config.json, checkpoints, resume, and nDCG@10 before/after on ``--eval-beir``.

Usage::

    retrieval train supervised --data ../shared/data/beir/scifact --split train --out runs/sup \\
        --eval-beir ../shared/data/beir/scifact --negatives-from both

    from training import SupervisedConfig, run
    run(SupervisedConfig(data="../shared/data/beir/scifact", out="runs/sup", eval_beir="../shared/data/beir/scifact"))
"""
from __future__ import annotations

import logging
import random

from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

from retrieval.models import resolve_model

from training.bi_encoder import BI_ENCODER
from training.config import SupervisedConfig
from training.negatives import TrainingGroup, split_groups
from training.objective import Batch

logger = logging.getLogger(__name__)


class Supervised:
    """In-batch softmax over (query, positive, hard negatives) rows; the positive of each row is its target."""

    name = "supervised"

    def __init__(self, model: SentenceTransformer, num_negatives: int, scale: float = 20.0) -> None:
        self.num_negatives = num_negatives
        self.loss = MultipleNegativesRankingLoss(model, scale=scale)

    def make_batch(self, groups: list[TrainingGroup], rng: random.Random) -> Batch:
        columns = [[g.query for g in groups], [g.positive for g in groups]]
        columns += [[g.negatives[j] for g in groups] for j in range(self.num_negatives)]
        return Batch(columns)


MODEL = BI_ENCODER


def training_items(config: SupervisedConfig) -> list[TrainingGroup]:
    """One group per judged (query, positive) of the split, with ``num_negatives`` mined negatives."""
    model = resolve_model(config.base).path if config.negatives_from != "bm25" else None
    return split_groups(config.data, config.split, config.max_queries, config.num_negatives, config.negatives_depth,
                        config.seed, show_progress=config.show_progress, first_stage=config.negatives_from,
                        model=model)


def build(config: SupervisedConfig, model: SentenceTransformer, items: list[TrainingGroup]) -> Supervised:
    return Supervised(model, num_negatives=config.num_negatives, scale=config.scale)
