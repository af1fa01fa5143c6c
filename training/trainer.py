"""``run(config)``: train one objective on a corpus, with seeding, checkpoints, resume and before/after eval.

The loop is a plain PyTorch loop (fused AdamW, linear warmup/decay, grad clipping) over sentence batches, so
every step is reproducible from ``(seed, step)``: batch order is a seeded permutation per epoch, noise
and pair sampling use ``random.Random`` seeded by the step, and dropout uses torch's RNG, saved in each
checkpoint. Checkpoints hold tensors and plain types only (``torch.save``; loaded with
``weights_only=True``) and are written atomically, so a killed run resumes from its last one.

Run folder layout::

    OUT/config.json          the TrainConfig
    OUT/checkpoints/step-N/  model+loss state, optimizer, scheduler, RNG, trainer.json
    OUT/model/               the result, a sentence-transformers folder (``Retriever(model=OUT/model)``)
    OUT/metrics.json         sentences, steps, time, steps/s, losses, before/after BEIR metrics and a paired
                             randomisation test of after against before (nDCG@10 per query)
    OUT/eval/{before,after}.trec   the evaluation runs (with ``eval_beir``)
"""
from __future__ import annotations

import json
import logging
import math
import random
import re
import shutil
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from tqdm.auto import tqdm

from retrieval.models import resolve_model
from retrieval.persistence import atomic_dir, atomic_write_text

from training.config import RESUME_MAY_CHANGE, TrainConfig
from training.contrastive_tension import ContrastiveTension
from training.noise import NoiseConfig
from training.objective import Batch, Objective
from training.pairs import Pairs, corpus_documents
from training.sentences import SentenceOptions, corpus_sentences
from training.simcse import SimCSE
from training.tsdae import TSDAE

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(device: str | None) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def load_base(base: str, pooling: str, objective: str, device: str) -> SentenceTransformer:
    """A sentence-transformers model from an alias, a local folder or a hub name.

    ``pooling="auto"`` keeps a sentence-transformers folder as it is; a plain transformers encoder gets
    [CLS] pooling for TSDAE (as in the paper) and mean pooling otherwise.
    """
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    path = resolve_model(base).path
    is_st = (Path(path) / "modules.json").exists()
    if is_st and pooling == "auto":
        model = SentenceTransformer(path, device=device)
    else:
        mode = pooling if pooling != "auto" else ("cls" if objective == "tsdae" else "mean")
        encoder = Transformer(path)
        model = SentenceTransformer(modules=[encoder, Pooling(encoder.get_embedding_dimension(), mode)], device=device)
    return model


def training_items(config: TrainConfig) -> list[Any]:
    """What one batch row is made from: a corpus sentence, or for ``pairs`` a document's parts."""
    if config.objective == "pairs":
        return corpus_documents(config.corpus, config.pair_source, config.min_words, config.max_sentences)
    return corpus_sentences(config.corpus, SentenceOptions(config.min_words, config.max_words,
                                                           max_sentences=config.max_sentences))


def build_objective(config: TrainConfig, model: SentenceTransformer, sentences: list[Any]) -> Objective:
    """The objective named by ``config.objective`` with its settings."""
    if config.objective == "pairs":
        return Pairs(model, pair_source=config.pair_source)
    if config.objective == "tsdae":
        noise = NoiseConfig(kind=config.noise, ratio=config.noise_ratio, unit=config.noise_unit)
        return TSDAE(model, noise=noise, tie_weights=config.tie_weights)
    if config.objective == "simcse":
        return SimCSE(model, temperature=config.temperature)
    return ContrastiveTension(model, variant=config.ct_variant, sentences=sentences,
                              pos_neg_ratio=config.pos_neg_ratio)


def linear_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup to the base lr over ``warmup`` steps, then linear decay to 0 at ``total``."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class BatchPlan:
    """Which sentences form step ``s``: a seeded permutation per epoch, cut into full batches."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.steps_per_epoch = n // batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"{n} training sentences are fewer than one batch of {batch_size}")
        self._epoch, self._order = -1, np.arange(0)

    def indices(self, step: int) -> np.ndarray:
        epoch, i = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._epoch, self._order = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._order[i * self.batch_size:(i + 1) * self.batch_size]


def to_features(model: SentenceTransformer, batch: Batch, device: str) -> tuple[list[dict[str, Any]], torch.Tensor | None]:
    """Tokenise each column and move tensors to ``device``."""
    features = []
    for column in batch.columns:
        raw = model.preprocess(column)
        features.append({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in raw.items()})
    labels = torch.tensor(batch.labels, dtype=torch.float32, device=device) if batch.labels is not None else None
    return features, labels


# ---- checkpoints -------------------------------------------------------------------------------------

def checkpoint_dirs(out: Path) -> list[Path]:
    """Finished checkpoints, oldest first."""
    folder = out / "checkpoints"
    found = [p for p in folder.glob("step-*") if p.is_dir() and re.fullmatch(r"step-\d+", p.name)] if folder.is_dir() else []
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def save_checkpoint(out: Path, step: int, loss: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, losses: list[float], keep: int) -> Path:
    """Write ``checkpoints/step-N`` atomically (temp folder + rename) and prune old ones."""
    target = out / "checkpoints" / f"step-{step:07d}"
    with atomic_dir(target) as tmp:
        torch.save(loss.state_dict(), tmp / "loss_state.pt")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        (tmp / "trainer.json").write_text(json.dumps({"format_version": CHECKPOINT_FORMAT, "step": step,
                                                      "losses": losses}), encoding="utf-8")
    for old in checkpoint_dirs(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def load_checkpoint(folder: Path, loss: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, device: str) -> tuple[int, list[float]]:
    """Restore everything ``save_checkpoint`` wrote; returns ``(step, losses)``."""
    meta = json.loads((folder / "trainer.json").read_text(encoding="utf-8"))
    if meta.get("format_version") != CHECKPOINT_FORMAT:
        raise ValueError(f"{folder / 'trainer.json'}: checkpoint format {meta.get('format_version')}, "
                         f"this version reads {CHECKPOINT_FORMAT}")
    loss.load_state_dict(torch.load(folder / "loss_state.pt", map_location=device, weights_only=True))
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location=device, weights_only=True))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    rng = torch.load(folder / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return int(meta["step"]), [float(x) for x in meta["losses"]]


# ---- the run -----------------------------------------------------------------------------------------

def prepare_out(config: TrainConfig) -> Path:
    """Create the run folder and save the config; on resume check the saved config matches."""
    out = Path(config.out)
    saved = out / "config.json"
    if saved.exists():
        if not config.resume:
            raise FileExistsError(f"{out}: already holds a run (config.json); pass resume=True (--resume) "
                                  f"to continue it, or choose another output folder")
        old = TrainConfig.from_json(saved).to_dict()
        new = config.to_dict()
        changed = sorted(k for k in new if k not in RESUME_MAY_CHANGE and old.get(k) != new[k])
        if changed:
            raise ValueError(f"{saved}: cannot resume with different settings: "
                             + ", ".join(f"{k} {old.get(k)!r} -> {new[k]!r}" for k in changed))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(saved, config.to_json())
    return out


def _eval(config: TrainConfig, model: SentenceTransformer, cache: str | None,
          run_path: Path | None = None) -> dict[str, float] | None:
    if not config.eval_beir:
        return None
    from training.evaluate import evaluate_on_beir

    return evaluate_on_beir(model, config.eval_beir, config.eval_split, config.eval_max_seq_length,
                            config.eval_batch_size, cache=cache, show_progress=config.show_progress,
                            run_path=run_path)


def base_vectors_cache(config: TrainConfig, model: SentenceTransformer) -> str | None:
    """Cache key for the base model's corpus vectors: base, pooling, data, split, length."""
    if not config.eval_cache_dir:
        return None
    pooling = next((str(m.pooling_mode) for m in model if hasattr(m, "pooling_mode")), "none")
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{config.base}-{pooling}")
    return str(Path(config.eval_cache_dir) / f"{slug}-{Path(config.eval_beir or '').name}-"
               f"{config.eval_split}-{config.eval_max_seq_length}")


def train_steps(config: TrainConfig, model: SentenceTransformer, objective: Objective, sentences: list[Any],
                out: Path, device: str) -> dict[str, Any]:
    """The optimisation loop, resuming from the last checkpoint when ``config.resume``."""
    batch_size = config.effective_batch_size
    plan = BatchPlan(len(sentences), batch_size, config.seed)
    total = config.max_steps or config.epochs * plan.steps_per_epoch
    loss_fn = objective.loss.to(device)
    params = [p for p in loss_fn.parameters() if p.requires_grad]
    fused = torch.device(device).type in ("cpu", "cuda")  # the fused kernel, as transformers' Trainer uses
    optimizer = torch.optim.AdamW(params, lr=config.effective_lr, weight_decay=config.weight_decay, fused=fused)
    scheduler = linear_schedule(optimizer, math.ceil(config.warmup_ratio * total), total)
    start, losses = 0, []
    found = checkpoint_dirs(out) if config.resume else []
    if found:
        start, losses = load_checkpoint(found[-1], loss_fn, optimizer, scheduler, device)
        logger.info("resuming from %s (step %d of %d)", found[-1], start, total)
    loss_fn.train()
    bar = tqdm(total=total, initial=start, desc=f"{config.objective}", disable=not config.show_progress)
    step_seconds = 0.0
    for step in range(start, total):
        began = time.perf_counter()
        batch = objective.make_batch([sentences[i] for i in plan.indices(step)], random.Random(config.seed * 1_000_003 + step))
        features, labels = to_features(model, batch, device)
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
    return {"steps": total, "steps_this_session": trained, "resumed_from": start, "batch_size": batch_size,
            "lr": config.effective_lr, "train_seconds": step_seconds,
            "steps_per_second": trained / step_seconds if step_seconds else None, "losses": losses}


def run(config: TrainConfig) -> Path:
    """Train ``config.objective`` on ``config.corpus`` from ``config.base``; return the saved model folder."""
    out = prepare_out(config)
    device = pick_device(config.device)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    sentences = training_items(config)
    model = load_base(config.base, config.pooling, config.objective, device)
    saved_length = model.max_seq_length  # the base's own limit goes into the result; training uses ours
    metrics_path = out / "metrics.json"
    metrics: dict[str, Any] = json.loads(metrics_path.read_text(encoding="utf-8")) if config.resume and metrics_path.exists() else {}
    runs = {"before": out / "eval" / "before.trec", "after": out / "eval" / "after.trec"}
    if config.eval_beir and ("before" not in metrics or not runs["before"].exists()):
        metrics["before"] = _eval(config, model, base_vectors_cache(config, model), runs["before"])
        atomic_write_text(metrics_path, json.dumps(metrics, indent=2))
    seed_everything(config.seed)  # the same RNG stream for training whether or not we evaluated
    model.max_seq_length = config.max_seq_length
    objective = build_objective(config, model, sentences)
    metrics.update({"objective": config.objective, "sentences": len(sentences), "device": device,
                    **train_steps(config, model, objective, sentences, out, device)})
    model.max_seq_length = saved_length
    with atomic_dir(out / "model") as tmp:
        model.save(str(tmp))
    if config.eval_beir:
        from training.evaluate import compare_with_before

        metrics["after"] = _eval(config, model, None, runs["after"])
        metrics["after_vs_before"] = compare_with_before(config.eval_beir, config.eval_split, runs["before"],
                                                         runs["after"])
        logger.info("after vs before: nDCG@10 %+.4f, paired randomisation p = %.4f",
                    metrics["after_vs_before"]["mean_diff"], metrics["after_vs_before"]["p_value"])
    atomic_write_text(metrics_path, json.dumps(metrics, indent=2))
    logger.info("saved %s", out / "model")
    return out / "model"

