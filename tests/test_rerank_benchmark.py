"""benchmarks/rerank.py: a shallower depth scored from a deeper pass equals running that depth on its own."""
from __future__ import annotations

import json
import random
from pathlib import Path

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
