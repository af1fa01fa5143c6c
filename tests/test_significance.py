"""Paired tests on hand-made per-query scores whose p-values are known in closed form."""
from __future__ import annotations

import math

import numpy as np
import pytest

from retrieval.eval.significance import compare_runs, paired_t_test, randomization_test


def test_t_test_closed_form() -> None:
    # differences 2, 4, 6: t = 4 / (2 / sqrt 3) = 2 sqrt 3, df = 2, p = 1 - t / sqrt(2 + t^2) = 1 - sqrt(6/7)
    res = paired_t_test({"a": 3.0, "b": 5.0, "c": 7.0}, {"a": 1.0, "b": 1.0, "c": 1.0})
    assert res.statistic == pytest.approx(2 * math.sqrt(3), abs=1e-12)
    assert res.p_value == pytest.approx(1 - math.sqrt(6 / 7), abs=1e-12)
    assert res.mean_diff == pytest.approx(4.0) and res.n == 3 and res.test == "t"


def test_randomization_exact_distribution() -> None:
    # 8 sign flips of (2, 4, 6): only all-plus and all-minus reach |mean| >= 4, so p = 2/8
    res = randomization_test([3.0, 5.0, 7.0], [1.0, 1.0, 1.0])
    assert res.p_value == pytest.approx(0.25, abs=1e-12)
    # A beats B by the same margin on all 8 queries: p = 2 / 2^8
    res = randomization_test(np.ones(8), np.zeros(8))
    assert res.p_value == pytest.approx(2 / 256, abs=1e-12)
    assert res.significant(0.05)


def test_identical_systems_are_not_different() -> None:
    x = [0.1, 0.5, 0.9, 0.3]
    assert randomization_test(x, x).p_value == pytest.approx(1.0)
    t = paired_t_test(x, list(x))
    assert (t.statistic, t.p_value, t.significant()) == (0.0, 1.0, False)   # scipy alone says NaN


def test_monte_carlo_is_seeded() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.random(40), rng.random(40)
    p1 = randomization_test(a, b, n_resamples=2000, seed=7).p_value
    assert p1 == randomization_test(a, b, n_resamples=2000, seed=7).p_value
    assert 0.0 < p1 <= 1.0


def test_ids_must_match() -> None:
    with pytest.raises(ValueError, match="only in A"):
        paired_t_test({"a": 1.0, "b": 2.0, "c": 0.0}, {"a": 1.0, "b": 2.0, "d": 0.0})
    with pytest.raises(ValueError, match="at least 2"):
        randomization_test([1.0], [0.0])


@pytest.mark.parametrize("a, b, words", [
    ({"a": math.nan, "b": 1.0}, {"a": 0.1, "b": 0.2}, "query 'a': scores must be finite numbers, got A nan"),
    ([0.1, 0.2], [0.3, math.inf], "query 1: scores must be finite"),
    ([0.1, None], [0.3, 0.2], "query 1: scores must be finite"),
    ([0.1, "x"], [0.3, 0.2], "scores of A must be numbers"),
    ({1: 0.5, "x": 0.2}, {2: 0.4, "x": 0.3}, r"1 only in A \(e.g. \[1\]\), 1 only in B"),   # mixed id types
])
def test_bad_scores_are_named(a, b, words) -> None:
    """A NaN used to give a NaN or misleading p-value; mixed id types raised TypeError inside sorted()."""
    for test in (paired_t_test, randomization_test):
        with pytest.raises(ValueError, match=words):
            test(a, b)


def test_mixed_id_types_pair_by_id() -> None:
    res = paired_t_test({1: 3.0, "b": 5.0, "c": 7.0}, {"c": 1.0, 1: 1.0, "b": 1.0})
    assert res.mean_diff == pytest.approx(4.0) and res.n == 3


def test_compare_runs() -> None:
    qrels = {f"q{i}": {"good": 1} for i in range(8)}
    better = {q: {"good": 2.0, "bad": 1.0} for q in qrels}
    worse = {q: {"bad": 2.0, "good": 1.0} for q in qrels}
    res = compare_runs(qrels, better, worse, metric="MRR@10")
    assert res.mean_diff == pytest.approx(0.5)
    assert res.p_value == pytest.approx(2 / 256)
    with pytest.raises(ValueError, match="unknown test"):
        compare_runs(qrels, better, worse, test="wilcoxon")
    with pytest.raises(ValueError, match="metric"):
        compare_runs(qrels, better, worse, metric="ndcg10")


@pytest.mark.parametrize("metric", [None, "nDCG@0", "nDCG@\u00b2", "ndcg@10", "nDCG"])
def test_compare_runs_names_a_bad_metric(metric) -> None:
    """None raised AttributeError; a superscript digit passed isdigit() and failed in int()."""
    with pytest.raises(ValueError, match="metric must be one of"):
        compare_runs({"q": {"d": 1}, "r": {"d": 1}}, {"q": {"d": 1.0}, "r": {"d": 1.0}}, {"q": {"d": 1.0}, "r": {}},
                     metric=metric)


def test_compare_runs_reads_a_zero_padded_cut_off() -> None:
    qrels = {"q": {"d": 1}, "r": {"d": 1}}
    a, b = {"q": {"d": 1.0}, "r": {"d": 1.0}}, {"q": {"d": 1.0}, "r": {}}
    assert compare_runs(qrels, a, b, metric="nDCG@07").mean_diff == compare_runs(qrels, a, b, metric="nDCG@7").mean_diff
