"""Metrics: equal to raw pytrec_eval, BEIR's averaging and MRR, self-hit removal, run file round trips."""
from __future__ import annotations

import math

import pytest
import pytrec_eval

from retrieval import Retriever, load_beir
from retrieval.data import DataError
from retrieval.eval.metrics import (
    drop_self_hits, evaluate, format_metrics, per_query, read_json_run, read_run, read_trec_run, write_run,
    write_trec_run,
)
from retrieval.sample import sample_dir

KS = (1, 3, 10, 100)


@pytest.fixture(scope="module")
def sample_run():
    """A real BM25 run on the bundled sample, plus graded qrels with an unjudged and a missing query."""
    data = load_beir(sample_dir())
    run = Retriever.from_documents(sample_dir(), show_progress=False).run(data.queries, k=100)
    qrels = {q: dict(r) for q, r in data.qrels.items()}
    first = next(iter(qrels))
    qrels[first] = {**qrels[first], **{d: 2 for d in list(run[first])[3:5]}}  # graded judgments
    qrels["judged-but-not-run"] = {"nope": 1}
    run["run-but-not-judged"] = {"x": 1.0}
    return qrels, run


def _raw_pytrec(qrels, run, measure: str) -> float:
    """BEIR's recipe written out: pytrec_eval per query, mean over the queries it returns."""
    name, k = measure.split("_")[0], measure.rsplit("_", 1)[1]
    trec = {"ndcg": "ndcg_cut", "map": "map_cut", "recall": "recall", "P": "P"}[name]
    scores = pytrec_eval.RelevanceEvaluator(qrels, {f"{trec}.{k}"}).evaluate(run)
    return sum(s[f"{trec}_{k}"] for s in scores.values()) / len(scores)


def test_metrics_equal_raw_pytrec_eval(sample_run) -> None:
    qrels, run = sample_run
    ours = evaluate(qrels, run, KS)
    for k in KS:
        for trec, name in (("ndcg", "nDCG"), ("map", "MAP"), ("recall", "Recall"), ("P", "P")):
            assert abs(ours[f"{name}@{k}"] - _raw_pytrec(qrels, run, f"{trec}_{k}")) < 1e-9, (name, k)
    assert 0.5 < ours["nDCG@10"] <= 1.0


def test_mrr_matches_hand_computation() -> None:
    qrels = {"q1": {"d2": 1, "d3": 0}, "q2": {"d9": 1}, "q3": {"d1": 2}}
    run = {"q1": {"d1": 3.0, "d3": 2.0, "d2": 1.0},  # first relevant at rank 3 (d3 has grade 0)
           "q2": {"d1": 1.0},                        # none relevant
           "q3": {"d1": 0.5, "d4": 0.1}}             # rank 1
    m = evaluate(qrels, run, (1, 2, 10))
    assert m["MRR@10"] == pytest.approx((1 / 3 + 0 + 1) / 3, abs=1e-12)
    assert m["MRR@2"] == pytest.approx((0 + 0 + 1) / 3, abs=1e-12)
    assert per_query(qrels, run, (10,))["MRR@10"] == {"q1": 1 / 3, "q2": 0.0, "q3": 1.0}


def test_averaging_follows_beir() -> None:
    """pytrec metrics average over judged queries in the run; MRR divides by all judged queries (BEIR)."""
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d3": 1}}
    run = {"q1": {"d1": 1.0}, "q2": {}, "other": {"d1": 1.0}}
    m = evaluate(qrels, run, (10,))
    assert m["nDCG@10"] == pytest.approx(0.5)  # (1 + 0) / 2: q3 is absent, q2 has an empty list
    assert m["MRR@10"] == pytest.approx(1 / 3)
    assert per_query(qrels, run, (10,))["nDCG@10"]["q3"] == 0.0


def test_ignore_identical_ids() -> None:
    qrels = {"q1": {"d1": 1}}
    run = {"q1": {"q1": 5.0, "d1": 4.0}}
    assert evaluate(qrels, run, (1,))["nDCG@1"] == 0.0
    assert evaluate(qrels, run, (1,), ignore_identical_ids=True)["nDCG@1"] == 1.0
    assert run == {"q1": {"q1": 5.0, "d1": 4.0}}  # the caller's run is not modified
    assert drop_self_hits(run) == {"q1": {"d1": 4.0}}


def test_trec_and_json_round_trip(tmp_path, sample_run) -> None:
    _, run = sample_run
    write_trec_run(run, tmp_path / "run.trec")
    assert read_trec_run(tmp_path / "run.trec") == run
    first = (tmp_path / "run.trec").read_text().splitlines()[0].split()
    assert first[1] == "Q0" and first[3] == "1" and first[5] == "retrievekit"
    write_run(run, tmp_path / "run.json")
    assert read_json_run(tmp_path / "run.json") == run == read_run(tmp_path / "run.json")
    assert read_run(tmp_path / "run.trec") == run


def test_bad_inputs_are_named(tmp_path) -> None:
    (tmp_path / "bad.trec").write_text("q1 Q0 d1 1 0.5 tag\nq1 Q0 d2 2 oops tag\n")
    with pytest.raises(DataError, match="line 2, field 'score'"):
        read_trec_run(tmp_path / "bad.trec")
    with pytest.raises(ValueError, match="positive"):
        evaluate({"q": {"d": 1}}, {"q": {"d": 1.0}}, (0, 10))
    with pytest.raises(ValueError, match="NaN"):
        evaluate({"q": {"d": 1}}, {"q": {"d": math.nan}})
    with pytest.raises(ValueError, match="no judged query"):
        evaluate({"q": {"d": 1}}, {"other": {"d": 1.0}})
    with pytest.raises(ValueError, match="not an integer"):
        evaluate({"q": {"d": 0.5}}, {"q": {"d": 1.0}})


def test_format_metrics() -> None:
    assert format_metrics({"nDCG@10": 0.68634, "MRR@10": 0.5}) == "nDCG@10 0.6863  MRR@10 0.5000"


@pytest.mark.slow
def test_scifact_bm25_equals_raw_pytrec_eval(scifact_dir) -> None:
    data = load_beir(scifact_dir, "test")
    run = Retriever.from_documents(data.corpus(), show_progress=False).run(data.queries, k=100)
    ours = evaluate(data.qrels, run, (10, 100))
    assert abs(ours["nDCG@10"] - _raw_pytrec(data.qrels, run, "ndcg_cut_10")) < 1e-9
    assert abs(ours["Recall@100"] - _raw_pytrec(data.qrels, run, "recall_100")) < 1e-9
    assert ours["nDCG@10"] >= 0.686
