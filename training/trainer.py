"""``run(config)``: train any registered objective, with seeding, checkpoints, resume and before/after eval.

The loop is a plain PyTorch loop (fused AdamW, linear warmup/decay, grad clipping) over batches of
training items, so every step is reproducible from ``(seed, step)``: batch order is a seeded permutation
per epoch, noise and pair sampling use ``random.Random`` seeded by the step, and dropout uses torch's RNG,
saved in each checkpoint (:mod:`training.checkpoints`). A killed run resumes from its newest readable
checkpoint and ends bit-identical to an uninterrupted one.

Run folder layout (:mod:`training.run_folder`)::

    OUT/config.json          objective, config fields, fingerprint of the training data
    OUT/checkpoints/step-N/  model+loss state, optimizer, scheduler, RNG, trainer.json (with SHA-256s)
    OUT/model/               the result: a sentence-transformers folder (``Retriever(model=OUT/model)``,
                             or ``load_reranker("cross-encoder:OUT/model")`` for a cross-encoder)
    OUT/metrics.json         items, steps, time, steps/s, losses, before/after metrics and a paired
                             randomisation test of after against before (nDCG@10 per query)
    OUT/eval/{before,after}.trec   the evaluation runs (with ``eval_beir``)
"""
from __future__ import annotations

import json
import logging
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from retrieval.persistence import atomic_dir, atomic_write_text

from training.checkpoints import apply_checkpoint, newest_readable, save_checkpoint
from training.config import RunConfig
from training.objective import Batch, Objective, ObjectiveModule
from training.registry import objective_name, registered
from training.run_folder import check_folder, check_same_data, data_fingerprint, remove_leftovers, write_run

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(device: str | None) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def linear_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup to the base lr over ``warmup`` steps, then linear decay to 0 at ``total``."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class BatchPlan:
    """Which items form step ``s``: a seeded permutation per epoch, cut into full batches."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.steps_per_epoch = n // batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"{n} training items are fewer than one batch of {batch_size}")
        self._epoch, self._order = -1, np.arange(0)

    def indices(self, step: int) -> np.ndarray:
        epoch, i = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._epoch, self._order = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._order[i * self.batch_size:(i + 1) * self.batch_size]


def to_features(model: Any, batch: Batch, device: str) -> tuple[list[dict[str, Any]], torch.Tensor | None]:
    """Tokenise each column with the model's ``preprocess`` and move tensors to ``device``."""
    features = []
    for column in batch.columns:
        raw = model.preprocess(column)
        features.append({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in raw.items()})
    labels = torch.tensor(batch.labels, dtype=torch.float32, device=device) if batch.labels is not None else None
    return features, labels


def _optimizer(config: RunConfig, loss_fn: torch.nn.Module, device: str, total: int
               ) -> tuple[list[torch.nn.Parameter], torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """Fused AdamW over the trainable parameters, with linear warmup then decay over ``total`` steps."""
    params = [p for p in loss_fn.parameters() if p.requires_grad]
    fused = torch.device(device).type in ("cpu", "cuda")  # the fused kernel, as transformers' Trainer uses
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=fused)
    return params, optimizer, linear_schedule(optimizer, math.ceil(config.warmup_ratio * total), total)


def train_steps(config: RunConfig, model: Any, objective: Objective, items: list[Any], out: Path,
                device: str) -> dict[str, Any]:
    """The optimisation loop, resuming from the newest readable checkpoint when ``config.resume``."""
    plan = BatchPlan(len(items), config.items_per_step(), config.seed)
    total = config.max_steps or config.epochs * plan.steps_per_epoch
    loss_fn = objective.loss.to(device)
    params, optimizer, scheduler = _optimizer(config, loss_fn, device, total)
    start, losses = 0, []
    checkpoint = newest_readable(out, device) if config.resume else None
    if checkpoint is not None:
        start, losses = apply_checkpoint(checkpoint, loss_fn, optimizer, scheduler)
        logger.info("resuming from %s (step %d of %d)", checkpoint.folder, start, total)
    loss_fn.train()
    bar = tqdm(total=total, initial=start, desc=objective.name, disable=not config.show_progress)
    step_seconds = 0.0
    for step in range(start, total):
        began = time.perf_counter()
        batch = objective.make_batch([items[i] for i in plan.indices(step)], random.Random(config.seed * 1_000_003 + step))
        features, labels = to_features(model, batch, device)
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=config.bf16):
            loss = loss_fn(features, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        step_seconds += time.perf_counter() - began
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        if (step + 1) % config.checkpoint_every == 0 and step + 1 < total:
            save_checkpoint(out, step + 1, loss_fn, optimizer, scheduler, losses, config.keep_checkpoints)
    bar.close()
    trained = total - start
    return {"steps": total, "steps_this_session": trained, "resumed_from": start, "batch_size": config.batch_size,
            "lr": config.lr, "train_seconds": step_seconds,
            "steps_per_second": trained / step_seconds if step_seconds else None, "losses": losses}


def _evaluate(module: ObjectiveModule, config: RunConfig, model: Any, metrics: dict[str, Any], out: Path,
              when: str) -> None:
    """Evaluate ``model`` on ``config.eval_beir`` into ``metrics[when]`` (the base's corpus vectors are cached)."""
    run_path = out / "eval" / f"{when}.trec"
    cache = config.eval_cache_dir if when == "before" else None
    metrics[when] = module.MODEL.evaluate(model, config, run_path, cache)
    if when == "after":
        from training.evaluate import compare_with_before

        metrics["after_vs_before"] = compare_with_before(config.eval_beir, config.eval_split,
                                                         out / "eval" / "before.trec", run_path)
        logger.info("after vs before: nDCG@10 %+.4f, paired randomisation p = %.4f",
                    metrics["after_vs_before"]["mean_diff"], metrics["after_vs_before"]["p_value"])


def _prepare(config: RunConfig, module: ObjectiveModule) -> tuple[Path, list[Any]]:
    """Check the run folder, read the training items, check them against a resumed run's, write config.json."""
    saved = check_folder(config)
    if saved is not None and (removed := remove_leftovers(Path(config.out))):
        logger.info("removed what an interrupted run left behind: %s", ", ".join(removed))
    items = list(module.training_items(config))
    fingerprint = data_fingerprint(items)
    check_same_data(saved, fingerprint, Path(config.out))
    return write_run(config, fingerprint), items


def run(config: RunConfig) -> Path:
    """Train ``config``'s objective from ``config.base``; return the saved model folder (``OUT/model``)."""
    module: ObjectiveModule = registered(objective_name(config)).load()
    device = pick_device(config.device)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    out, items = _prepare(config, module)
    model = module.MODEL.load(config, device)
    base_length = model.max_seq_length  # the base's own limit goes into the result; training uses ours
    metrics_path = out / "metrics.json"
    metrics: dict[str, Any] = json.loads(metrics_path.read_text(encoding="utf-8")) if config.resume and metrics_path.exists() else {}
    if config.eval_beir and ("before" not in metrics or not (out / "eval" / "before.trec").exists()):
        _evaluate(module, config, model, metrics, out, "before")
        atomic_write_text(metrics_path, json.dumps(metrics, indent=2))
    seed_everything(config.seed)  # the same RNG stream for training whether or not we evaluated
    model.max_seq_length = config.max_seq_length
    objective = module.build(config, model, items)
    metrics.update({"objective": objective_name(config), "items": len(items), "device": device,
                    **train_steps(config, model, objective, items, out, device)})
    model.max_seq_length = base_length
    with atomic_dir(out / "model") as tmp:
        module.MODEL.save(model, config, tmp)
    if config.eval_beir:
        _evaluate(module, config, model, metrics, out, "after")
    atomic_write_text(metrics_path, json.dumps(metrics, indent=2))
    logger.info("saved %s", out / "model")
    return out / "model"
