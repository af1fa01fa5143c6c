"""The benchmark report end to end on the bundled sample (the CI smoke), with BM25 and fake/real encoders."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from helpers.fake_encoders import HashEncoder
from retrieval import load_beir
from retrieval.datasets import DATA_ENV
from retrieval.errors import DataError
from retrieval.eval.metrics import evaluate, read_trec_run
from retrieval.bench.report import (
    BenchmarkConfig, EmbedderSpec, SystemSpec, add_benchmark_command, markdown_report, run_benchmark, suite_config,
)
from retrieval.sample import sample_dir


def _config(**kw) -> BenchmarkConfig:
    base = dict(suite="smoke", systems=[SystemSpec("BM25", "bm25")], beir=[str(sample_dir())], show_progress=False)
    return BenchmarkConfig(**{**base, **kw})


def test_smoke_report_with_bm25(tmp_path) -> None:
    results = run_benchmark(_config(), tmp_path)
    for name in ("results.json", "results.md", "ndcg_at_10.png", "quality_vs_latency.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    stored = json.loads((tmp_path / "results.json").read_text())
    row = stored["retrieval"][0]
    assert row["dataset"] == "sample" and row["n_queries"] == 24 and 0.5 < row["metrics"]["nDCG@10"] <= 1.0
    # the written run file re-evaluates to the reported numbers
    run = read_trec_run(tmp_path / "runs" / "sample__bm25.trec")
    assert evaluate(load_beir(sample_dir()).qrels, run)["nDCG@10"] == pytest.approx(row["metrics"]["nDCG@10"],
                                                                                    abs=1e-9)
    md = (tmp_path / "results.md").read_text()
    assert "| sample | BM25 |" in md and "(ndcg_at_10.png)" in md
    assert results["config"]["systems"][0]["name"] == "BM25"


def test_dense_and_hybrid_share_cached_embeddings(tmp_path) -> None:
    enc = HashEncoder()
    systems = [SystemSpec("BM25", "bm25"), SystemSpec("Hash", "dense", {"model": "hash", "index": "flat"}),
               SystemSpec("Hybrid RRF", "hybrid", {"model": "hash", "fusion": "rrf"})]
    cfg = _config(systems=systems, plots=False)
    first = run_benchmark(cfg, tmp_path, encoder_factory=lambda opts: enc)
    assert enc.calls == 3  # corpus once, queries once per dense system
    assert [r["embeddings_cached"] for r in first["retrieval"]] == [False, False, True]
    second = run_benchmark(cfg, tmp_path, encoder_factory=lambda opts: enc)
    assert enc.calls == 5 and second["retrieval"][1]["embeddings_cached"]
    assert second["retrieval"][2]["metrics"] == first["retrieval"][2]["metrics"]
    assert "p_value" in second["retrieval"][1]["vs_baseline"]


def test_mteb_tasks_in_report(tmp_path) -> None:
    folder = tmp_path / "tiny-sts"
    folder.mkdir()
    rows = [{"sentence1": f"word{i} shared", "sentence2": f"word{i} other", "score": i % 5} for i in range(10)]
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = _config(beir=[], mteb=[str(folder)], embedders=[EmbedderSpec("Hash", "hash")], plots=False)
    results = run_benchmark(cfg, tmp_path / "out", encoder_factory=lambda opts: HashEncoder())
    row = results["mteb"][0]
    assert row["type"] == "sts" and row["embedder"] == "Hash" and row["n"] == 10
    assert "| tiny-sts | sts | Hash | cosine_spearman |" in (tmp_path / "out" / "results.md").read_text()


def test_published_numbers_carry_sources() -> None:
    results = {"suite": "x", "version": "0", "date": "d", "machine": {"platform": "p", "cpus": 2},
               "retrieval": [{"dataset": "scifact", "system": "BM25", "metrics": {"nDCG@10": 0.69, "MAP@10": 0.6,
                              "Recall@100": 0.9, "MRR@10": 0.6}, "latency_ms": 1.0, "build_s": 1.0,
                              "embeddings_cached": False}], "mteb": []}
    md = markdown_report(results)
    assert "0.6650 [1]; 0.6863 [2]" in md
    assert "1. 0.665 — BEIR paper (Thakur et al. 2021)" in md


def test_suites(tmp_path, monkeypatch) -> None:
    for name in ("beir/scifact", "mteb/stsbenchmark", "mteb/sickr", "mteb/banking77"):
        (tmp_path / name).mkdir(parents=True)
    (tmp_path / "beir/scifact/corpus.jsonl").write_text("")
    quick = suite_config("quick", tmp_path)
    assert [s.method for s in quick.systems] == ["bm25", "dense", "hybrid"]
    assert [Path(p).name for p in quick.mteb] == ["stsbenchmark", "sickr"]
    full = suite_config("full", tmp_path, models=["/models/adapted"])
    assert len(full.mteb) == 3 and full.systems[-1].options["model"] == "/models/adapted"
    assert BenchmarkConfig.from_dict(json.loads(json.dumps(full.to_dict()))) == full
    with pytest.raises(ValueError, match="unknown suite"):
        suite_config("huge", tmp_path)
    # the data folder is an argument or $RETRIEVEKIT_DATA; the library has no default of its own
    monkeypatch.delenv(DATA_ENV, raising=False)
    with pytest.raises(DataError, match=DATA_ENV):
        suite_config("quick")
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    assert suite_config("quick") == quick


def _benchmark_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_benchmark_command(parser.add_subparsers(dest="command"))
    return parser.parse_args(["benchmark", *argv])


def test_cli_command(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.delenv(DATA_ENV, raising=False)   # datasets given by flag need no data folder
    systems = tmp_path / "systems.json"
    systems.write_text(json.dumps([{"name": "BM25 okapi", "method": "bm25", "options": {"variant": "okapi"}}]))
    args = _benchmark_args("--out", str(tmp_path / "o"), "--beir", str(sample_dir()), "--mteb",
                           "--systems", str(systems), "--no-plots", "--no-progress")
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "estimated" in out and "| sample | BM25 okapi |" in out
    assert (tmp_path / "o" / "runs" / "sample__bm25_okapi.trec").stat().st_size > 0


def test_cli_command_names_what_is_wrong(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(DATA_ENV, raising=False)
    args = _benchmark_args("--out", str(tmp_path / "o"))
    with pytest.raises(DataError, match=f"set {DATA_ENV}"):
        args.func(args)
    (tmp_path / "empty").mkdir()
    args = _benchmark_args("--out", str(tmp_path / "o"), "--data", str(tmp_path / "empty"))
    with pytest.raises(DataError, match="no datasets found in .*empty"):
        args.func(args)
    systems = tmp_path / "systems.json"
    for text, message in (("[{\"name\": \"x\", \"methd\": \"bm25\"}]", "systems.json, system 0: .*methd"),
                          ("{", "systems.json, line 1: malformed JSON"), ("{}", "expected a JSON list")):
        systems.write_text(text)
        args = _benchmark_args("--out", str(tmp_path / "o"), "--beir", str(sample_dir()), "--mteb", "--systems",
                               str(systems))
        with pytest.raises(DataError, match=message):
            args.func(args)


@pytest.mark.model
def test_real_minilm_on_sample(tmp_path) -> None:
    systems = [SystemSpec("BM25", "bm25"), SystemSpec("MiniLM", "dense", {"model": "minilm", "index": "flat"})]
    results = run_benchmark(_config(systems=systems, plots=False), tmp_path)
    dense = results["retrieval"][1]
    assert dense["n_docs"] == 80 and dense["metrics"]["nDCG@10"] > 0.5
