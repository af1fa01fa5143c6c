"""Metrics: equal to raw pytrec_eval, BEIR's averaging and MRR, self-hit removal, run file round trips."""
from __future__ import annotations

import gzip
import logging
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
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


def test_mrr_orders_ties_as_pytrec_eval_does() -> None:
    """Tied scores: MRR ranks documents as trec_eval does (score, then id, descending), so it agrees with
    pytrec_eval's recip_rank and with its P@1 on the same run; dict order used to decide (MRR@1 1.0, P@1 0)."""
    qrels = {"q": {"a": 1, "b": 0, "c": 0}}
    run = {"q": {"a": 1.0, "b": 1.0, "c": 1.0}}   # trec_eval ranks c, b, a
    assert per_query(qrels, run, (1, 10))["MRR@10"] == {"q": 1 / 3}
    rng = np.random.default_rng(0)
    ids = ["d0", "d1", "d10", "d9", "D", "é", "x"]
    for _ in range(300):
        docs = list(rng.permutation(ids)[: rng.integers(1, len(ids) + 1)])
        qrels = {"q": {d: int(rng.choice([-1, 0, 0, 1, 2])) for d in ids if rng.random() < 0.6} or {"d0": 1}}
        run = {"q": {d: float(rng.choice([0.0, 0.5, 1.0])) for d in docs}}
        ours = per_query(qrels, run, (1, 1000))
        raw = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank", "P.1"}).evaluate(run)["q"]
        assert ours["MRR@1000"]["q"] == pytest.approx(raw["recip_rank"], abs=1e-12), (qrels, run)
        assert ours["MRR@1"]["q"] == pytest.approx(raw["P_1"], abs=1e-12), (qrels, run)


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


# --- issue #12: run files (defect 14) and the hardening of run/qrels reading and cleaning -----------


@pytest.mark.parametrize("run, tag, words", [
    ({"q 1": {"d1": 1.0}}, "t", "query id 'q 1' is empty or contains whitespace"),
    ({"q1": {"doc\t7": 1.0}}, "t", "query 'q1': document id 'doc\\\\t7' is empty or contains whitespace"),
    ({"q1": {"": 1.0}}, "t", "document id '' is empty"),
    ({"q1": {"d\u00a0x": 1.0}}, "t", "document id 'd\\\\xa0x' is empty or contains whitespace"),  # no-break space
    ({"q1": {"d1": 1.0}}, "my run", "tag 'my run' is empty or contains whitespace"),
    ({"q1": {"d\ud800": 1.0}}, "t", "lone surrogate"),
    ({"q1": {"d1": math.nan}}, "t", "score is NaN"),
    ({"q1": {"d1": "high"}}, "t", "score 'high' is not a number"),
    ({1: {"d1": 1.0}, "1": {"d2": 1.0}}, "t", "query ids 1 and '1' are the same id as text"),   # one would be lost
    ({"q1": {7: 1.0, "7": 2.0}}, "t", "query 'q1': docids 7 and '7' are the same id as text"),
    (["q1"], "t", "a run is {qid: {docid: score}}, got list"),
])
def test_trec_writer_refuses_what_it_cannot_write(tmp_path, run, tag, words) -> None:
    """Defect 14: ids with whitespace made lines no TREC tool can parse. Nothing is written, an old file survives."""
    out = tmp_path / "run.trec"
    out.write_text("q0 Q0 d0 1 1.0 old\n")
    with pytest.raises(DataError, match=words) as err:
        write_trec_run(run, out, tag=tag)
    assert str(out) in str(err.value)
    assert out.read_text() == "q0 Q0 d0 1 1.0 old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.trec"]  # no temp file left behind


def test_json_writer_refuses_nan_and_writes_atomically(tmp_path) -> None:
    out = tmp_path / "run.json"
    with pytest.raises(DataError, match="query 'q', document 'd': score is NaN"):
        write_run({"q": {"d": math.nan}}, out)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    write_run({"q": {"b": 1.0, "a": math.inf}}, out)
    assert list(read_run(out)["q"].items()) == [("b", 1.0), ("a", math.inf)]  # order kept
    with pytest.raises(DataError, match="query ids 1 and '1' are the same id as text"):
        write_run({1: {"d": 1.0}, "1": {"e": 2.0}}, out)          # json.dumps would keep only one of them
    assert list(read_run(out)["q"]) == ["b", "a"]                # the old file survives
    write_run({1: {2: 0.5}}, out)                                 # non-str ids are written as text
    assert read_run(out) == {"1": {"2": 0.5}}


@pytest.mark.parametrize("content, words", [
    ("q1 Q0 d1 1 0.5 t\nq1 Q0 d2 2 0.4\n", "line 2: expected 'qid Q0 docid rank score tag', got 5 fields"),
    ("q1 Q0 d1 1 0.5 t\n\nq1 Q0 d2 2 0.4 t extra\n", "line 3: expected .* got 7 fields"),
    ("q1 Q0 d1 1 nan t\n", "line 1, field 'score': score is NaN"),
    ("q1 Q0 d1 1 0.5 t\nq1 Q0 d1 2 0.4 t\n", "line 2: document 'd1' is listed again for query 'q1' with another score"),
    ("q1 Q0 d\x001 1 0.5 t\n", "line 1, field 'docid': id 'd\\\\x001' contains a NUL"),
])
def test_trec_run_reader_names_the_line(tmp_path, content, words) -> None:
    (tmp_path / "r.trec").write_text(content)
    with pytest.raises(DataError, match=rf"r.trec, {words}"):
        read_run(tmp_path / "r.trec")


def test_trec_run_repeated_identical_lines_are_counted(tmp_path, caplog) -> None:
    (tmp_path / "r.trec").write_text("q1 Q0 d1 1 0.5 t\nq1 Q0 d1 1 0.5 t\nq1 Q0 d2 2 0.25 t\n")
    with caplog.at_level(logging.WARNING, logger="retrieval.eval.metrics"):
        assert read_run(tmp_path / "r.trec") == {"q1": {"d1": 0.5, "d2": 0.25}}
    assert "1 repeated lines (same query, document and score) were kept once" in caplog.text


@pytest.mark.parametrize("raw, words", [
    (b'{"q": {"d": 1.0}}\xff', "line 1: not valid UTF-8"),
    (b'{"q": {"d": 1.0, "d": 2.0}}', "key 'd' appears twice in one object"),
    (b'{"q": {"d": 1.0}, "q": {"e": 1.0}}', "key 'q' appears twice in one object"),
    (b'{"q": {"d": true}}', "query 'q', document 'd': score must be a number, got bool"),
    (b'{"q": {"d": "1.0"}}', "score must be a number, got str"),
    (b'{"q": {"d": 1' + b"0" * 400 + b"}}", "score is out of range"),
    (b'{"q": {"d": 1' + b"0" * 5000 + b"}}", "unreadable JSON"),
    (b'{"q": {"d": NaN}}', "score is NaN"),
    (b"[" * 100_000, "unreadable JSON \\(RecursionError"),
    (b'{"q": [1, 2]}', "query 'q': expected {docid: number}, got list"),
    (b'{"q\\ud800": {"d": 1}}', "field 'qid': lone surrogate"),
    (b'{"q": {"d\\u0000": 1}}', "query 'q', field 'docid': id .* contains a NUL"),
    (b"", "file is empty"),
], ids=["non-utf8", "dup-doc", "dup-query", "bool", "str", "huge-int", "5000-digits", "nan", "deep-nesting",
        "list", "surrogate", "nul", "empty"])
def test_json_run_reader_names_the_file(tmp_path, raw, words) -> None:
    (tmp_path / "r.json").write_bytes(raw)
    with pytest.raises(DataError, match=rf"r.json[,:] .*{words}"):
        read_run(tmp_path / "r.json")


def test_gzip_trec_run_errors_name_the_file(tmp_path) -> None:
    data = gzip.compress(b"".join(b"q1 Q0 d%d %d 1.0 t\n" % (i, i + 1) for i in range(500)))
    (tmp_path / "r.trec.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"r.trec.gz: gzip file is truncated"):
        read_run(tmp_path / "r.trec.gz")


@pytest.mark.parametrize("qrels, run, words", [
    ({"q": {"a\x00x": 1}}, {"q": {"a\x00y": 1.0}}, "contains a NUL"),           # pytrec_eval would judge 'a' == 'a'
    ({"q": {"d": 2**40}}, {"q": {"d": 1.0}}, "out of range"),                    # pytrec_eval silently scores 0
    ({"q": {"d": math.inf}}, {"q": {"d": 1.0}}, "is not an integer"),
    ({"q": {"d": math.nan}}, {"q": {"d": 1.0}}, "is not an integer"),
    ({"q": ["d"]}, {"q": {"d": 1.0}}, "qrels\\['q'\\]: expected {docid: grade}, got list"),
    ({"q": {"d": 1}}, {"q": {"d": "x"}}, "run\\['q'\\]\\['d'\\]: score 'x' is not a number"),
    ({"q": {"d": 1}}, {"q": {"d": None}}, "score None is not a number"),
    ({1: {"d": 1}, "1": {"e": 1}}, {"1": {"d": 1.0}}, "qrels: qids 1 and '1' are the same id as text"),
    ({"q": {"d": 1}}, {"q": {1: 0.5, "1": 0.9}}, "run\\['q'\\]: docids 1 and '1' are the same id as text"),
    (["q"], {"q": {"d": 1.0}}, "qrels must be {qid: {docid: grade}}, got list"),
    ({"q": {"d": 1}}, None, "a run must be {qid: {docid: score}}, got NoneType"),
])
def test_evaluate_names_bad_ids_and_values(qrels, run, words) -> None:
    with pytest.raises(ValueError, match=words):
        evaluate(qrels, run, (10,))


SURROGATE_CHILD = """
from retrieval.eval.metrics import evaluate
for qrels, run in [({"q\\ud800": {"d": 1}}, {"q\\ud800": {"d": 1.0}}), ({"q": {"d": 1}}, {"q": {"d\\udfff": 1.0}})]:
    try:
        evaluate(qrels, run, (10,))
    except ValueError as exc:
        print(exc)
"""


def test_surrogate_ids_never_reach_pytrec_eval() -> None:
    """pytrec_eval segfaults on an id holding a lone surrogate: run in a child so a regression cannot kill pytest."""
    repo = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", SURROGATE_CHILD], cwd=repo, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, f"child died with {done.returncode}: {done.stderr[-2000:]}"
    lines = done.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("qrels, field 'qid': lone surrogate U+D800")
    assert lines[1].startswith("run['q'], field 'docid': lone surrogate U+DFFF")


def test_evaluate_accepts_numpy_numbers() -> None:
    qrels = {"q": {"d": np.int64(1)}}
    assert evaluate(qrels, {"q": {"d": np.float32(0.5)}}, (1,))["nDCG@1"] == 1.0


@pytest.mark.parametrize("k_values, words", [
    ([1.5], "k_values must be positive integers, got \\[1.5\\]"),     # was silently cut to 1
    (["10"], "k_values must be positive integers"),
    ([True], "k_values must be positive integers"),
    ([0, 10], "k_values must be positive integers"),
    (None, "a positive integer or a list of them, got None"),
    ("10", "a positive integer or a list of them, got '10'"),
])
def test_bad_k_values_are_named(k_values, words) -> None:
    with pytest.raises(ValueError, match=words):
        evaluate({"q": {"d": 1}}, {"q": {"d": 1.0}}, k_values)


def test_one_k_value_may_be_an_int() -> None:
    assert set(evaluate({"q": {"d": 1}}, {"q": {"d": 1.0}}, 10)) == {"nDCG@10", "MAP@10", "Recall@10", "P@10",
                                                                      "MRR@10"}
