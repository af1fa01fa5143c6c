"""HybridSearcher on a tiny random BERT: fusion of the two stages, option routing, add/remove, save/load."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("faiss")
pytest.importorskip("sentence_transformers")

from helpers.tiny_encoder import make_tiny_model  # noqa: E402

from retrieval.dense.encoders import load_encoder  # noqa: E402
from retrieval.dense.searcher import IndexConfig  # noqa: E402
from retrieval.hybrid.fusion import fuse  # noqa: E402
from retrieval.hybrid.searcher import FusionConfig, HybridSearcher  # noqa: E402
from retrieval.sparse.scoring import BM25Config  # noqa: E402
from retrieval.retriever import Retriever  # noqa: E402
from retrieval.types import Document  # noqa: E402

TEXTS = ["the cat sat on the mat", "protein gene cancer", "mouse study results", "human trial therapy",
         "increased risk patients", "cell protein effect", "dog sat on mat", "decreased cancer risk"]
DOCS = [Document(f"d{i}", t) for i, t in enumerate(TEXTS)]
QUERIES = ["cancer risk", "cat on mat", "protein"]
# Measured once on the first 300 SciFact docs (18 test queries judged on them): all-MiniLM-L6-v2 exact
# search, and its RRF fusion with BM25 (default tokenizer), nDCG@10.
SCIFACT_300_QUERIES, SCIFACT_300_DENSE, SCIFACT_300_HYBRID = 18, 0.8962, 0.9382


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("hybrid") / "m")


@pytest.fixture(scope="module")
def enc(tiny):
    return load_encoder(str(tiny), show_progress=False)


@pytest.mark.parametrize("fusion", ["rrf", "linear"])
def test_search_equals_fusing_the_two_stages(enc, fusion):
    h = HybridSearcher.build(DOCS, show_progress=False, dense=enc, index="flat",
                             fusion=FusionConfig(fusion=fusion, weight=0.3, depth=5))
    got = h.search(QUERIES, 4)
    bm25, dense = h.bm25.search(QUERIES, 5), h.dense.search(QUERIES, 5)
    weights = (0.7, 0.3) if fusion == "linear" else None
    for g, b, d in zip(got, bm25, dense):
        want = fuse([b, d], 4, method=fusion, weights=weights)
        assert g[0].tolist() == want[0].tolist()
        np.testing.assert_allclose(g[1], want[1])


def test_configs_go_to_the_right_stage(enc):
    h = HybridSearcher.build(DOCS, show_progress=False, bm25=BM25Config(k1=0.9, variant="okapi"), dense=enc,
                             index=IndexConfig("hnsw", ef_search=64), tokenizer="plain")
    assert h.bm25.index.config.k1 == 0.9 and h.bm25.index.config.variant == "okapi"
    assert h.bm25.tokenizer.config.stemmer is None
    assert h.dense.config.factory == "HNSW32,Flat" and h.dense.config.ef_search == 64
    with pytest.raises(ValueError, match="fusion"):
        FusionConfig(fusion="max")
    with pytest.raises(ValueError, match="FusionConfig"):
        HybridSearcher.build(DOCS, show_progress=False, dense=enc, fusion="linear")   # type: ignore[arg-type]
    with pytest.raises(ValueError, match="method 'hybrid'.*no_such_option.*valid options"):
        Retriever.from_documents(DOCS, method="hybrid", encoder=enc, no_such_option=1)


def test_depth_bounds_each_stage_but_not_k(enc):
    h = HybridSearcher.build(DOCS, show_progress=False, dense=enc, index="flat", fusion=FusionConfig(depth=1))
    rows, _ = h.search(["cancer risk"], 6)[0]
    assert len(rows) == 6   # depth is raised to k


def test_retriever_round_trip_add_remove(tiny, tmp_path):
    r = Retriever.from_documents(DOCS, method="hybrid", model=str(tiny), index="flat", fusion="linear",
                                 weight=0.4, show_progress=False)
    r.remove(["d1"])
    r.add([Document("new", "gene therapy for cancer")])
    before = r.retrieve_batch(QUERIES, k=5)
    assert "d1" not in {h.id for hs in before for h in hs}
    r.save(tmp_path / "idx")
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["method"] == "hybrid" and manifest["stage"]["fusion"] == "linear"
    assert manifest["stage"]["weight"] == 0.4 and manifest["stage"]["dense"]["encoder"]["dim"] == 32
    assert (tmp_path / "idx" / "stage" / "bm25").is_dir() and (tmp_path / "idx" / "stage" / "dense").is_dir()
    loaded = Retriever.load(tmp_path / "idx")
    after = loaded.retrieve_batch(QUERIES, k=5)
    assert [[h.id for h in hs] for hs in after] == [[h.id for h in hs] for hs in before]
    rrf = Retriever.load(tmp_path / "idx", fusion="rrf", n_jobs=1)
    assert rrf.searcher.fusion == "rrf" and rrf.searcher.bm25.n_jobs == 1


def test_bad_settings_fail():
    with pytest.raises(ValueError, match="weight"):
        HybridSearcher(None, None, weight=1.5)   # type: ignore[arg-type]
    with pytest.raises(ValueError, match="depth"):
        HybridSearcher(None, None, depth=0)   # type: ignore[arg-type]
    with pytest.raises(ValueError, match="FusionConfig: unknown option"):
        HybridSearcher(None, None, alpha=0.5)   # type: ignore[arg-type]


def test_fusion_config_reads_what_hybrid_manifests_hold():
    saved = {"fusion": "linear", "weight": 0.4, "rrf_k": 60.0, "depth": 100}   # the keys a saved stage has
    config = FusionConfig.from_dict(saved)
    assert config.to_dict() == saved and HybridSearcher(None, None, config).weight == 0.4   # type: ignore[arg-type]
    with pytest.raises(ValueError, match="FusionConfig: unknown key.*valid keys: fusion, weight, rrf_k, depth"):
        FusionConfig.from_dict({**saved, "k": 3})


@pytest.mark.slow
@pytest.mark.model
def test_scifact_end_to_end_with_the_bundled_model(scifact_dir, scifact_docs, tmp_path):
    """300 real SciFact documents, the test queries judged on them: dense and hybrid beat chance by far."""
    from retrieval.sparse.searcher import BM25Searcher
    from retrieval.data import load_beir
    from retrieval.eval.metrics import evaluate

    docs = scifact_docs[:300]
    ids = {d.id for d in docs}
    ds = load_beir(scifact_dir, "test")
    qrels = {q: rel for q, rel in ds.qrels.items() if set(rel) <= ids}
    queries = {q: ds.queries[q] for q in qrels}
    dense = Retriever.from_documents(docs, method="dense", model="minilm", index="flat", show_progress=False)
    hybrid = Retriever(HybridSearcher(BM25Searcher.build(docs, show_progress=False), dense.searcher), dense.docs)
    scores = {name: evaluate(qrels, r.run(queries, k=100), k_values=(10,))["nDCG@10"]
              for name, r in (("dense", dense), ("hybrid", hybrid))}
    assert len(queries) == SCIFACT_300_QUERIES
    assert scores["dense"] == pytest.approx(SCIFACT_300_DENSE, abs=0.002)
    assert scores["hybrid"] == pytest.approx(SCIFACT_300_HYBRID, abs=0.002)
    dense.save(tmp_path / "idx")
    again = Retriever.load(tmp_path / "idx", model="all-MiniLM-L6-v2")   # an alias of the same bundled folder
    assert evaluate(qrels, again.run(queries, k=100), k_values=(10,))["nDCG@10"] == pytest.approx(scores["dense"])
