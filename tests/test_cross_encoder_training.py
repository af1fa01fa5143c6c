"""Cross-encoder training on a tiny BEIR folder with a tiny random BERT: mining, loss, saving, loading."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from retrieval.types import Document, Hit
from helpers.tiny_rerank_models import write_tiny_bert_cross_encoder
from training.cross_encoder import (TRAINING_FILE, CrossEncoderTrainingConfig, mine_hard_negatives,
                                    train_cross_encoder)

DOCS = {
    "d1": "mice cancer cells gene", "d2": "cancer protein cells", "d3": "heart disease protein",
    "d4": "paris tower iron", "d5": "river water city", "d6": "music song city",
    "d7": "plants light energy", "d8": "heart gene mice", "d9": "water plants energy", "d10": "tower city music",
}
QUERIES = {"q1": "what causes cancer in mice", "q2": "heart disease", "q3": "tower in paris",
           "q4": "plants light", "q5": "music song"}
QRELS = {"q1": {"d1": 1}, "q2": {"d3": 1}, "q3": {"d4": 1}, "q4": {"d7": 1, "d9": 1}, "q5": {"d6": 1}}


def write_beir(folder: Path) -> Path:
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": i, "title": "", "text": t}) + "\n" for i, t in DOCS.items()), encoding="utf-8")
    (folder / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in QUERIES.items()), encoding="utf-8")
    rows = [f"{q}\t{d}\t{g}" for q, rels in QRELS.items() for d, g in rels.items()]
    (folder / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n")
    return folder


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
    config = CrossEncoderTrainingConfig(data="d", output="o", max_steps=3)
    assert CrossEncoderTrainingConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="unknown cross-encoder training option"):
        CrossEncoderTrainingConfig.from_dict({"data": "d", "output": "o", "lr": 1})
    with pytest.raises(ValueError, match="batch_size"):
        CrossEncoderTrainingConfig(data="d", output="o", batch_size=0)
    with pytest.raises(ValueError, match="loss must be one of"):
        CrossEncoderTrainingConfig(data="d", output="o", loss="hinge")


def test_listwise_loss_is_softmax_cross_entropy_with_the_positive_first() -> None:
    import math

    import torch

    from training.cross_encoder import TrainingGroup, listwise_loss

    class FixedScores:  # stands in for a CrossEncoder: logit = number of words in the passage
        device = "cpu"

        def preprocess(self, pairs):
            return {"n": torch.tensor([float(len(p.split())) for _, p in pairs])}

        def __call__(self, features):
            return {"scores": features["n"].view(-1, 1)}

    groups = [TrainingGroup("q", "a b c", ("a", "a b")), TrainingGroup("q", "a", ("a b", "a b c"))]
    expected = [-math.log(math.exp(3) / (math.exp(3) + math.exp(1) + math.exp(2))),
                -math.log(math.exp(1) / (math.exp(1) + math.exp(2) + math.exp(3)))]
    assert float(listwise_loss(FixedScores(), groups)) == pytest.approx(sum(expected) / 2, rel=1e-6)


@pytest.mark.parametrize("loss, steps_per_epoch", [("listwise", 3), ("bce", 3)])
def test_training_lowers_the_loss_and_saves_a_loadable_cross_encoder(tmp_path: Path, loss: str,
                                                                     steps_per_epoch: int) -> None:
    from sentence_transformers import CrossEncoder

    from retrieval.rerank import load_reranker

    base = write_tiny_bert_cross_encoder(tmp_path / "base")
    config = CrossEncoderTrainingConfig(data=str(write_beir(tmp_path / "beir")), output=str(tmp_path / "ce"),
                                        base_model=str(base), loss=loss, max_seq_length=32, batch_size=6, epochs=30,
                                        learning_rate=1e-2, warmup_ratio=0.0, num_negatives=2, negatives_depth=6,
                                        show_progress=False, device="cpu")
    folder = train_cross_encoder(config)
    record = json.loads((folder / TRAINING_FILE).read_text())
    losses = record["losses"]
    # 6 groups of 3 pairs: listwise takes 2 groups (6 pairs) a step, bce 6 of the 18 pairs: 3 steps an epoch
    assert record["n_groups"] == 6
    assert record["steps"] == len(losses) == 30 * steps_per_epoch
    assert record["config"] == config.to_dict()
    assert sum(losses[-6:]) / 6 < 0.75 * sum(losses[:6]) / 6
    model = CrossEncoder(str(folder))
    assert model.num_labels == 1
    reranker = load_reranker(f"cross-encoder:{folder}")
    out = reranker.rerank(QUERIES["q3"], [Hit(i, 0.0, DOCS[i]) for i in ("d10", "d4")])
    assert [h.id for h in out] == ["d4", "d10"]  # its positive above its mined negative: it learned its data


def test_training_is_seeded(tmp_path: Path) -> None:
    base = write_tiny_bert_cross_encoder(tmp_path / "base")
    data = str(write_beir(tmp_path / "beir"))
    runs = []
    for name in ("a", "b"):
        config = CrossEncoderTrainingConfig(data=data, output=str(tmp_path / name), base_model=str(base),
                                            max_seq_length=32, batch_size=6, max_steps=2, show_progress=False,
                                            device="cpu")
        runs.append(json.loads((train_cross_encoder(config) / TRAINING_FILE).read_text())["losses"])
    assert runs[0] == runs[1]


def test_command_line_arguments_build_the_config() -> None:
    import argparse

    from training.cross_encoder import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--data", "d", "--output", "o", "--max-steps", "5", "--learning-rate", "1e-4",
                              "--no-progress"])
    assert config_from_args(args) == CrossEncoderTrainingConfig(data="d", output="o", max_steps=5,
                                                                learning_rate=1e-4, show_progress=False)
