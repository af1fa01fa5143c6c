"""Checkpoints of a training run: written atomically, verified on read, newest readable one wins.

``OUT/checkpoints/step-N/`` holds the loss module's state (which includes the model), the optimizer, the
scheduler and the RNG state (``torch.save``, read back with ``weights_only=True``), and ``trainer.json``
with the step, the losses so far and the SHA-256 of every tensor file. A checkpoint that cannot be read
in full (a truncated or altered file, a missing one) is skipped with a warning and the one before it is
used, so a damaged newest checkpoint costs ``checkpoint_every`` steps instead of the run.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from retrieval.persistence import atomic_dir

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2 added per-file SHA-256; 1 (without) is still read
READABLE_VERSIONS = (1, 2)
META_FILE = "trainer.json"
TENSOR_FILES = ("loss_state.pt", "optimizer.pt", "scheduler.pt", "rng.pt")


@dataclass
class Checkpoint:
    """Everything one checkpoint holds, read and verified, not yet applied."""

    folder: Path
    step: int
    losses: list[float]
    states: dict[str, Any]  # file name -> loaded object


def checkpoint_dirs(out: Path) -> list[Path]:
    """Finished checkpoints of run folder ``out``, oldest first."""
    folder = Path(out) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and re.fullmatch(r"step-\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def save_checkpoint(out: Path, step: int, loss: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, losses: list[float], keep: int) -> Path:
    """Write ``checkpoints/step-N`` atomically (temp folder + rename) and prune all but the newest ``keep``."""
    states = {"loss_state.pt": loss.state_dict(), "optimizer.pt": optimizer.state_dict(),
              "scheduler.pt": scheduler.state_dict(), "rng.pt": rng_state()}
    target = Path(out) / "checkpoints" / f"step-{step:07d}"
    digests = {}
    with atomic_dir(target) as tmp:
        for name, state in states.items():
            buffer = io.BytesIO()
            torch.save(state, buffer)
            data = buffer.getvalue()
            (tmp / name).write_bytes(data)
            digests[name] = hashlib.sha256(data).hexdigest()
        meta = {"format_version": FORMAT_VERSION, "step": step, "losses": losses, "sha256": digests}
        (tmp / META_FILE).write_text(json.dumps(meta), encoding="utf-8")
    for old in checkpoint_dirs(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def _read_meta(folder: Path) -> dict[str, Any]:
    path = folder / META_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format_version") not in READABLE_VERSIONS:
        raise ValueError(f"{path}: checkpoint format {meta.get('format_version') if isinstance(meta, dict) else meta!r}"
                         f", this version reads {READABLE_VERSIONS}")
    if not isinstance(meta.get("step"), int) or not isinstance(meta.get("losses"), list):
        raise ValueError(f"{path}: missing 'step' or 'losses'")
    return meta


def _read_tensor_file(path: Path, digest: str | None, device: str) -> Any:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: unreadable ({exc})") from None
    if digest is not None and hashlib.sha256(data).hexdigest() != digest:
        raise ValueError(f"{path}: SHA-256 differs from the one recorded in {META_FILE} (truncated or altered)")
    try:
        return torch.load(io.BytesIO(data), map_location=device, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError... for a damaged file
        raise ValueError(f"{path}: not a readable torch file ({type(exc).__name__}: {exc})") from None


def read_checkpoint(folder: Path, device: str) -> Checkpoint:
    """Read and verify every file of one checkpoint; ValueError names the first bad file."""
    meta = _read_meta(folder)
    digests = meta.get("sha256") or {}
    states = {name: _read_tensor_file(folder / name, digests.get(name), device) for name in TENSOR_FILES}
    return Checkpoint(folder, int(meta["step"]), [float(x) for x in meta["losses"]], states)


def newest_readable(out: Path, device: str) -> Checkpoint | None:
    """The newest checkpoint that reads in full; each damaged newer one is logged and skipped.

    None when the run has no checkpoint; ValueError when it has some and none can be read.
    """
    found = checkpoint_dirs(out)
    problems = []
    for folder in reversed(found):
        try:
            return read_checkpoint(folder, device)
        except ValueError as exc:
            problems.append(str(exc))
            logger.warning("skipping damaged checkpoint %s: %s", folder.name, exc)
    if found:
        raise ValueError(f"{Path(out) / 'checkpoints'}: no readable checkpoint ({'; '.join(problems)}); "
                         f"delete the folder to start the run over")
    return None


def apply_checkpoint(checkpoint: Checkpoint, loss: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: torch.optim.lr_scheduler.LRScheduler) -> tuple[int, list[float]]:
    """Restore model, optimizer, scheduler and RNG from a read checkpoint; returns ``(step, losses)``."""
    states = checkpoint.states
    loss.load_state_dict(states["loss_state.pt"])
    optimizer.load_state_dict(states["optimizer.pt"])
    scheduler.load_state_dict(states["scheduler.pt"])
    torch.set_rng_state(states["rng.pt"]["torch"])
    if "cuda" in states["rng.pt"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["rng.pt"]["cuda"])
    return checkpoint.step, checkpoint.losses
