"""Fine-tune a cross-encoder reranker on (query, positive, BM25 hard negatives) from a BEIR split.

A cross-encoder reads query and passage together and outputs one relevance logit (Nogueira & Cho,
"Passage Re-ranking with BERT", 2019). Each judged positive is grouped with hard negatives mined from
the BM25 first stage the reranker will sit behind (judged positives are never negatives). Two losses:

* ``listwise`` (default): softmax cross-entropy over each group's logits, the positive as the target
  ("Localized Contrastive Estimation", Gao, Dai & Callan, ECIR 2021), which learns more from few labels;
* ``bce``: binary cross-entropy on every (query, passage) pair, the recipe of sentence-transformers'
  MS MARCO cross-encoders (``BinaryCrossEntropyLoss``, positives up-weighted by the negatives per positive).

``batch_size`` counts (query, passage) pairs per step for both, so a step costs the same. Training runs
through :func:`training.run` like every objective (checkpoints, resume, before/after evaluation, which here
reranks BM25's top ``eval_depth``); the result ``OUT/model`` is a plain sentence-transformers
``CrossEncoder`` folder that ``load_reranker("cross-encoder:OUT/model")`` reads.

Usage::

    from training import CrossEncoderConfig, run
    folder = run(CrossEncoderConfig(data="../shared/data/beir/scifact", out="runs/ce"))

Defaults: listwise groups of 1 positive + 7 negatives, 32 pairs a step, 256 tokens, lr 5e-5, one epoch.
"""
from __future__ import annotations

import logging
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from retrieval.data import load_beir
from retrieval.models import resolve_model

from training.config import CrossEncoderConfig
from training.negatives import TrainingGroup, mine_hard_negatives, split_groups  # noqa: F401 (re-exported)
from training.objective import Batch

logger = logging.getLogger(__name__)


def load_groups(config: CrossEncoderConfig) -> list[TrainingGroup]:
    """Read the BEIR split named by ``config`` and mine its training groups (BM25 negatives)."""
    return split_groups(config.data, config.split, config.max_queries, config.num_negatives, config.negatives_depth,
                        config.seed, show_progress=config.show_progress)


def training_items(config: CrossEncoderConfig) -> list[Any]:
    """Whole groups for ``listwise``; their (query, passage, label) rows for ``bce``."""
    groups = load_groups(config)
    return groups if config.loss == "listwise" else [row for g in groups for row in g.pairs()]


class ListwiseLoss(nn.Module):
    """Mean softmax cross-entropy of each group's logits, with its positive (first of the group) as the target."""

    def __init__(self, model: Any, group_size: int) -> None:
        super().__init__()
        self.model = model
        self.group_size = group_size

    def forward(self, features: list[dict[str, Any]], labels: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.model(features[0])["scores"].view(-1, self.group_size)
        target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        return nn.functional.cross_entropy(logits, target)


class PointwiseLoss(nn.Module):
    """Binary cross-entropy on each pair's logit, positives weighted by ``pos_weight`` (as ST's BinaryCrossEntropyLoss)."""

    def __init__(self, model: Any, pos_weight: float) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("pos_weight", torch.tensor(float(pos_weight)), persistent=False)

    def forward(self, features: list[dict[str, Any]], labels: torch.Tensor | None = None) -> torch.Tensor:
        if labels is None:
            raise ValueError("the bce loss needs a label per (query, passage) pair")
        logits = self.model(features[0])["scores"].view(-1)
        return nn.functional.binary_cross_entropy_with_logits(logits, labels, pos_weight=self.pos_weight)


class CrossEncoderObjective:
    """Batches of (query, passage) pairs: whole groups for ``listwise``, labelled rows for ``bce``."""

    name = "cross-encoder"

    def __init__(self, model: Any, loss: str = "listwise", num_negatives: int = 7) -> None:
        self.listwise = loss == "listwise"
        self.loss = ListwiseLoss(model, 1 + num_negatives) if self.listwise else PointwiseLoss(model, num_negatives)

    def make_batch(self, items: list[Any], rng: random.Random) -> Batch:
        if self.listwise:
            return Batch([[(q, p) for group in items for q, p, _ in group.pairs()]])
        return Batch([[(q, p) for q, p, _ in items]], [label for _, _, label in items])


def build(config: CrossEncoderConfig, model: Any, items: list[Any]) -> CrossEncoderObjective:
    return CrossEncoderObjective(model, loss=config.loss, num_negatives=config.num_negatives)


class CrossEncoderKind:
    """Load/save/evaluate for cross-encoders (see :class:`training.objective.ModelKind`)."""

    def load(self, config: CrossEncoderConfig, device: str) -> Any:
        from sentence_transformers import CrossEncoder

        return CrossEncoder(resolve_model(config.base).path, num_labels=1, max_length=config.max_seq_length,
                            device=device)

    def save(self, model: Any, config: CrossEncoderConfig, folder: Path) -> None:
        model.save_pretrained(str(folder))

    def evaluate(self, model: Any, config: CrossEncoderConfig, run_path: Path, cache: str | None) -> dict[str, Any]:
        """BM25's top ``eval_depth`` reranked by ``model`` on ``config.eval_beir`` (``cache`` is not needed)."""
        from retrieval.eval.pipeline import evaluate_retriever
        from retrieval.rerank.cross_encoder import CrossEncoderReranker
        from retrieval.retriever import Retriever

        data = load_beir(config.eval_beir, config.eval_split)
        old_length, was_training = model.max_seq_length, model.training
        model.max_seq_length = config.eval_max_seq_length
        try:
            started = time.perf_counter()
            reranker = CrossEncoderReranker(model, batch_size=config.eval_batch_size, show_progress=config.show_progress)
            retriever = Retriever.from_documents(data.corpus(), "bm25", reranker=reranker,
                                                 rerank_depth=config.eval_depth, show_progress=config.show_progress)
            result = evaluate_retriever(retriever, data, k=max(100, config.eval_depth), run_out=run_path)
        finally:
            model.max_seq_length = old_length
            model.train(was_training)
        logger.info("%s/%s: nDCG@10 %.4f (BM25 top-%d reranked)", Path(config.eval_beir).name, config.eval_split,
                    result.metrics["nDCG@10"], config.eval_depth)
        return {**result.metrics, "eval_seconds": time.perf_counter() - started}


MODEL = CrossEncoderKind()


def main(argv: list[str] | None = None) -> int:
    """``python -m training.cross_encoder --data DIR --out DIR [options]``: ``retrieval train cross-encoder``."""
    from training.cli import main as cli_main

    return cli_main(["cross-encoder", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
