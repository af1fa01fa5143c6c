"""Cross-encoder training on a tiny BEIR folder with a tiny random BERT: mining, loss, saving, loading."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from retrieval.types import Document, Hit
from tiny_rerank_models import write_tiny_bert_cross_encoder
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
    examples = mine_hard_negatives(corpus, QUERIES, QRELS, num_negatives=2, depth=5, seed=0, show_progress=False)
    positives = [e for e in examples if e.label == 1.0]
    assert len(positives) == 6  # one per judged pair
    by_text = {t: i for i, t in DOCS.items()}
    for e in examples:
        qid = next(q for q, t in QUERIES.items() if t == e.query)
        assert (QRELS[qid].get(by_text[e.passage], 0) > 0) == (e.label == 1.0)
    assert len(examples) - len(positives) <= 2 * len(positives)


def test_config_round_trips_and_rejects_bad_values() -> None:
    config = CrossEncoderTrainingConfig(data="d", output="o", max_steps=3)
    assert CrossEncoderTrainingConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="unknown cross-encoder training option"):
        CrossEncoderTrainingConfig.from_dict({"data": "d", "output": "o", "lr": 1})
    with pytest.raises(ValueError, match="batch_size"):
        CrossEncoderTrainingConfig(data="d", output="o", batch_size=0)


def test_training_lowers_the_loss_and_saves_a_loadable_cross_encoder(tmp_path: Path) -> None:
    from sentence_transformers import CrossEncoder

    from retrieval.rerank import load_reranker

    base = write_tiny_bert_cross_encoder(tmp_path / "base")
    config = CrossEncoderTrainingConfig(data=str(write_beir(tmp_path / "beir")), output=str(tmp_path / "ce"),
                                        base_model=str(base), max_seq_length=32, batch_size=6, epochs=30,
                                        learning_rate=1e-2, warmup_ratio=0.0, num_negatives=2, negatives_depth=6,
                                        show_progress=False, device="cpu")
    folder = train_cross_encoder(config)
    record = json.loads((folder / TRAINING_FILE).read_text())
    losses = record["losses"]
    assert record["steps"] == len(losses) == 30 * -(-record["n_examples"] // 6)  # 30 epochs of ceil(n / 6) steps
    assert record["config"] == config.to_dict()
    assert sum(losses[-6:]) / 6 < 0.5 * sum(losses[:6]) / 6
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
