"""benchmarks/rerank.py: a shallower depth scored from a deeper pass equals running that depth on its own."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from helpers.bench_scripts import load_script
from helpers.tiny_beir import write_beir_folder
from helpers.tiny_generators import write_tiny_chat_lm
from helpers.tiny_rerank_models import write_tiny_bert_cross_encoder

rerank_benchmark = load_script("rerank")

TOPICS = "mice cancer cells protein gene heart disease tower paris iron plants light energy water river city".split()


@pytest.fixture(scope="module")
def beir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = random.Random(0)
    docs = {f"d{i}": " ".join(rng.choice(TOPICS) for _ in range(12)) for i in range(40)}
    queries = {f"q{i}": " ".join(rng.sample(TOPICS, 3)) for i in range(6)}
    qrels = {q: {f"d{rng.randrange(40)}": 1, f"d{rng.randrange(40)}": 1} for q in queries}
    return write_beir_folder(tmp_path_factory.mktemp("beir"), docs, queries, qrels, splits=("test",))


def _run_scores(path: Path) -> dict[str, dict[str, float]]:
    run: dict[str, dict[str, float]] = {}
    for line in path.read_text().splitlines():
        qid, _, doc, _, score, _ = line.split()
        run.setdefault(qid, {})[doc] = float(score)
    return run


@pytest.mark.parametrize("kind", ["cross-encoder", "llm-ql"])
def test_sub_depth_equals_its_own_run(beir: Path, tmp_path: Path, kind: str) -> None:
    model = (write_tiny_bert_cross_encoder(tmp_path / "ce") if kind == "cross-encoder"
             else write_tiny_chat_lm(tmp_path / "lm"))
    common = ["--data", str(beir), "--reranker", f"{kind}:{model}", "--interpolate", "0.5", "--out", str(tmp_path)]
    deep = rerank_benchmark.main(common + ["--depth", "12", "--sub-depth", "5", "--name", "deep"])
    shallow = rerank_benchmark.main(common + ["--depth", "5", "--name", "shallow"])
    block = deep["sub_depths"]["5"]
    assert block["bm25"] == {m: shallow["bm25"][m] for m in rerank_benchmark.METRICS}
    assert block["reranked"]["nDCG@10"] == pytest.approx(shallow["reranked"]["nDCG@10"], abs=1e-4)
    assert block["interpolate-0.5"]["nDCG@10"] == pytest.approx(shallow["interpolated"]["0.5"]["nDCG@10"], abs=1e-4)
    for name, own in (("reranked", "reranked"), ("interpolate-0.5", "interpolate-0.5")):
        sub = _run_scores(tmp_path / "deep-runs" / f"top5-{name}.trec")
        alone = _run_scores(tmp_path / "shallow-runs" / f"{own}.trec")
        assert sub.keys() == alone.keys()
        for qid in alone:
            assert sub[qid].keys() == alone[qid].keys()          # the same 5 passages per query
            for doc, score in alone[qid].items():
                assert sub[qid][doc] == pytest.approx(score, rel=1e-4, abs=1e-4)
    assert set(block["vs_bm25_nDCG@10"]) == {"reranked", "interpolate-0.5"}
    saved = json.loads((tmp_path / "deep.json").read_text())
    assert saved["sub_depths"]["5"]["reranked"] == block["reranked"]


def test_sub_depth_refused_where_scores_depend_on_each_other(beir: Path, tmp_path: Path) -> None:
    lm = write_tiny_chat_lm(tmp_path / "lm")
    with pytest.raises(SystemExit, match="scores each passage on its own"):
        rerank_benchmark.main(["--data", str(beir), "--reranker", f"llm-listwise:{lm}", "--depth", "8",
                               "--sub-depth", "4", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="between 0 and --depth"):
        rerank_benchmark.main(["--data", str(beir), "--reranker", f"llm-ql:{lm}", "--depth", "8",
                               "--sub-depth", "8", "--out", str(tmp_path)])


def test_every_reranker_kind_declares_whether_scores_are_independent() -> None:
    import importlib

    from retrieval.rerank.registry import RERANKERS

    for kind, target in RERANKERS.items():
        module, _, name = target.partition(":")
        assert isinstance(getattr(getattr(importlib.import_module(module), name), "scores_each_passage"), bool), kind


def _common(beir: Path, tmp_path: Path, model: Path) -> list[str]:
    return ["--data", str(beir), "--reranker", f"cross-encoder:{model}", "--depth", "8", "--sub-depth", "4",
            "--interpolate", "0.5", "--out", str(tmp_path), "--name", "j"]


def _same_result(a: dict, b: dict) -> None:
    for key in ("queries", "bm25", "reranked", "interpolated", "vs_bm25_nDCG@10", "sub_depths", "settings"):
        assert a[key] == b[key], key


@pytest.fixture(scope="module")
def ce_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bert_cross_encoder(tmp_path_factory.mktemp("ce") / "ce")


def test_a_stopped_run_resumes_to_the_uninterrupted_result(beir: Path, tmp_path: Path, ce_model: Path) -> None:
    whole = rerank_benchmark.main(_common(beir, tmp_path / "whole", ce_model))
    assert whole["queries"] == 6 and not list((tmp_path / "whole" / "j-runs").glob("journal*"))
    assert 0 < whole["median_seconds_per_query"] <= whole["seconds"]
    part = tmp_path / "part"
    first = rerank_benchmark.main(_common(beir, part, ce_model) + ["--time-budget", "1e-9"])   # one query, then stop
    assert first["queries"] == 1 and (part / "j-runs" / "journal.jsonl").exists()
    with pytest.raises(SystemExit, match="unfinished run.*--resume"):
        rerank_benchmark.main(_common(beir, part, ce_model))
    with pytest.raises(SystemExit, match=r"other settings \(depth 8 there, 9 here\)"):
        rerank_benchmark.main(_common(beir, part, ce_model)[:-10] + ["--depth", "9", "--out", str(part),
                                                                      "--name", "j", "--resume"])
    rest = rerank_benchmark.main(_common(beir, part, ce_model) + ["--resume"])
    _same_result(rest, whole)
    assert (rest["reranked_here"], rest["from_journals"]) == (5, 1)
    assert not list((part / "j-runs").glob("journal*"))            # finished: the journal is gone
    for trec in (tmp_path / "whole" / "j-runs").glob("*.trec"):
        assert _run_scores(trec) == _run_scores(part / "j-runs" / trec.name), trec.name


def test_shards_merge_to_the_single_process_result(beir: Path, tmp_path: Path, ce_model: Path) -> None:
    whole = rerank_benchmark.main(_common(beir, tmp_path / "whole", ce_model))
    out = tmp_path / "sharded"
    for i in range(3):
        shard = rerank_benchmark.main(_common(beir, out, ce_model) + ["--shard", f"{i}/3"])
        assert shard == {"shard": [i, 3], "queries": 2, "of_queries": 2}
    assert sorted(p.name for p in (out / "j-runs").glob("journal*")) == [
        f"journal.shard-{i}-of-3.jsonl" for i in range(3)]
    merged = rerank_benchmark.main(_common(beir, out, ce_model) + ["--resume"])
    _same_result(merged, whole)
    assert (merged["reranked_here"], merged["from_journals"], merged["reply_stats"]) == (0, 6, None)
    assert not list((out / "j-runs").glob("journal*"))


def test_score_only_reports_the_journaled_queries_and_loads_no_model(beir: Path, tmp_path: Path, ce_model: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    whole = rerank_benchmark.main(_common(beir, tmp_path / "whole", ce_model))
    out = tmp_path / "progress"
    with pytest.raises(SystemExit, match="no journaled query"):
        rerank_benchmark.main(_common(beir, out, ce_model) + ["--score-only"])
    rerank_benchmark.main(_common(beir, out, ce_model) + ["--shard", "0/3"])          # 2 of the 6 queries
    with pytest.raises(SystemExit, match="drop --shard"):
        rerank_benchmark.main(_common(beir, out, ce_model) + ["--score-only", "--shard", "0/3"])
    with monkeypatch.context() as patch:
        patch.setattr(rerank_benchmark, "load_reranker", lambda *a, **k: pytest.fail("--score-only loaded a model"))
        part = rerank_benchmark.main(_common(beir, out, ce_model) + ["--score-only"])
    assert (part["queries"], part["of_queries"], part["reranked_here"], part["from_journals"]) == (2, 6, 0, 2)
    assert part["settings"] == whole["settings"]
    assert [p.name for p in (out / "j-runs").glob("journal*")] == ["journal.shard-0-of-3.jsonl"]   # kept
    full = _run_scores(tmp_path / "whole" / "j-runs" / "reranked.trec")
    partial = _run_scores(out / "j-runs" / "reranked.trec")
    assert len(partial) == 2 and all(partial[q] == full[q] for q in partial)
    _same_result(rerank_benchmark.main(_common(beir, out, ce_model) + ["--resume"]), whole)


def test_a_torn_journal_line_is_rerun_and_a_bad_one_is_named(beir: Path, tmp_path: Path, ce_model: Path) -> None:
    whole = rerank_benchmark.main(_common(beir, tmp_path / "whole", ce_model))
    rerank_benchmark.main(_common(beir, tmp_path, ce_model) + ["--shard", "0/2"])
    journal = tmp_path / "j-runs" / "journal.shard-0-of-2.jsonl"
    lines = journal.read_text().splitlines(keepends=True)
    assert len(lines) == 4                                           # header + 3 queries
    journal.write_text("".join(lines[:3]) + lines[3][:25])           # killed while writing the last query
    again = rerank_benchmark.main(_common(beir, tmp_path, ce_model) + ["--shard", "0/2", "--resume"])
    assert again["queries"] == 3
    assert journal.read_text().count("\n") == 4 and journal.read_text().endswith("\n")   # torn part cut, line rewritten
    journal.write_text(lines[0] + "{not json\n" + "".join(lines[2:]))
    with pytest.raises(SystemExit, match=r"journal.shard-0-of-2.jsonl, line 2: not JSON"):
        rerank_benchmark.main(_common(beir, tmp_path, ce_model) + ["--resume"])
    journal.write_text(lines[0] + json.dumps({"qid": "q1", "seconds": 1, "hits": [["d1", 1.0, 2.0]]}) + "\n")
    with pytest.raises(SystemExit, match=r"line 2: expected \{qid, seconds, hits"):
        rerank_benchmark.main(_common(beir, tmp_path, ce_model) + ["--resume"])
    row = json.loads(lines[1])
    row["hits"][0][0] = "not-a-doc"
    journal.write_text(lines[0] + json.dumps(row) + "\n" + "".join(lines[2:]))
    rerank_benchmark.main(_common(beir, tmp_path, ce_model) + ["--shard", "1/2"])
    with pytest.raises(SystemExit, match=rf"ranking of query '{row['qid']}' is not a reordering"):
        rerank_benchmark.main(_common(beir, tmp_path, ce_model) + ["--resume"])
    (tmp_path / "j-runs" / "journal.shard-1-of-2.jsonl").unlink()
    journal.write_text(lines[0][:10])                                # killed while writing the header
    again = rerank_benchmark.main(_common(beir, tmp_path, ce_model) + ["--shard", "0/2", "--resume"])
    assert again["queries"] == 3 and journal.read_text().splitlines()[0] == lines[0].rstrip("\n")
    _same_result(rerank_benchmark.main(_common(beir, tmp_path, ce_model) + ["--resume"]), whole)


def test_shard_argument_is_checked() -> None:
    for bad in ("2/2", "-1/2", "a/b", "1"):
        with pytest.raises(SystemExit):
            rerank_benchmark.parse_args(["--reranker", "x", "--shard", bad])
    assert rerank_benchmark.parse_args(["--reranker", "x", "--shard", "1/3"]).shard == (1, 3)


@pytest.mark.parametrize("flag, bad", [("--depth", "0"), ("--depth", "x"), ("--max-queries", "-2"),
                                       ("--interpolate", "1.5"), ("--interpolate", "nan"), ("--interpolate", "-0.1")])
def test_depth_and_weights_are_checked_before_any_reranking(flag: str, bad: str, capsys) -> None:
    """A bad --interpolate used to surface only at the scoring, after every query was reranked."""
    with pytest.raises(SystemExit):
        rerank_benchmark.parse_args(["--reranker", "x", flag, bad])
    assert f"argument {flag}: expected" in capsys.readouterr().err
    args = rerank_benchmark.parse_args(["--reranker", "x", "--depth", "20", "--interpolate", "0", "--interpolate", "1"])
    assert (args.depth, args.interpolate) == (20, [0.0, 1.0])


@pytest.mark.parametrize("kind", ["llm-yesno", "llm-listwise", "llm-ql"])
def test_shards_sum_their_reply_counts_to_the_single_process_counts(beir: Path, tmp_path: Path, kind: str) -> None:
    """Each journal row carries its query's reply counts, so a merge of shards reports every query's replies."""
    lm = write_tiny_chat_lm(tmp_path / "lm")
    common = ["--data", str(beir), "--reranker", f"{kind}:{lm}", "--depth", "6", "--interpolate", "0.5",
              "--name", "r", "--option", "max_passage_words=20"] + (["--option", "window=4", "--option", "step=2"]
                                                                     if kind == "llm-listwise" else [])
    whole = rerank_benchmark.main(common + ["--out", str(tmp_path / "whole")])
    for i in range(2):
        rerank_benchmark.main(common + ["--out", str(tmp_path / "sharded"), "--shard", f"{i}/2"])
    merged = rerank_benchmark.main(common + ["--out", str(tmp_path / "sharded"), "--resume"])
    assert merged["from_journals"] == 6
    ours, theirs = merged["reply_stats"], whole["reply_stats"]
    assert ours["queries"] == ours["of_queries"] == theirs["queries"] == 6
    counts = {"llm-yesno": "passages", "llm-listwise": "windows", "llm-ql": "passages"}[kind]
    assert ours[counts] == theirs[counts] == (6 * 6 if kind != "llm-listwise" else 6 * 2)
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():   # sums of floats in another order: equal within rounding
        assert ours[key] == (pytest.approx(value) if isinstance(value, float) else value), key


def test_reply_counts_sum_across_processes_and_bad_ones_are_named(beir: Path, tmp_path: Path) -> None:
    from retrieval.rerank.llm.listwise import ListwiseStats
    from retrieval.rerank.llm.pointwise import PointwiseStats
    from retrieval.rerank.llm.query_likelihood import QueryLikelihoodStats

    a, b, both = PointwiseStats(["Yes", "No"]), PointwiseStats(["Yes", "No"]), PointwiseStats(["Yes", "No"])
    first, second = np.log([[0.6, 0.3], [0.1, 0.2]]), np.log([[0.2, 0.7]])
    a.add(first), b.add(second), both.add(first), both.add(second)
    total = PointwiseStats.from_state(a.state())
    total.merge(json.loads(json.dumps(b.state())))
    assert total.to_dict()["preferred"] == both.to_dict()["preferred"] == {"Yes": 1, "No": 2}
    assert total.to_dict()["mean_choice_mass"] == pytest.approx(both.to_dict()["mean_choice_mass"])
    with pytest.raises(ValueError, match="cannot add"):
        total.merge(PointwiseStats(list("012345")).state())
    ql = QueryLikelihoodStats()
    ql.add([np.array([-1.0, -np.inf]), np.array([-3.0])])
    assert QueryLikelihoodStats.from_state(ql.state()).to_dict() == ql.to_dict()
    lw = ListwiseStats(windows=3, ids_shown=12, ids_named=5, windows_unparsed=1, windows_reordered=2)
    twice = ListwiseStats.from_state(lw.state())
    twice.merge(lw.state())
    assert twice.to_dict() == {**lw.to_dict(), "windows": 6, "ids_shown": 24, "ids_named": 10,
                               "windows_unparsed": 2, "windows_reordered": 4}
    with pytest.raises(ValueError, match="cannot add"):
        twice.merge(ql.state())

    lm = write_tiny_chat_lm(tmp_path / "lm")
    common = ["--data", str(beir), "--reranker", f"llm-yesno:{lm}", "--depth", "6", "--out", str(tmp_path),
              "--name", "r", "--option", "max_passage_words=20"]
    rerank_benchmark.main(common + ["--shard", "0/2"])
    journal = tmp_path / "r-runs" / "journal.shard-0-of-2.jsonl"
    lines = journal.read_text().splitlines(keepends=True)
    for bad in ({"kind": "pointwise"}, {"kind": "psychic"}, "many", {**json.loads(lines[1])["replies"],
                                                                      "preferred": {"Maybe": 3}}):
        row = json.loads(lines[1]) | {"replies": bad}
        journal.write_text(lines[0] + json.dumps(row) + "\n" + "".join(lines[2:]))
        with pytest.raises(SystemExit, match=r"journal.shard-0-of-2.jsonl, line 2: unreadable reply counts"):
            rerank_benchmark.main(common + ["--resume"])
