"""Where benchmark data lives: one setting, an explicit folder or ``$RETRIEVEKIT_DATA``.

The library has no default location (an installed package cannot know where a checkout keeps its data);
the tests and the benchmark scripts pass ``../shared/data`` as their own default.
"""
from __future__ import annotations

import os
import random
from collections.abc import Iterable
from pathlib import Path

from retrieval.errors import DataError

DATA_ENV = "RETRIEVEKIT_DATA"


def data_dir(folder: str | Path | None = None, *, default: str | Path | None = None) -> Path:
    """``folder`` if given, else ``$RETRIEVEKIT_DATA``, else ``default``; none of them is a :class:`DataError`.

    The folder holds ``beir/<dataset>/`` and ``mteb/<task>/``; it is not checked here (callers say which
    dataset they miss).
    """
    chosen = folder or os.environ.get(DATA_ENV) or default
    if not chosen:
        raise DataError(f"no data folder given: pass one (--data DIR in the CLI) or set {DATA_ENV}=DIR "
                        "(a folder with beir/ and mteb/ inside)")
    return Path(chosen)


def beir_folder(data: str | Path, dataset: str) -> Path:
    """``data/dataset`` when that folder exists (``data`` is a data root), else ``data`` (itself a BEIR folder)."""
    root = Path(data)
    return root / dataset if (root / dataset).is_dir() else root


def seeded_order(ids: Iterable[str], seed: int = 0) -> list[str]:
    """``ids`` sorted, then shuffled by ``random.Random(seed)``: benchmark subsets are its first N, so every script
    that names "the first 100 train queries" means the same ones."""
    order = sorted(ids)
    random.Random(seed).shuffle(order)
    return order
