"""Fusion maths on hand-made rankings: exact RRF and min-max linear scores, ties, weights, edge cases."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from retrieval.hybrid.fusion import fuse, linear, minmax, rrf


def ranking(rows, scores):
    return np.array(rows, dtype=np.int64), np.array(scores, dtype=np.float32)


A = ranking([1, 2, 3], [3.0, 2.0, 1.0])      # e.g. BM25
B = ranking([3, 1, 4], [0.9, 0.5, 0.1])      # e.g. dense


def test_rrf_sums_reciprocal_ranks_from_one():
    rows, scores = rrf([A, B], k=10, rrf_k=60)
    assert rows.tolist() == [1, 3, 2, 4]
    expected = [1 / 61 + 1 / 62, 1 / 63 + 1 / 61, 1 / 62, 1 / 63]
    np.testing.assert_allclose(scores, expected, rtol=1e-6)


def test_rrf_ignores_score_scale_and_honours_weights():
    scaled = ranking([3, 1, 4], [900.0, 5.0, -1.0])
    assert rrf([A, scaled], k=4)[0].tolist() == rrf([A, B], k=4)[0].tolist()
    rows, scores = rrf([A, B], k=4, rrf_k=0, weights=[0.0, 1.0])
    assert rows.tolist() == [3, 1, 4, 2]
    np.testing.assert_allclose(scores, [1, 1 / 2, 1 / 3, 0], rtol=1e-6)


def test_linear_min_max_normalises_each_list():
    rows, scores = linear([A, B], k=10, weights=[0.5, 0.5])
    # A -> {1: 1, 2: .5, 3: 0}; B -> {3: 1, 1: .5, 4: 0}; missing = 0
    assert rows.tolist() == [1, 3, 2, 4]
    np.testing.assert_allclose(scores, [0.75, 0.5, 0.25, 0.0], atol=1e-7)


def test_linear_weight_moves_the_ranking():
    assert linear([A, B], k=2, weights=[0.1, 0.9])[0].tolist() == [3, 1]   # 0.9 vs 0.1 + 0.45
    assert linear([A, B], k=2, weights=[0.9, 0.1])[0].tolist() == [1, 2]   # 0.95 vs 0.45


def test_minmax_edges():
    np.testing.assert_allclose(minmax(np.array([5.0, 5.0])), [1.0, 1.0])
    np.testing.assert_allclose(minmax(np.array([-2.0, 0.0, 2.0])), [0.0, 0.5, 1.0])
    assert minmax(np.array([])).size == 0


def test_ties_break_by_row_and_k_cuts():
    rows, _ = rrf([ranking([7, 2], [1, 1]), ranking([2, 7], [1, 1])], k=5)
    assert rows.tolist() == [2, 7]
    assert rrf([A, B], k=2)[0].tolist() == [1, 3]


def test_empty_and_one_sided_inputs():
    empty = ranking([], [])
    rows, scores = fuse([empty, empty], k=3, method="linear")
    assert rows.size == 0 and scores.dtype == np.float32
    assert fuse([A, empty], k=3, method="rrf")[0].tolist() == [1, 2, 3]


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown fusion"):
        fuse([A, B], k=3, method="max")
    with pytest.raises(ValueError, match="weights"):
        linear([A, B], k=3, weights=[1.0])
    with pytest.raises(ValueError, match=">= 0"):
        rrf([A, B], k=3, weights=[-1.0, 1.0])
    with pytest.raises(ValueError, match="k must"):
        rrf([A, B], k=0)


lists = st.lists(st.integers(0, 30), unique=True, max_size=12).map(
    lambda rows: ranking(rows, sorted(np.linspace(1, 0, len(rows)).tolist(), reverse=True)))


@given(st.lists(lists, min_size=1, max_size=3), st.sampled_from(["rrf", "linear"]), st.integers(1, 40))
def test_fused_rows_are_the_union_best_first(rankings, method, k):
    rows, scores = fuse(rankings, k=k, method=method)
    union = set().union(*[set(r.tolist()) for r, _ in rankings])
    assert len(rows) == min(k, len(union)) and set(rows.tolist()) <= union
    assert len(set(rows.tolist())) == len(rows) and np.all(np.diff(scores) <= 1e-7)
