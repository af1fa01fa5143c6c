"""Contrastive Tension (Carlsson et al., ICLR 2021): two copies of the encoder pulled together on identical inputs.

Two independent copies of the model encode the two sides of each pair; the trained copy (the one saved)
is ``model``, the other is a deep copy made at the start.

* ``original``: pairs are identical (label 1) for one pair in ``pos_neg_ratio`` and otherwise two
  different sentences (label 0, the second drawn at random from the corpus); the loss is binary
  cross-entropy on the dot product of the two copies' vectors
  (``sentence_transformers.losses.ContrastiveTensionLoss``). Paper defaults: lr 1e-5, batch 16, ratio 8.
* ``in-batch``: each sentence through both copies; the other sentences of the batch are negatives,
  cross-entropy over scaled cosine similarities (``ContrastiveTensionLossInBatchNegatives``, scale 20).

Example::

    objective = ContrastiveTension(model, variant="original", sentences=corpus_sentences)
    batch = objective.make_batch(sentences, random.Random(0))
"""
from __future__ import annotations

import random
from collections.abc import Sequence

from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.losses import (
    ContrastiveTensionLoss,
    ContrastiveTensionLossInBatchNegatives,
)

from training.bi_encoder import BI_ENCODER, sentence_items
from training.config import CTConfig
from training.objective import Batch


def ct_pairs(sentences: list[str], pool: Sequence[str], pos_neg_ratio: int,
             rng: random.Random) -> tuple[list[str], list[str], list[float]]:
    """Original CT pairs: row ``i`` is positive (same sentence twice) when ``i % pos_neg_ratio == 0``.

    A negative's partner is drawn from ``pool`` and redrawn if it equals the sentence (up to 10 tries).
    """
    if pos_neg_ratio < 1:
        raise ValueError(f"pos_neg_ratio must be >= 1, got {pos_neg_ratio}")
    first, second, labels = [], [], []
    for i, sentence in enumerate(sentences):
        if i % pos_neg_ratio == 0 or len(pool) < 2:
            partner, label = sentence, 1.0
        else:
            partner = pool[rng.randrange(len(pool))]
            for _ in range(10):
                if partner != sentence:
                    break
                partner = pool[rng.randrange(len(pool))]
            label = 1.0 if partner == sentence else 0.0
        first.append(sentence)
        second.append(partner)
        labels.append(label)
    return first, second, labels


class ContrastiveTension:
    """Contrastive Tension objective, ``variant`` "in-batch" (default) or "original"."""

    name = "ct"

    def __init__(self, model: SentenceTransformer, variant: str = "in-batch", sentences: Sequence[str] = (),
                 pos_neg_ratio: int = 8, scale: float = 20.0) -> None:
        if variant == "original":
            self.loss = ContrastiveTensionLoss(model)
        elif variant == "in-batch":
            self.loss = ContrastiveTensionLossInBatchNegatives(model, scale=scale)
        else:
            raise ValueError(f"CT variant {variant!r}: expected 'in-batch' or 'original'")
        self.variant = variant
        self.pool = sentences
        self.pos_neg_ratio = pos_neg_ratio

    def make_batch(self, sentences: list[str], rng: random.Random) -> Batch:
        if self.variant == "in-batch":
            return Batch([list(sentences)])
        first, second, labels = ct_pairs(sentences, self.pool, self.pos_neg_ratio, rng)
        return Batch([first, second], labels)


MODEL = BI_ENCODER


def training_items(config: CTConfig) -> list[str]:
    """CT trains on corpus sentences (the original variant also draws its negatives from them)."""
    return sentence_items(config)


def build(config: CTConfig, model: SentenceTransformer, items: list[str]) -> ContrastiveTension:
    return ContrastiveTension(model, variant=config.variant, sentences=items, pos_neg_ratio=config.pos_neg_ratio)
