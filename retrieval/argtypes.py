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


def finite_number(minimum: float, inclusive: bool = True, what: str = "a number") -> Callable[[str], float]:
    """An argparse type: a finite float >= ``minimum`` (> with ``inclusive=False``); NaN and inf are refused."""
    bound = f"{'>=' if inclusive else '>'} {minimum:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
            raise argparse.ArgumentTypeError(f"expected {what} {bound}, got {text!r}")
        return value
    return parse


positive_seconds = finite_number(0, inclusive=False, what="a number of seconds")   # a NaN budget never runs out
non_negative = finite_number(0)
