"""Unsupervised SimCSE (Gao, Yao, Chen, EMNLP 2021): a sentence and itself through dropout are a positive pair.

Each sentence is encoded twice in training mode, so two dropout masks give two slightly different
vectors; the other sentences of the batch are the negatives. The loss is InfoNCE over cosine
similarities divided by a temperature (paper default 0.05), which is exactly
``sentence_transformers.losses.MultipleNegativesRankingLoss`` with ``scale = 1 / temperature`` (20).
Paper defaults for BERT-base: batch 64, lr 3e-5.

Example::

    objective = SimCSE(model, temperature=0.05)
    batch = objective.make_batch(sentences, random.Random(0))   # columns: [sentences, sentences]
"""
from __future__ import annotations

import random

from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

from training.bi_encoder import BI_ENCODER, sentence_items
from training.config import SimCSEConfig
from training.objective import Batch


class SimCSE:
    """SimCSE objective: the same texts in both columns; dropout makes the two views differ."""

    name = "simcse"

    def __init__(self, model: SentenceTransformer, temperature: float = 0.05) -> None:
        if temperature <= 0:
            raise ValueError(f"SimCSE temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.loss = MultipleNegativesRankingLoss(model, scale=1.0 / temperature)

    def make_batch(self, sentences: list[str], rng: random.Random) -> Batch:
        return Batch([list(sentences), list(sentences)])


MODEL = BI_ENCODER


def training_items(config: SimCSEConfig) -> list[str]:
    """SimCSE trains on corpus sentences."""
    return sentence_items(config)


def build(config: SimCSEConfig, model: SentenceTransformer, items: list[str]) -> SimCSE:
    return SimCSE(model, temperature=config.temperature)
