"""The pure parts of the scale-out, without Ray: global BM25 statistics, the exact top-k merge, configs."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from retrieval.distributed.build import shard_offsets
from retrieval.distributed.cluster import ENCODE_BATCH, ClusterConfig, cluster_config
from retrieval.distributed.merge import ShardHits, merge_batches, merge_top_k
from retrieval.distributed.stats import GlobalStatsIndex, global_idfs, shard_terms
from retrieval.errors import MissingDependency
from retrieval.sparse.scoring import BM25Config, BM25Index, average_length, idf, term_weights, weights_from_stats

DOCS = [["cat", "sat", "mat"], ["dog", "sat"], ["cat", "cat", "purr"], ["bird", "sang", "sang", "sang"],
        ["dog", "bark", "cat"], ["mat"], ["cat"], ["dog", "dog", "mat", "sat", "purr"]]
QUERIES = [["cat", "sat"], ["dog"], ["sang", "mat", "purr"], ["mat", "cat", "dog", "bird"], ["nothing"]]


def test_weights_from_stats_with_the_index_own_stats_is_term_weights() -> None:
    index = BM25Index.build(DOCS)
    tf, cfg = index.tf, index.config
    avgdl = average_length(tf.shape[0], int(tf.sum()))
    own = weights_from_stats(tf, cfg, idf(np.diff(tf.tocsc().indptr), tf.shape[0], cfg), avgdl)
    assert (own != term_weights(tf, cfg)).nnz == 0


@pytest.mark.parametrize("variant", ["lucene", "okapi", "robertson", "atire"])
@pytest.mark.parametrize("cuts", [[3], [1, 5], [2, 4, 6]])
def test_shards_with_global_stats_score_bit_for_bit_as_one_index(variant: str, cuts: list[int]) -> None:
    config = BM25Config(variant=variant)
    whole = BM25Index.build(DOCS, config)
    bounds = [0, *cuts, len(DOCS)]
    parts = [BM25Index.build(DOCS[a:b], config) for a, b in zip(bounds, bounds[1:])]
    counts = [shard_terms(p) for p in parts]
    avgdl = average_length(sum(c.n_docs for c in counts), sum(c.total_len for c in counts))
    shards = [GlobalStatsIndex.of(p, term_idf, avgdl) for p, term_idf in zip(parts, global_idfs(counts, config))]
    expected = whole.scores(QUERIES)
    got = np.hstack([s.scores(QUERIES) for s in shards])
    assert np.array_equal(got, expected)


def test_a_shard_without_global_stats_scores_differently() -> None:
    whole, part = BM25Index.build(DOCS), BM25Index.build(DOCS[:4])
    assert not np.allclose(part.scores(QUERIES), whole.scores(QUERIES)[:, :4])


def test_global_stats_index_is_read_only() -> None:
    part = BM25Index.build(DOCS[:2])
    shard = GlobalStatsIndex.of(part, global_idfs([shard_terms(part)], part.config)[0], 2.5)
    with pytest.raises(ValueError, match="read-only"):
        shard.add([["new"]])
    with pytest.raises(ValueError, match="read-only"):
        shard.remove([0])


def _hits(rows: list[int], scores: list[float]) -> ShardHits:
    return ShardHits(np.array(rows, np.int64), np.array(scores, np.float32), [f"d{r}" for r in rows])


def test_merge_orders_by_score_then_global_row() -> None:
    merged = merge_top_k([_hits([7, 5], [2.0, 1.0]), _hits([1, 3, 4], [2.0, 1.0, 1.0])], k=4)
    assert merged.rows.tolist() == [1, 7, 3, 4]
    assert merged.ids == ["d1", "d7", "d3", "d4"]
    assert merged.scores.tolist() == [2.0, 2.0, 1.0, 1.0]


def test_merge_equals_a_full_sort_of_every_shard_result() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 20, 400).astype(np.float32)   # many ties
    rows = np.arange(400)
    shards = [rows[i::4] for i in range(4)]
    parts = []
    for r in shards:
        order = np.lexsort((r, -scores[r]))[:50]
        parts.append(_hits(r[order].tolist(), scores[r][order].tolist()))
    merged = merge_top_k(parts, k=50)
    expected = np.lexsort((rows, -scores))[:50]
    assert merged.rows.tolist() == expected.tolist()


def test_dense_merge_lists_ties_as_faiss_flat_does() -> None:
    faiss = pytest.importorskip("faiss")
    rng = np.random.default_rng(1)
    vectors = rng.integers(0, 3, (60, 4)).astype(np.float32)    # integer vectors: many exactly equal scores
    queries = rng.integers(0, 3, (25, 4)).astype(np.float32)

    def flat(rows: np.ndarray) -> object:
        index = faiss.IndexIDMap2(faiss.index_factory(4, "Flat", faiss.METRIC_INNER_PRODUCT))
        index.add_with_ids(vectors[rows], rows.astype(np.int64))
        return index

    for k in (7, 30):
        want_s, want_rows = flat(np.arange(60)).search(queries, k)
        shards = [np.arange(0, 25), np.arange(25, 41), np.arange(41, 60)]
        answers = []
        for rows in shards:
            s, lab = flat(rows).search(queries, k)
            answers.append([_hits(r.tolist(), v.tolist()) for r, v in zip(lab, s)])
        merged = merge_batches(answers, k, ties="descending")
        for m, rows, scores in zip(merged, want_rows, want_s):
            assert m.scores.tolist() == scores.tolist()
            above = scores > scores[-1]            # ties on the cut: FAISS keeps whichever its heap held
            assert m.rows[above].tolist() == rows[above].tolist()
    with pytest.raises(ValueError, match="ties"):
        merge_top_k([], 3, ties="random")


def test_merge_of_nothing_and_short_lists() -> None:
    assert len(merge_top_k([], 5)) == 0
    assert merge_top_k([_hits([], []), _hits([2], [0.5])], 5).rows.tolist() == [2]
    assert [len(m) for m in merge_batches([[_hits([1], [1.0]), _hits([], [])], [_hits([9], [3.0]), _hits([], [])]],
                                          k=3)] == [2, 0]


def test_merge_refuses_a_shard_that_skipped_a_query() -> None:
    with pytest.raises(ValueError, match="every shard"):
        merge_batches([[_hits([1], [1.0])], []], k=3)


def test_shard_offsets_cut_contiguous_near_equal_ranges() -> None:
    assert shard_offsets(10, 3) == [0, 3, 6, 10]
    assert shard_offsets(2, 4) == [0, 1, 2]
    assert shard_offsets(5, 1) == [0, 5]


def test_cluster_config_round_trips_through_json_and_checks_values() -> None:
    config = ClusterConfig(address="auto", shards=4, encode_actors=2, encode_gpus=0.5)
    assert ClusterConfig.from_dict(config.to_dict()) == config
    assert cluster_config("10.0.0.1:6379", shards=3).shards == 3
    assert cluster_config(None).address == "local"
    with pytest.raises(ValueError, match="shards"):
        ClusterConfig(shards=0)
    with pytest.raises(ValueError, match="address"):
        ClusterConfig(address="")
    with pytest.raises(TypeError):
        cluster_config(4)


def test_encode_batch_is_the_single_process_block() -> None:
    pytest.importorskip("sentence_transformers")
    from retrieval.dense.encoders import STREAM_BLOCK

    assert ENCODE_BATCH == STREAM_BLOCK


def test_missing_ray_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from retrieval.distributed.cluster import ray_module

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingDependency, match=r"retrievekit\[ray\]"):
        ray_module()


def test_importing_the_library_and_this_package_never_imports_ray() -> None:
    code = ("import sys, retrieval, retrieval.distributed; from retrieval.distributed import build, search, shards; "
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
