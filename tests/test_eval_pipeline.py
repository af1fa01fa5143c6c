"""The one evaluation path (evaluate_retriever), the one embedding cache (CachedEncoder), atomic .npy writes
and the one data-folder setting."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers.fake_encoders import HashEncoder
from retrieval import Retriever, load_beir
from retrieval.datasets import DATA_ENV, beir_folder, data_dir, seeded_order
from retrieval.dense.cache import CachedEncoder, cache_key, model_fingerprint
from retrieval.errors import DataError
from retrieval.eval.metrics import evaluate, read_run
from retrieval.eval.pipeline import evaluate_retriever
from retrieval.persistence import atomic_save_array
from retrieval.sample import sample_dir
from retrieval.types import Document


@pytest.fixture(scope="module")
def bm25() -> Retriever:
    return Retriever.from_documents(sample_dir(), "bm25", show_progress=False)


def _beir(folder: Path, docs: dict[str, str], queries: dict[str, str], qrels: list[tuple[str, str]]) -> Path:
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in docs.items()))
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in queries.items()))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, d in qrels))
    return folder


def test_scores_the_run_it_writes(bm25: Retriever, tmp_path: Path) -> None:
    data = load_beir(sample_dir())
    result = evaluate_retriever(bm25, data, k=20, run_out=tmp_path / "runs" / "bm25.trec")
    assert result.n_queries == 24 and result.dataset == "sample" and result.split == "test"
    assert {"nDCG@1", "nDCG@10", "nDCG@20", "Recall@100", "MRR@10"} <= result.metrics.keys()
    assert result.metrics == evaluate(data.qrels, bm25.run(data.queries, k=20), (1, 10, 20, 100))
    assert read_run(tmp_path / "runs" / "bm25.trec") == result.run
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["bm25.trec"]   # no temp file left
    evaluate_retriever(bm25, sample_dir(), run_out=tmp_path / "run.json")      # a folder is loaded; .json picks JSON
    assert json.loads((tmp_path / "run.json").read_text()).keys() == data.queries.keys()


def test_max_queries_and_per_query(bm25: Retriever) -> None:
    result = evaluate_retriever(bm25, sample_dir(), k=10, max_queries=5)
    assert result.n_queries == 5 and len(result.run) == 5
    per = result.per_query("nDCG@10")
    assert list(per) == list(result.qrels) and np.mean(list(per.values())) == pytest.approx(result.metrics["nDCG@10"])
    with pytest.raises(ValueError, match="nDCG@10"):
        result.per_query("nDCG")
    with pytest.raises(ValueError, match="max_queries"):
        evaluate_retriever(bm25, sample_dir(), max_queries=0)


def test_identical_ids_are_dropped_where_beir_drops_them(tmp_path: Path) -> None:
    docs = {"a": "apples and pears", "b": "bananas grow on trees", "c": "pears are sweet"}
    queries = {"a": "apples and pears"}   # ArguAna-style: the query is itself a document
    for name in ("arguana", "other"):
        _beir(tmp_path / name, docs, queries, [("a", "c")])
    retriever = Retriever.from_documents(tmp_path / "other", "bm25", show_progress=False)
    auto = evaluate_retriever(retriever, tmp_path / "arguana", k=3)
    kept = evaluate_retriever(retriever, tmp_path / "other", k=3)
    assert auto.ignore_identical_ids and not kept.ignore_identical_ids
    assert auto.metrics["MRR@10"] == 1.0 and kept.metrics["MRR@10"] == 0.5   # 'a' itself ranks first
    forced = evaluate_retriever(retriever, tmp_path / "other", k=3, ignore_identical_ids=True)
    assert forced.metrics == auto.metrics


def test_cached_encoder_encodes_a_corpus_once(tmp_path: Path) -> None:
    docs = [Document("d1", "cats sit on mats"), Document("d2", "dogs chase cats")]
    inner = HashEncoder()
    enc = CachedEncoder(inner, tmp_path)
    first = enc.encode_documents(docs)
    again = CachedEncoder(HashEncoder(), tmp_path).encode_documents(docs)   # another process, same key
    assert inner.calls == 1 and np.array_equal(first, again)
    assert enc.dim == 64 and enc.encode_queries(["cats"]).shape == (1, 64)   # the rest is the wrapped encoder's
    assert len(list(tmp_path.glob("docs-*.npy"))) == 1 and not list(tmp_path.glob(".*"))
    changed = [Document("d1", "cats sit on mats"), Document("d2", "dogs chase birds")]
    renamed = [Document("x1", "cats sit on mats"), Document("d2", "dogs chase cats")]
    other_model = HashEncoder(model_name="another")
    keys = {cache_key(inner, docs), cache_key(inner, changed), cache_key(inner, renamed), cache_key(other_model, docs)}
    assert len(keys) == 4   # text, ids and model settings all change the key


def test_damaged_cache_entry_is_encoded_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    docs = ["one text", "two texts"]
    enc = CachedEncoder(HashEncoder(), tmp_path)
    path = enc.path_for(docs)
    good = enc.encode_documents(docs)
    path.write_bytes(path.read_bytes()[:40])                          # truncated
    assert np.array_equal(enc.encode_documents(docs), good) and "unreadable cache entry" in caplog.text
    atomic_save_array(path, np.zeros((3, 64), np.float32))            # wrong shape for two documents
    assert np.array_equal(enc.encode_documents(docs), good) and "expected (2, 64)" in caplog.text
    assert enc.hits == 0 and enc.misses == 3 and np.array_equal(np.load(path), good)
    with pytest.raises(TypeError):
        enc.encode_documents("one text")


def test_model_fingerprint_follows_the_weights() -> None:
    torch = pytest.importorskip("torch")

    class Wrapper:
        def __init__(self) -> None:
            self.model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))

    enc = Wrapper()
    before = model_fingerprint(enc)
    assert before == model_fingerprint(enc) and before.startswith("weights:")
    with torch.no_grad():
        enc.model[0].weight[0, 0] += 1e-3
    assert model_fingerprint(enc) != before
    enc.fingerprint = "abc"                  # a model loaded from a folder carries the folder's fingerprint
    assert model_fingerprint(enc) == "abc" and model_fingerprint(HashEncoder()) is None


def test_atomic_save_array_keeps_the_old_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "a.npy"
    atomic_save_array(path, np.arange(3))
    atomic_save_array(path, np.arange(5))
    assert np.load(path).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError):          # object arrays would need pickle, which is never written
        atomic_save_array(path, np.array([{"a": 1}], dtype=object))
    assert np.load(path).tolist() == [0, 1, 2, 3, 4] and [p.name for p in path.parent.iterdir()] == ["a.npy"]


def test_data_dir_is_one_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_ENV, raising=False)
    with pytest.raises(DataError, match=DATA_ENV):
        data_dir()
    assert data_dir(default=tmp_path / "d") == tmp_path / "d"
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "env"))
    assert data_dir(default=tmp_path / "d") == tmp_path / "env"
    assert data_dir(tmp_path / "arg", default=tmp_path / "d") == tmp_path / "arg"



def test_beir_folder_and_seeded_order_are_what_every_benchmark_script_means(tmp_path: Path) -> None:
    import random

    (tmp_path / "beir" / "scifact").mkdir(parents=True)
    assert beir_folder(tmp_path, "beir/scifact") == tmp_path / "beir" / "scifact"     # a data root
    assert beir_folder(tmp_path / "beir" / "scifact", "beir/scifact") == tmp_path / "beir" / "scifact"  # a folder
    ids = [f"q{i}" for i in range(50)]
    expected = sorted(ids)
    random.Random(3).shuffle(expected)
    assert seeded_order(reversed(ids), seed=3) == expected == seeded_order(set(ids), seed=3)
    assert seeded_order(ids, seed=0) != expected

def test_training_evaluation_is_the_dense_retriever_path(tiny_model_folder: Path, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    from retrieval.dense.encoders import BiEncoder
    from training.evaluate import evaluate_on_beir

    model = SentenceTransformer(str(tiny_model_folder), device="cpu")
    length, mode = model.max_seq_length, model.training
    cache = tmp_path / "cache"
    first = evaluate_on_beir(model, sample_dir(), max_seq_length=32, cache=cache, show_progress=False,
                             run_path=tmp_path / "eval" / "before.trec")
    entry = next(cache.glob("docs-*.npy"))
    stamp = entry.stat().st_mtime_ns
    second = evaluate_on_beir(model, sample_dir(), max_seq_length=32, cache=cache, show_progress=False)
    assert entry.stat().st_mtime_ns == stamp and len(list(cache.glob("*.npy"))) == 1   # read, not re-encoded
    assert (model.max_seq_length, model.training) == (length, mode)   # settings restored
    encoder = BiEncoder.from_model(model, max_seq_length=32, show_progress=False)
    expected = evaluate_retriever(Retriever.from_documents(sample_dir(), "dense", encoder=encoder, index="flat",
                                                           show_progress=False), sample_dir())
    for metrics in (first, second):
        assert {k: v for k, v in metrics.items() if k != "eval_seconds"} == pytest.approx(expected.metrics)
    assert read_run(tmp_path / "eval" / "before.trec").keys() == expected.run.keys()
