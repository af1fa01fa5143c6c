"""GPL's fourth stage and the objective module the trainer runs: MarginMSE on the pseudo-labelled triples.

GPL (Wang, Thakur, Reimers & Gurevych, "GPL: Generative Pseudo Labeling for Unsupervised Domain Adaptation of
Dense Retrieval", NAACL 2022) adapts a bi-encoder to a corpus without labels: a generator writes queries for
each document, a first stage mines hard negatives for them, a cross-encoder scores (query, positive) and
(query, negative), and the bi-encoder learns to reproduce the teacher's *margin* with MarginMSE (Hofstätter
et al., 2020): ``MSE(s(q, pos) - s(q, neg), CE(q, pos) - CE(q, neg))``. The margin, not a hard label, is what
makes noisy queries and false negatives harmless. Stages 1-3 are cached and resumable
(:mod:`training.gpl.pipeline`); training is an ordinary run of :func:`training.run` (checkpoints, resume,
before/after evaluation).

Usage::

    retrieval train gpl --corpus ../shared/data/beir/scifact --out runs/gpl --generator llama-cpp:smollm2 \\
        --cross-encoder cross-encoder:runs/ce/model --queries-per-doc 3 --negatives-from both \\
        --eval-beir ../shared/data/beir/scifact --eval-split test

    from training import GPLConfig, run
    run(GPLConfig(corpus="../shared/data/beir/scifact", out="runs/gpl", cross_encoder="cross-encoder:runs/ce/model"))

Defaults: the paper's lr 2e-5 and batch size 32, 3 queries per document, negatives from BM25 and the base model
(the paper mined with two dense retrievers, top 50), dot-product student scores (cosine for a normalised model).
The paper's students score with an unnormalised dot product, whose margins are on a cross-encoder's logit scale;
a normalised student's margins lie within [-2, 2], so ``fit_scale`` multiplies them by the least-squares fit of
the base model's margins to the teacher's, measured once on the training triples and cached in ``OUT/gpl/scale``.
"""
from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from torch import nn

from training.bi_encoder import BI_ENCODER
from training.config import GPLConfig
from training.gpl.cache import Stage, digest
from training.gpl.pipeline import MarginTriple, gpl_triples, model_identity
from training.objective import Batch

logger = logging.getLogger(__name__)


class MarginMSELoss(nn.Module):
    """``MSE(scale * (q·pos - q·neg), teacher margin)`` over a batch of (query, positive, negative) rows."""

    def __init__(self, model: SentenceTransformer, scale: float = 1.0) -> None:
        super().__init__()
        self.model = model
        self.scale = scale

    def forward(self, features: list[dict[str, Any]], labels: torch.Tensor | None = None) -> torch.Tensor:
        if labels is None:
            raise ValueError("MarginMSE needs the teacher's margin for every row")
        # float32 margins: under bf16 autocast a difference of two dot products would keep ~3 digits
        q, pos, neg = (self.model(f)["sentence_embedding"].float() for f in features)   # each [batch, dim]
        margin = (q * pos).sum(-1) - (q * neg).sum(-1)                          # [batch]
        return nn.functional.mse_loss(self.scale * margin, labels)


class MarginMSE:
    """Batches of triples: columns (queries, positives, negatives), labels the teacher's margins."""

    name = "gpl"

    def __init__(self, model: SentenceTransformer, scale: float = 1.0) -> None:
        self.loss = MarginMSELoss(model, scale)

    def make_batch(self, items: list[MarginTriple], rng: random.Random) -> Batch:
        return Batch([[t.query for t in items], [t.positive for t in items], [t.negative for t in items]],
                     [t.margin for t in items])


MODEL = BI_ENCODER


def training_items(config: GPLConfig) -> list[MarginTriple]:
    """The pseudo-labelled triples of stages 1-3 (run now, or read from ``OUT/gpl``)."""
    from training.trainer import pick_device

    return gpl_triples(config, pick_device(config.device))


FIT_SAMPLE = 1000   # triples the scale is fitted on


def fitted_scale(model: SentenceTransformer, triples: Sequence[MarginTriple], limit: int = FIT_SAMPLE,
                 batch_size: int = 32) -> dict[str, float]:
    """``s`` minimising ``sum (s * student margin - teacher margin)^2`` over up to ``limit`` triples (a seeded
    sample), with the correlation of the two margins (None where undefined). ValueError when no positive ``s`` fits."""
    sample = list(triples) if len(triples) <= limit else random.Random(0).sample(list(triples), limit)

    def embed(texts: list[str]) -> np.ndarray:
        return model.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False).astype(np.float64)

    q, pos, neg = (embed([getattr(t, field) for t in sample]) for field in ("query", "positive", "negative"))
    student = (q * pos).sum(1) - (q * neg).sum(1)
    teacher = np.array([t.margin for t in sample], dtype=np.float64)
    fit = float(student @ teacher)
    if fit <= 0 or not np.any(student):
        raise ValueError(f"fit_scale: on {len(sample)} training triples the base model's margins do not agree with "
                         "the teacher's (no positive scale fits); check the teacher, or give --scale")
    with np.errstate(invalid="ignore", divide="ignore"):
        r = float(np.corrcoef(student, teacher)[0, 1]) if len(sample) > 1 else float("nan")
    correlation = r if np.isfinite(r) else None    # JSON has no NaN (one triple, or a constant margin)
    return {"scale": fit / float(student @ student), "correlation": correlation, "triples": len(sample)}


def build(config: GPLConfig, model: SentenceTransformer, items: list[MarginTriple]) -> MarginMSE:
    if not config.fit_scale:
        return MarginMSE(model, scale=config.scale)
    key = {"triples": digest([[t.query, t.positive, t.negative, t.margin] for t in items]),
           "base": model_identity(config.base), "sample": FIT_SAMPLE, "max_seq_length": config.max_seq_length}
    stage = Stage(Path(config.out) / "gpl" / "scale", key)    # fitted once: a resumed run trains with the same scale
    if not stage.complete:
        stage.finish(fitted_scale(model, items))
    stats = stage.stats
    logger.info("GPL: student margins scaled by %.3f (fitted on %d triples; correlation with the teacher %s)",
                stats["scale"], stats["triples"], stats["correlation"])
    return MarginMSE(model, scale=float(stats["scale"]))
