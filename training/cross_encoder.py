"""Fine-tune a cross-encoder reranker on (query, positive, BM25 hard negatives) from a BEIR train split.

A cross-encoder reads query and passage together and outputs one relevance logit (Nogueira & Cho,
"Passage Re-ranking with BERT", 2019). Each judged positive is grouped with hard negatives mined from
the BM25 first stage the reranker will sit behind (judged positives are never negatives). Two losses:

* ``listwise`` (default): softmax cross-entropy over each group's logits, the positive as the target
  ("Localized Contrastive Estimation", Gao, Dai & Callan, ECIR 2021), which learns more from few labels;
* ``bce``: binary cross-entropy on every (query, passage) pair, the recipe of sentence-transformers'
  MS MARCO cross-encoders (``BinaryCrossEntropyLoss``, positives up-weighted by the negatives per positive).

``batch_size`` counts (query, passage) pairs per step for both, so a step costs the same. The result is a
plain sentence-transformers ``CrossEncoder`` folder that ``load_reranker("cross-encoder:FOLDER")`` reads.

Usage::

    from training.cross_encoder import CrossEncoderTrainingConfig, train_cross_encoder
    config = CrossEncoderTrainingConfig(data="../shared/data/beir/scifact", output="models/ce-scifact")
    folder = train_cross_encoder(config)

Defaults: listwise groups of 1 positive + 7 negatives, 32 pairs a step, 256 tokens, lr 5e-5, one epoch.
"""
from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from retrieval.data import load_beir
from retrieval.errors import MissingDependency
from retrieval.models import resolve_model
from retrieval.persistence import atomic_dir
from retrieval.types import Document, Qrels

logger = logging.getLogger(__name__)

TRAINING_FILE = "retrievekit_training.json"
LOSSES = ("listwise", "bce")


@dataclass
class CrossEncoderTrainingConfig:
    """Everything a cross-encoder training run depends on; serialises to JSON next to the weights."""

    data: str  # a BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv)
    output: str  # where the CrossEncoder folder is written (atomically)
    split: str = "train"
    base_model: str = "minilm"  # alias, local folder or hub name of an encoder (BERT-like)
    loss: str = "listwise"  # "listwise" (softmax over 1 positive + negatives) or "bce" (pointwise)
    max_seq_length: int = 256
    batch_size: int = 32  # (query, passage) pairs per step; listwise: batch_size // (1 + num_negatives) groups
    epochs: int = 1
    max_steps: int | None = None  # stop after this many optimizer steps (None: run all epochs)
    learning_rate: float = 5e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    num_negatives: int = 7  # hard negatives per (query, positive) pair
    negatives_depth: int = 30  # negatives are sampled from the BM25 top-`negatives_depth`
    max_queries: int | None = None  # use only the first N train queries (quick experiments)
    seed: int = 42
    device: str | None = None  # None: cuda when available, else cpu
    show_progress: bool = True

    def __post_init__(self) -> None:
        for name in ("max_seq_length", "batch_size", "epochs", "num_negatives", "negatives_depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"CrossEncoderTrainingConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"CrossEncoderTrainingConfig.max_steps must be >= 1 or None, got {self.max_steps}")
        if self.loss not in LOSSES:
            raise ValueError(f"CrossEncoderTrainingConfig.loss must be one of {LOSSES}, got {self.loss!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"CrossEncoderTrainingConfig.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "CrossEncoderTrainingConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown cross-encoder training option(s) {unknown}; known: {sorted(known)}")
        return cls(**values)


@dataclass(frozen=True)
class TrainingGroup:
    """One judged positive of a query with its mined hard negatives (all of the same length in a run)."""

    query: str
    positive: str
    negatives: tuple[str, ...]

    def pairs(self) -> list[tuple[str, str, float]]:
        """``(query, passage, label)`` rows: the positive (1.0) first, then the negatives (0.0)."""
        return [(self.query, self.positive, 1.0)] + [(self.query, n, 0.0) for n in self.negatives]


def mine_hard_negatives(corpus: list[Document], queries: dict[str, str], qrels: Qrels, num_negatives: int,
                        depth: int, seed: int, show_progress: bool = True) -> list[TrainingGroup]:
    """Group every judged positive with ``num_negatives`` passages sampled from BM25's top-``depth``.

    Judged positives of the query are never negatives; when BM25's pool is too small the group is filled
    with random corpus documents, so every group has the same size. Queries without positives are skipped.
    """
    from retrieval.retriever import Retriever

    retriever = Retriever.from_documents(corpus, method="bm25", show_progress=show_progress)
    by_id = {d.id: d for d in corpus}
    all_ids = list(by_id)
    qids = [q for q in queries if any(g > 0 for g in qrels.get(q, {}).values())]
    results = retriever.retrieve_batch([queries[q] for q in qids], k=depth)
    rng = random.Random(seed)
    groups: list[TrainingGroup] = []
    for qid, hits in zip(qids, results):
        judged = {d for d, g in qrels[qid].items() if g > 0}
        positives = [d for d in sorted(judged) if d in by_id]
        pool = [h.id for h in hits if h.id not in judged]
        for pos in positives:
            chosen = rng.sample(pool, min(num_negatives, len(pool)))
            if len(chosen) < num_negatives:
                chosen += _random_negatives(all_ids, judged | set(chosen), num_negatives - len(chosen), rng)
            groups.append(TrainingGroup(queries[qid], by_id[pos].full_text,
                                        tuple(by_id[d].full_text for d in chosen)))
    if not groups:
        raise ValueError("no training pairs: no query of the split has a judged positive in the corpus")
    logger.info("mined %d groups of 1 positive + %d negatives for %d queries", len(groups), num_negatives, len(qids))
    return groups


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


def load_groups(config: CrossEncoderTrainingConfig) -> list[TrainingGroup]:
    """Read the BEIR split named by ``config`` and mine its training groups."""
    dataset = load_beir(config.data, config.split)
    queries = dataset.queries
    if config.max_queries is not None:
        queries = dict(list(queries.items())[: config.max_queries])
    corpus = list(dataset.corpus())
    return mine_hard_negatives(corpus, queries, dataset.qrels, config.num_negatives, config.negatives_depth,
                               config.seed, config.show_progress)


def _batches(items: list[Any], batch_size: int, epochs: int, seed: int) -> list[list[Any]]:
    rng = random.Random(seed)
    out = []
    for _ in range(epochs):
        order = list(items)
        rng.shuffle(order)
        out.extend(order[i:i + batch_size] for i in range(0, len(order), batch_size))
    return out


def plan_batches(groups: list[TrainingGroup], config: CrossEncoderTrainingConfig) -> list[list[Any]]:
    """The step batches: whole groups for ``listwise``, shuffled (query, passage, label) rows for ``bce``."""
    if config.loss == "listwise":
        per_step = max(1, config.batch_size // (1 + config.num_negatives))
        batches = _batches(groups, per_step, config.epochs, config.seed)
    else:
        rows = [row for g in groups for row in g.pairs()]
        batches = _batches(rows, config.batch_size, config.epochs, config.seed)
    return batches if config.max_steps is None else batches[: config.max_steps]


def _build_model(config: CrossEncoderTrainingConfig) -> Any:
    try:
        import torch
        from sentence_transformers import CrossEncoder
    except ImportError as exc:
        raise MissingDependency("cross-encoder training needs: pip install 'retrievekit[train]'") from exc
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    ref = resolve_model(config.base_model)
    return CrossEncoder(ref.path, num_labels=1, max_length=config.max_seq_length, device=device)


def _logits(model: Any, pairs: list[tuple[str, str]]) -> Any:
    from sentence_transformers.util import batch_to_device

    features = batch_to_device(model.preprocess(pairs), model.device)
    return model(features)["scores"].view(-1)


def listwise_loss(model: Any, groups: list[TrainingGroup]) -> Any:
    """Mean softmax cross-entropy of each group's logits with its positive (index 0) as the target."""
    import torch

    size = 1 + len(groups[0].negatives)
    logits = _logits(model, [(q, p) for g in groups for q, p, _ in g.pairs()]).view(len(groups), size)
    return torch.nn.functional.cross_entropy(logits, torch.zeros(len(groups), dtype=torch.long, device=logits.device))


def train_on_groups(model: Any, groups: list[TrainingGroup], config: CrossEncoderTrainingConfig) -> list[float]:
    """Train ``model`` in place with ``config.loss``; returns the loss of every step."""
    import torch
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss
    from transformers import get_linear_schedule_with_warmup

    batches = plan_batches(groups, config)
    bce = None
    if config.loss == "bce":
        bce = BinaryCrossEntropyLoss(model, pos_weight=torch.tensor(float(config.num_negatives)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = get_linear_schedule_with_warmup(optimizer, math.ceil(config.warmup_ratio * len(batches)), len(batches))
    model.train()
    losses: list[float] = []
    bar = tqdm(batches, desc=f"Training cross-encoder ({config.loss})", unit="step", disable=not config.show_progress)
    for batch in bar:
        if config.loss == "listwise":
            loss = listwise_loss(model, batch)
        else:
            labels = torch.tensor([label for _, _, label in batch], device=model.device)
            loss = bce([[q for q, _, _ in batch], [p for _, p, _ in batch]], labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
    model.eval()
    return losses


def train_cross_encoder(config: CrossEncoderTrainingConfig) -> Path:
    """Mine pairs, fine-tune, and save a CrossEncoder folder (plus ``retrievekit_training.json``) atomically."""
    import torch

    random.seed(config.seed)
    torch.manual_seed(config.seed)
    groups = load_groups(config)
    model = _build_model(config)
    start = time.perf_counter()
    losses = train_on_groups(model, groups, config)
    seconds = time.perf_counter() - start
    logger.info("trained %d steps in %.0f s; loss %.3f -> %.3f", len(losses), seconds, losses[0], losses[-1])
    record = {"config": config.to_dict(), "n_groups": len(groups), "steps": len(losses),
              "train_seconds": round(seconds, 1), "losses": [round(x, 5) for x in losses]}
    with atomic_dir(config.output) as tmp:
        model.save_pretrained(str(tmp))
        (tmp / TRAINING_FILE).write_text(json.dumps(record, indent=2), encoding="utf-8")
    logger.info("saved cross-encoder to %s", config.output)
    return Path(config.output)


def add_arguments(parser: Any) -> None:
    """Add one ``--flag`` per config field to an argparse parser (``retrieval train cross-encoder`` uses this)."""
    defaults = CrossEncoderTrainingConfig(data="", output="")
    for f in fields(CrossEncoderTrainingConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.name in ("data", "output"):
            parser.add_argument(flag, required=True, help="BEIR folder" if f.name == "data" else "output folder")
        elif f.name == "show_progress":
            parser.add_argument("--no-progress", dest="show_progress", action="store_false")
        else:
            kind = {"int": int, "float": float, "int | None": int}.get(str(f.type), str)
            parser.add_argument(flag, type=kind, default=getattr(defaults, f.name),
                                help=f"default: {getattr(defaults, f.name)}")


def config_from_args(args: Any) -> CrossEncoderTrainingConfig:
    """The config from parsed arguments; other attributes of ``args`` (e.g. a subcommand name) are ignored."""
    return CrossEncoderTrainingConfig(**{f.name: getattr(args, f.name) for f in fields(CrossEncoderTrainingConfig)})


def main(argv: list[str] | None = None) -> int:
    """``python -m training.cross_encoder --data DIR --output DIR [options]``."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    folder = train_cross_encoder(config_from_args(args))
    print(folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
