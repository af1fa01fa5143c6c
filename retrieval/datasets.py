"""Where benchmark data lives: one setting, an explicit folder or ``$RETRIEVEKIT_DATA``.

The library has no default location (an installed package cannot know where a checkout keeps its data);
the tests and the benchmark scripts pass ``../shared/data`` as their own default.
"""
from __future__ import annotations

import os
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
