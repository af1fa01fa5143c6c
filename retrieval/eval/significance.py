"""Paired significance tests between two systems' per-query scores (same queries, same metric).

Two standard choices for IR (Smucker, Allan & Carterette, CIKM 2007): the paired t-test
(``scipy.stats.ttest_rel``) and the paired randomisation (sign-flip permutation) test on the mean
difference (``scipy.stats.permutation_test`` with ``permutation_type="samples"``, exact when
``2**n <= n_resamples``, otherwise seeded Monte Carlo). Both are two-sided.

    >>> from retrieval.eval.metrics import per_query
    >>> a, b = per_query(qrels, run_a)["nDCG@10"], per_query(qrels, run_b)["nDCG@10"]
    >>> randomization_test(a, b).p_value
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from retrieval.types import Qrels, Run

TESTS = ("t", "randomization")
Scores = Mapping[str, float] | Sequence[float] | np.ndarray


@dataclass(frozen=True)
class PairedTestResult:
    """Outcome of a paired test of system A against system B (``mean_diff`` = mean(A - B))."""

    test: str
    n: int
    mean_a: float
    mean_b: float
    mean_diff: float
    statistic: float
    p_value: float
    n_resamples: int | None = None
    seed: int | None = None

    def significant(self, alpha: float = 0.05) -> bool:
        return self.p_value < alpha

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_arrays(a: Scores, b: Scores) -> tuple[np.ndarray, np.ndarray]:
    """Align two score collections: dicts by query id (the id sets must match), sequences by position."""
    if isinstance(a, Mapping) != isinstance(b, Mapping):
        raise TypeError("pass both scores as {qid: score} dicts or both as sequences")
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        only_a, only_b = set(a) - set(b), set(b) - set(a)
        if only_a or only_b:
            raise ValueError(f"query ids differ: {len(only_a)} only in A (e.g. {sorted(only_a, key=str)[:3]}), "
                             f"{len(only_b)} only in B (e.g. {sorted(only_b, key=str)[:3]})")
        ids = sorted(a, key=str)
        x, y = _scores([a[q] for q in ids], "A"), _scores([b[q] for q in ids], "B")
        names = ids
    else:
        x, y = _scores(a, "A"), _scores(b, "B")
        if x.shape != y.shape or x.ndim != 1:
            raise ValueError(f"score vectors must be 1-d and of equal length, got {x.shape} and {y.shape}")
        names = list(range(len(x)))
    bad = np.flatnonzero(~(np.isfinite(x) & np.isfinite(y)))
    if len(bad):
        i = int(bad[0])
        raise ValueError(f"query {names[i]!r}: scores must be finite numbers, got A {float(x[i])}, B {float(y[i])} "
                         f"({len(bad)} such queries); a NaN would make the test's p-value meaningless")
    if len(x) < 2:
        raise ValueError(f"a paired test needs at least 2 queries, got {len(x)}")
    return x, y


def _scores(values: Any, side: str) -> np.ndarray:
    """Per-query scores as float64, or a ValueError naming the side whose values are not numbers."""
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"scores of {side} must be numbers ({exc})") from None


def paired_t_test(a: Scores, b: Scores) -> PairedTestResult:
    """Two-sided paired Student t-test on per-query differences.

    Identical scores (every difference 0) give t = 0 and p = 1, where scipy's 0/0 gives NaN (which no
    report or JSON file can hold, and which no ``p < alpha`` reads as "no difference").
    """
    from scipy.stats import ttest_rel

    x, y = paired_arrays(a, b)
    if np.array_equal(x, y):
        statistic, p_value = 0.0, 1.0
    else:
        res = ttest_rel(x, y)
        statistic, p_value = float(res.statistic), float(res.pvalue)
    return PairedTestResult("t", len(x), float(x.mean()), float(y.mean()), float((x - y).mean()), statistic, p_value)


def randomization_test(a: Scores, b: Scores, n_resamples: int = 10_000, seed: int = 0) -> PairedTestResult:
    """Two-sided paired randomisation test: randomly swap A/B per query, compare mean differences."""
    from scipy.stats import permutation_test

    x, y = paired_arrays(a, b)

    def mean_diff(u: np.ndarray, v: np.ndarray, axis: int) -> np.ndarray:
        return np.mean(u - v, axis=axis)

    res = permutation_test((x, y), mean_diff, permutation_type="samples", vectorized=True,
                           n_resamples=n_resamples, alternative="two-sided", rng=np.random.default_rng(seed))
    return PairedTestResult("randomization", len(x), float(x.mean()), float(y.mean()), float((x - y).mean()),
                            float(res.statistic), float(res.pvalue), n_resamples=n_resamples, seed=seed)


def compare_runs(qrels: Qrels, run_a: Run, run_b: Run, metric: str = "nDCG@10", test: str = "randomization",
                 ignore_identical_ids: bool = False, **options: Any) -> PairedTestResult:
    """Evaluate two runs per query on ``metric`` and test the difference (A minus B)."""
    from retrieval.eval.metrics import per_query

    if test not in TESTS:
        raise ValueError(f"unknown test {test!r}; choose one of {TESTS}")
    from retrieval.eval.metrics import MEASURES

    name, _, k = metric.partition("@") if isinstance(metric, str) else ("", "", "")
    if name not in MEASURES or not k.isascii() or not k.isdigit() or int(k) < 1:
        raise ValueError(f"metric must be one of {MEASURES} with a cut-off >= 1, like 'nDCG@10'; got {metric!r}")
    key = f"{name}@{int(k)}"    # "nDCG@07" is nDCG@7
    a = per_query(qrels, run_a, (int(k),), ignore_identical_ids)[key]
    b = per_query(qrels, run_b, (int(k),), ignore_identical_ids)[key]
    return paired_t_test(a, b) if test == "t" else randomization_test(a, b, **options)
