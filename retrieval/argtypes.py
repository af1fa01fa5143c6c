"""argparse types the CLI and the benchmark scripts share: a bad number is refused before any index or model loads,
not after a run (or, from the CLI, as if the index were damaged)."""
from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from retrieval.rerank.base import checked_weight


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an int >= ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value
    return parse


def weight(text: str) -> float:
    """An argparse type: an interpolation weight in [0, 1]."""
    try:
        return checked_weight(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a weight in [0, 1], got {text!r}") from None


def positive_seconds(text: str) -> float:
    """An argparse type: a finite number of seconds > 0 (a NaN budget would never run out)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def non_negative(text: str) -> float:
    """An argparse type: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value
