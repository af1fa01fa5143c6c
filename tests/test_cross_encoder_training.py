"""Cross-encoder training on a tiny BEIR folder with a tiny random BERT: mining, loss, saving, loading, resume."""
from __future__ import annotations

import dataclasses
import json
import random
import shutil
from pathlib import Path

import pytest

pytest.importorskip("sentence_transformers")

from retrieval.types import Document, Hit  # noqa: E402
from helpers.tiny_beir import write_beir_folder  # noqa: E402
from helpers.tiny_rerank_models import write_tiny_bert_cross_encoder  # noqa: E402
from training import CrossEncoderConfig, run  # noqa: E402
from training.checkpoints import checkpoint_dirs  # noqa: E402
from training.cross_encoder import mine_hard_negatives  # noqa: E402

DOCS = {
    "d1": "mice cancer cells gene", "d2": "cancer protein cells", "d3": "heart disease protein",
    "d4": "paris tower iron", "d5": "river water city", "d6": "music song city",
    "d7": "plants light energy", "d8": "heart gene mice", "d9": "water plants energy", "d10": "tower city music",
}
QUERIES = {"q1": "what causes cancer in mice", "q2": "heart disease", "q3": "tower in paris",
           "q4": "plants light", "q5": "music song"}
QRELS = {"q1": {"d1": 1}, "q2": {"d3": 1}, "q3": {"d4": 1}, "q4": {"d7": 1, "d9": 1}, "q5": {"d6": 1}}


def write_beir(folder: Path, splits: tuple[str, ...] = ("train",)) -> Path:
    return write_beir_folder(folder, DOCS, QUERIES, QRELS, splits)


def test_mined_negatives_are_never_judged_positives() -> None:
    corpus = [Document(i, t) for i, t in DOCS.items()]
    groups = mine_hard_negatives(corpus, QUERIES, QRELS, num_negatives=2, depth=5, seed=0, show_progress=False)
    assert len(groups) == 6  # one per judged pair
    by_text = {t: i for i, t in DOCS.items()}
    for g in groups:
        qid = next(q for q, t in QUERIES.items() if t == g.query)
        assert QRELS[qid].get(by_text[g.positive], 0) > 0
        assert len(g.negatives) == 2 and len(set(g.negatives)) == 2
        assert all(QRELS[qid].get(by_text[n], 0) <= 0 for n in g.negatives)
        assert [label for _, _, label in g.pairs()] == [1.0, 0.0, 0.0]


def test_small_bm25_pools_are_filled_from_the_corpus_without_positives() -> None:
    corpus = [Document(i, t) for i, t in DOCS.items()]
    # depth 1 leaves at most one BM25 negative; the other five come from the rest of the corpus
    groups = mine_hard_negatives(corpus, {"q4": QUERIES["q4"]}, QRELS, num_negatives=6, depth=1, seed=0,
                                 show_progress=False)
    assert len(groups) == 2
    for g in groups:
        assert len(set(g.negatives)) == 6
        assert not {DOCS["d7"], DOCS["d9"]} & set(g.negatives)
    with pytest.raises(ValueError, match="too few"):
        mine_hard_negatives(corpus, QUERIES, QRELS, num_negatives=9, depth=3, seed=0, show_progress=False)


def test_config_round_trips_and_rejects_bad_values() -> None:
    config = CrossEncoderConfig(data="d", out="o", max_steps=3)
    assert CrossEncoderConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match=r"CrossEncoderConfig: unknown key\(s\) \['bogus'\]; valid keys: out, base"):
        CrossEncoderConfig.from_dict({"data": "d", "out": "o", "bogus": 1})
    # the names of earlier releases still read (old JSON), mapped to the one name each has now
    assert CrossEncoderConfig.from_dict({"data": "d", "output": "o", "learning_rate": 1e-4, "base_model": "b"}) == \
        CrossEncoderConfig(data="d", out="o", lr=1e-4, base="b")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        CrossEncoderConfig(data="d", out="o", batch_size=0)
    with pytest.raises(ValueError, match="loss must be one of"):
        CrossEncoderConfig(data="d", out="o", loss="hinge")
    with pytest.raises(ValueError, match="max_steps must be int or None"):
        CrossEncoderConfig(data="d", out="o", max_steps="3")


def test_listwise_loss_is_softmax_cross_entropy_with_the_positive_first() -> None:
    import math

    import torch

    from training.cross_encoder import CrossEncoderObjective, ListwiseLoss, TrainingGroup

    class FixedScores:  # stands in for a CrossEncoder: logit = number of words in the passage
        device = "cpu"

        def preprocess(self, pairs):
            return {"n": torch.tensor([float(len(p.split())) for _, p in pairs])}

        def __call__(self, features):
            return {"scores": features["n"].view(-1, 1)}

    groups = [TrainingGroup("q", "a b c", ("a", "a b")), TrainingGroup("q", "a", ("a b", "a b c"))]
    expected = [-math.log(math.exp(3) / (math.exp(3) + math.exp(1) + math.exp(2))),
                -math.log(math.exp(1) / (math.exp(1) + math.exp(2) + math.exp(3)))]
    model = FixedScores()
    objective = CrossEncoderObjective(model, loss="listwise", num_negatives=2)
    assert isinstance(objective.loss, ListwiseLoss)
    batch = objective.make_batch(groups, random.Random(0))
    assert batch.labels is None and batch.columns[0][:3] == [("q", "a b c"), ("q", "a"), ("q", "a b")]
    assert float(objective.loss([model.preprocess(batch.columns[0])])) == pytest.approx(sum(expected) / 2, rel=1e-6)


def _config(tmp_path: Path, **overrides) -> CrossEncoderConfig:
    base = tmp_path / "base"
    if not base.exists():
        write_tiny_bert_cross_encoder(base)
    beir = tmp_path / "beir"
    if not beir.exists():
        write_beir(beir, ("train", "test"))
    values = dict(data=str(beir), out=str(tmp_path / "ce"), base=str(base), max_seq_length=32, batch_size=6,
                  num_negatives=2, negatives_depth=6, show_progress=False, device="cpu")
    return CrossEncoderConfig(**{**values, **overrides})


@pytest.mark.parametrize("loss, items", [("listwise", 6), ("bce", 18)])
def test_training_lowers_the_loss_and_saves_a_loadable_cross_encoder(tmp_path: Path, loss: str, items: int) -> None:
    from sentence_transformers import CrossEncoder

    from retrieval.rerank import load_reranker

    config = _config(tmp_path, loss=loss, epochs=30, lr=3e-3, warmup_ratio=0.0)
    folder = run(config)
    assert folder == tmp_path / "ce" / "model"
    metrics = json.loads((tmp_path / "ce" / "metrics.json").read_text())
    losses = metrics["losses"]
    # 6 groups of 3 pairs: listwise takes 2 groups (6 pairs) a step, bce 6 of the 18 pairs: 3 steps an epoch
    assert metrics["items"] == items and metrics["objective"] == "cross-encoder"
    assert metrics["steps"] == len(losses) == 30 * 3
    assert json.loads((tmp_path / "ce" / "config.json").read_text())["config"] == config.to_dict()
    assert sum(losses[-6:]) / 6 < 0.75 * sum(losses[:6]) / 6
    model = CrossEncoder(str(folder))
    assert model.num_labels == 1
    reranker = load_reranker(f"cross-encoder:{folder}")
    out = reranker.rerank(QUERIES["q3"], [Hit(i, 0.0, DOCS[i]) for i in ("d10", "d4")])
    assert [h.id for h in out] == ["d4", "d10"]  # its positive above its mined negative: it learned its data


def test_training_is_seeded(tmp_path: Path) -> None:
    runs = []
    for name in ("a", "b"):
        run(_config(tmp_path, out=str(tmp_path / name), max_steps=2))
        runs.append(json.loads((tmp_path / name / "metrics.json").read_text())["losses"])
    assert runs[0] == runs[1]


def test_resume_from_a_checkpoint_ends_like_an_uninterrupted_run(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    import torch

    config = _config(tmp_path, max_steps=6, checkpoint_every=2, keep_checkpoints=3)
    straight = load_file(str(run(config) / "model.safetensors"))
    losses = json.loads((tmp_path / "ce" / "metrics.json").read_text())["losses"]
    shutil.rmtree(checkpoint_dirs(tmp_path / "ce")[-1])  # as if killed between steps 2 and 4
    resumed = load_file(str(run(dataclasses.replace(config, resume=True)) / "model.safetensors"))
    metrics = json.loads((tmp_path / "ce" / "metrics.json").read_text())
    assert metrics["resumed_from"] == 2 and metrics["losses"] == losses
    assert resumed.keys() == straight.keys() and all(torch.equal(resumed[k], straight[k]) for k in straight)


def test_before_and_after_evaluation_reranks_bm25(tmp_path: Path) -> None:
    config = _config(tmp_path, epochs=10, lr=1e-2, warmup_ratio=0.0, eval_beir=str(tmp_path / "beir"), eval_depth=5)
    run(config)
    metrics = json.loads((tmp_path / "ce" / "metrics.json").read_text())
    assert 0.0 <= metrics["before"]["nDCG@10"] <= 1.0 and 0.0 <= metrics["after"]["nDCG@10"] <= 1.0
    assert metrics["after_vs_before"]["n"] == len(QRELS)
    assert metrics["after_vs_before"]["mean_diff"] == pytest.approx(
        metrics["after"]["nDCG@10"] - metrics["before"]["nDCG@10"], abs=1e-9)
    assert (tmp_path / "ce" / "eval" / "after.trec").exists()


def test_the_command_trains_and_reports_and_refuses_to_overwrite_a_run(tmp_path: Path, capsys) -> None:
    from training.cli import main

    config = _config(tmp_path)  # writes the tiny model and BEIR folder
    argv = ["cross-encoder", "--data", config.data, "--out", config.out, "--base", config.base, "--max-steps", "2",
            "--max-seq-length", "32", "--batch-size", "6", "--num-negatives", "2", "--device", "cpu", "--no-progress"]
    assert main(argv) == 0
    assert f"model: {tmp_path / 'ce' / 'model'}" in capsys.readouterr().out
    assert main(argv) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main([*argv, "--resume", "--max-steps", "3"]) == 2
    assert "max_steps 2 -> 3" in capsys.readouterr().err
