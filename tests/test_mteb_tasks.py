"""MTEB-style evaluators on hand-made data with known answers, folder loading, and real STS (slow)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers.fake_encoders import HashEncoder
from retrieval.data import DataError
from retrieval.eval.mteb_tasks import (
    encode_texts, evaluate_classification, evaluate_pair_classification, evaluate_reranking, evaluate_sts,
    load_task, run_task, undersample,
)

from conftest import DATA  # ../shared/data or $RETRIEVEKIT_DATA


class TableEncoder:
    """Looks vectors up in a dict: every similarity in a test is chosen by hand."""

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.table, self.seen = table, []

    def encode_queries(self, texts):
        self.seen.append(list(texts))
        return np.array([self.table[t] for t in texts], dtype=np.float32)

    encode_documents = encode_queries


def _angle(deg: float) -> list[float]:
    return [float(np.cos(np.radians(deg))), float(np.sin(np.radians(deg)))]


def test_sts_is_spearman_of_cosine() -> None:
    # cos(0) = 1 with "a"; "b".."d" at 30/60/90 degrees: cosines 0.87, 0.5, 0
    enc = TableEncoder({"a": _angle(0), "b": _angle(30), "c": _angle(60), "d": _angle(90)})
    m = evaluate_sts(enc, ["a", "a", "a"], ["b", "c", "d"], [5.0, 3.0, 1.0])
    assert m["cosine_spearman"] == pytest.approx(1.0)
    assert evaluate_sts(enc, ["a", "a", "a"], ["b", "c", "d"], [1, 3, 5])["cosine_spearman"] == pytest.approx(-1.0)
    cos = np.cos(np.radians([30, 60, 90]))
    assert m["cosine_pearson"] == pytest.approx(np.corrcoef(cos, [5, 3, 1])[0, 1], abs=1e-6)  # float32 vectors


def test_texts_are_encoded_once() -> None:
    enc = TableEncoder({"a": [1, 0], "b": [0, 1]})
    emb = encode_texts(enc, ["a", "b", "a", "a"])
    assert enc.seen == [["a", "b"]] and emb.shape == (4, 2)
    np.testing.assert_array_equal(emb[0], emb[3])


def test_pair_classification_ap_by_hand() -> None:
    # cosines 1.0 (label 1), 0.87 (0), 0.5 (1), 0 (0): AP = (1/1 + 2/3) / 2
    enc = TableEncoder({"a": _angle(0), "b": _angle(30), "c": _angle(60), "d": _angle(90)})
    m = evaluate_pair_classification(enc, ["a"] * 4, ["a", "b", "c", "d"], [1, 0, 1, 0])
    assert m["cosine_ap"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["max_ap"] >= m["cosine_ap"]
    with pytest.raises(ValueError, match="0/1"):
        evaluate_pair_classification(enc, ["a"], ["b"], [2])


def test_reranking_map_and_mrr_by_hand() -> None:
    enc = TableEncoder({"q": _angle(0), "p1": _angle(40), "n1": _angle(10), "n2": _angle(80),
                        "p2": _angle(5)})
    samples = [{"query": "q", "positive": ["p1"], "negative": ["n1", "n2"]},   # positive ranked 2nd
               {"query": "q", "positive": ["p2"], "negative": ["n1"]},         # positive ranked 1st
               {"query": "q", "positive": [], "negative": ["n1"]}]             # skipped, as in MTEB
    m = evaluate_reranking(enc, samples)
    assert m["map"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["mrr@10"] == pytest.approx((0.5 + 1.0) / 2)


def test_undersampling_follows_mteb() -> None:
    labels = [i % 3 for i in range(30)]
    subsets = undersample(labels, samples_per_label=2, n_experiments=3, seed=42)
    assert all(sorted(labels[i] for i in s) == [0, 0, 1, 1, 2, 2] for s in subsets)
    idxs = list(range(30))
    np.random.RandomState(42).shuffle(idxs)  # MTEB: the same list is reshuffled each experiment
    first = []
    counts = {0: 0, 1: 0, 2: 0}
    for i in idxs:
        if counts[labels[i]] < 2:
            first.append(i)
            counts[labels[i]] += 1
    assert subsets[0] == first
    assert subsets[1] != subsets[0]


def test_classification_on_separable_clusters() -> None:
    rng = np.random.default_rng(0)
    centers = {"x": [5, 0], "y": [0, 5], "z": [-5, -5]}
    table, train, test = {}, [], []
    for i in range(60):
        label = "xyz"[i % 3]
        table[f"t{i}"] = list(np.array(centers[label]) + rng.normal(size=2) * 0.3)
        (train if i < 45 else test).append((f"t{i}", label))
    m = evaluate_classification(TableEncoder(table), [t for t, _ in train], [lab for _, lab in train],
                                [t for t, _ in test], [lab for _, lab in test], samples_per_label=4,
                                n_experiments=3)
    assert m["accuracy"] == 1.0 and m["f1"] == 1.0


def _write(folder: Path, split: str, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_folder_types_are_detected(tmp_path) -> None:
    _write(tmp_path / "sts", "test", [{"sentence1": "a", "sentence2": "b", "score": 1.0}])
    _write(tmp_path / "pairs", "test", [{"sentence1": "a", "sentence2": "b", "label": 1}])
    _write(tmp_path / "rr", "test", [{"query": "a", "positive": ["b"], "negative": ["c"]}])
    _write(tmp_path / "cls", "test", [{"text": "a", "label": 0}])
    assert [load_task(tmp_path / n).type for n in ("sts", "pairs", "rr", "cls")] == \
        ["sts", "pair_classification", "reranking", "classification"]
    (tmp_path / "cls" / "task.json").write_text(json.dumps({"type": "classification", "name": "MyTask"}))
    assert load_task(tmp_path / "cls").name == "MyTask"
    _write(tmp_path / "odd", "test", [{"foo": 1}])
    with pytest.raises(DataError, match="line 1"):
        load_task(tmp_path / "odd")
    _write(tmp_path / "broken", "test", [{"sentence1": "a", "sentence2": "b", "score": 1.0},
                                         {"sentence1": "a", "score": 2.0}])
    with pytest.raises(DataError, match="line 2, field 'sentence2'"):
        run_task(HashEncoder(), tmp_path / "broken")


def test_run_task_on_real_sts_sample() -> None:
    folder = DATA / "mteb" / "stsbenchmark"
    if not folder.exists():
        pytest.skip("no shared data")
    res = run_task(HashEncoder(), folder, limit=300)
    assert res.type == "sts" and res.n == 300 and res.task == "stsbenchmark"
    assert 0.0 < res.main_score < 0.9  # bag of random word vectors: some signal, far from a real model


@pytest.mark.slow
@pytest.mark.model
@pytest.mark.parametrize("task, published", [("stsbenchmark", 0.8203), ("sickr", 0.7758)])
def test_minilm_reproduces_mteb_sts(task: str, published: float) -> None:
    """all-MiniLM-L6-v2 cosine Spearman vs MTEB's published (embeddings-benchmark/results, mteb 1.12.75)."""
    folder = DATA / "mteb" / task
    if not folder.exists():
        pytest.skip("no shared data")
    from retrieval.dense.encoders import load_encoder

    res = run_task(load_encoder("minilm", show_progress=False), folder)
    assert res.main_score == pytest.approx(published, abs=0.005)
