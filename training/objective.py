"""The shape every training objective shares, so ``run`` can train any of them the same way."""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Protocol

from torch import nn


@dataclass
class Batch:
    """Texts for one step, one list per input column, plus optional float labels (one per row)."""

    columns: list[list[str]]
    labels: list[float] | None = None


class Objective(Protocol):
    """A loss module plus the rule that turns a batch of items (sentences, or documents for pairs) into inputs.

    ``make_batch`` must draw all its randomness from ``rng`` so a run is reproducible and resumable.
    """

    name: str
    loss: nn.Module

    def make_batch(self, sentences: list[Any], rng: random.Random) -> Batch: ...
