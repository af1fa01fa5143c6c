"""The shapes the trainer works with, so one loop trains every objective the same way.

* :class:`Objective`: a loss module plus the rule that turns a batch of training items into model inputs.
* :class:`ModelKind`: how a kind of model (bi-encoder, cross-encoder) is loaded, saved and evaluated.
* :class:`ObjectiveModule`: what an objective's module (named in :data:`training.registry.OBJECTIVES`) provides.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from torch import nn


@dataclass
class Batch:
    """Inputs for one step, one list per input column, plus optional float labels (one per row).

    A column holds texts for a bi-encoder and (query, passage) pairs for a cross-encoder: whatever the
    model's ``preprocess`` tokenises.
    """

    columns: list[list[Any]]
    labels: list[float] | None = None


class Objective(Protocol):
    """A loss module over tokenised columns, and ``make_batch`` from training items.

    ``make_batch`` must draw all its randomness from ``rng`` so a run is reproducible and resumable.
    ``loss`` holds the trained model, so its ``state_dict`` is what a checkpoint needs.
    """

    name: str
    loss: nn.Module

    def make_batch(self, items: list[Any], rng: random.Random) -> Batch: ...


class ModelKind(Protocol):
    """Load, save and evaluate one kind of model; ``config`` is the run's config."""

    def load(self, config: Any, device: str) -> Any: ...

    def save(self, model: Any, config: Any, folder: Path) -> None: ...

    def evaluate(self, model: Any, config: Any, run_path: Path, cache: str | None) -> dict[str, Any]: ...


class ObjectiveModule(Protocol):
    """What ``training.trainer.run`` calls on an objective's module."""

    MODEL: ModelKind

    def training_items(self, config: Any) -> Sequence[Any]: ...

    def build(self, config: Any, model: Any, items: Sequence[Any]) -> Objective: ...
