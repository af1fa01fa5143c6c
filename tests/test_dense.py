"""DenseSearcher: FAISS index choice, id mapping, add/remove, save/load and mismatch errors (tiny random BERT)."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("faiss")
pytest.importorskip("sentence_transformers")

from helpers.tiny_encoder import make_tiny_model  # noqa: E402

from retrieval.dense.searcher import (DenseSearcher, IndexConfig, ivf_lists, pq_shape, resolve_index,  # noqa: E402
                                      same_model)
from retrieval.dense.encoders import load_encoder  # noqa: E402
from retrieval.errors import IndexFormatError  # noqa: E402
from retrieval.retriever import Retriever  # noqa: E402
from retrieval.types import Document  # noqa: E402

TEXTS = ["the cat sat on the mat", "protein gene cancer", "mouse study results", "human trial therapy",
         "increased risk patients", "cell protein effect", "dog sat on mat", "decreased cancer risk",
         "gene therapy trial", "the human cell", "results show effect", "mouse cancer gene"]
DOCS = [Document(f"d{i}", t) for i, t in enumerate(TEXTS)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("dense") / "m")


@pytest.fixture(scope="module")
def enc(tiny):
    return load_encoder(str(tiny), show_progress=False)


def self_hits(searcher: DenseSearcher, docs) -> list[int]:
    """Top row when each document's own embedding is the query."""
    emb = searcher.encoder.encode_documents(docs)
    return [int(r[0][0]) for r in searcher.search_vectors(emb, 3)]


def test_index_names_resolve_to_factory_strings_by_size():
    assert resolve_index("auto", 5_000, 384).factory == "Flat"
    assert resolve_index("auto", 500_000, 384).factory == "HNSW32,Flat"
    assert resolve_index("auto", 50_000_000, 384).factory.endswith("PQ48x8np")
    assert resolve_index("flat", 10, 32).factory == "Flat"
    assert resolve_index("ivf", 5183, 384).factory == f"IVF{ivf_lists(5183)},Flat" == "IVF132,Flat"
    assert resolve_index("ivfpq", 5183, 384).factory == "IVF132,PQ48x8np"
    assert resolve_index("IVF8,Flat", 100, 32).factory == "IVF8,Flat"
    assert pq_shape(32, 12) == (4, 3) and ivf_lists(12) == 1
    with pytest.raises(ValueError, match="trained"):
        resolve_index("ivfpq", 1, 32)


@pytest.mark.parametrize("index", ["flat", "hnsw", "ivf", "ivfpq"])
def test_every_document_finds_itself_first(enc, index):
    searcher = DenseSearcher.build(DOCS, show_progress=False, index=IndexConfig(index, nprobe=64), encoder=enc)
    hits = self_hits(searcher, DOCS)
    if index == "ivfpq":   # lossy codes: most, not all, documents come back first
        assert np.mean(np.array(hits) == np.arange(len(DOCS))) >= 0.5
    else:
        assert hits == list(range(len(DOCS)))


def test_string_ids_map_to_increasing_faiss_ids(enc):
    searcher = DenseSearcher.build(DOCS[:4], show_progress=False, index="flat", encoder=enc)
    assert searcher.doc_ids == ["d0", "d1", "d2", "d3"] and searcher.faiss_ids.tolist() == [0, 1, 2, 3]
    searcher.remove([1])
    searcher.add([Document("new", "gene therapy trial")])
    assert searcher.doc_ids == ["d0", "d2", "d3", "new"] and searcher.faiss_ids.tolist() == [0, 2, 3, 4]
    assert searcher.row_of("new") == 3
    with pytest.raises(ValueError, match="already"):
        searcher.add([Document("d0", "again")])


@pytest.mark.parametrize("index", ["flat", "hnsw", "ivf"])
def test_add_and_remove_shift_rows_like_the_docstore(enc, index):
    searcher = DenseSearcher.build(DOCS[:8], show_progress=False, index=IndexConfig(index, nprobe=64), encoder=enc)
    searcher.add(DOCS[8:])
    assert len(searcher) == 12 and self_hits(searcher, DOCS) == list(range(12))
    searcher.remove([1, 3])
    kept = [d for i, d in enumerate(DOCS) if i not in (1, 3)]
    assert searcher.doc_ids == [d.id for d in kept]
    assert self_hits(searcher, kept) == list(range(10))
    all_rows = {int(r) for rows, _ in searcher.search_vectors(enc.encode_documents(DOCS), 12) for r in rows}
    assert all_rows <= set(range(10))
    if index == "hnsw":   # HNSW cannot delete: tombstones filtered at search time
        assert searcher.removed.tolist() == [1, 3] and searcher.index.ntotal == 12


def test_hnsw_compacts_when_many_are_removed(enc):
    searcher = DenseSearcher.build(DOCS, show_progress=False, index="hnsw", encoder=enc)
    searcher.remove([0, 1])
    assert len(searcher.removed) == 2
    searcher.remove([0, 1])          # 4 of 12 removed > 25%: rebuilt without tombstones
    assert len(searcher.removed) == 0 and searcher.index.ntotal == 8
    assert self_hits(searcher, DOCS[4:]) == list(range(8))


def test_hnsw_recall_against_flat_on_random_vectors(enc):
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((2000, enc.dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ids = [str(i) for i in range(2000)]
    q = emb[:50] + 0.3 * rng.standard_normal((50, enc.dim)).astype(np.float32)
    flat = DenseSearcher.from_embeddings(ids, emb, enc, index="flat").search_vectors(q, 10)
    hnsw = DenseSearcher.from_embeddings(ids, emb, enc, index="hnsw").search_vectors(q, 10)
    recall = np.mean([len(set(a[0]) & set(b[0])) / 10 for a, b in zip(hnsw, flat)])
    assert recall >= 0.95
    np.testing.assert_allclose(flat[0][1], np.sort(emb @ q[0])[::-1][:10], rtol=1e-5)


@pytest.mark.parametrize("index", ["flat", "hnsw"])
def test_one_query_search_runs_on_one_thread_and_restores_it(enc, index):
    import faiss

    rng = np.random.default_rng(1)
    emb = rng.standard_normal((500, enc.dim)).astype(np.float32)
    searcher = DenseSearcher.from_embeddings([str(i) for i in range(500)], emb, enc, index=index)
    searcher.remove([3])                       # with a selector too
    before = faiss.omp_get_max_threads()
    batch = searcher.search_vectors(emb[:4], 5)
    for i in range(4):
        rows, scores = searcher.search_vectors(emb[i], 5)[0]
        np.testing.assert_array_equal(rows, batch[i][0])
        np.testing.assert_array_equal(scores, batch[i][1])
    assert faiss.omp_get_max_threads() == before


def test_k_larger_than_collection_and_empty_index(enc):
    searcher = DenseSearcher.build(DOCS[:3], show_progress=False, index="flat", encoder=enc)
    rows, scores = searcher.search(["cat"], 10)[0]
    assert sorted(rows.tolist()) == [0, 1, 2] and np.all(np.diff(scores) <= 0)
    empty = DenseSearcher.build([], show_progress=False, index="flat", encoder=enc)
    assert empty.search(["cat"], 5)[0][0].size == 0
    with pytest.raises(ValueError, match="k must"):
        searcher.search(["cat"], 0)


@pytest.mark.parametrize("index", ["flat", "hnsw", "ivfpq"])
def test_save_load_round_trip(tiny, tmp_path, index):
    r = Retriever.from_documents(DOCS, method="dense", model=str(tiny), index=index, show_progress=False)
    r.remove(["d2"])
    before = r.retrieve_batch(TEXTS, k=5)
    r.save(tmp_path / "idx")
    manifest = json.loads((tmp_path / "idx" / "stage" / "manifest.json").read_text())
    assert manifest["kind"] == "dense" and manifest["format_version"] == 1
    assert manifest["encoder"]["model"] == str(tiny) and manifest["encoder"]["dim"] == 32
    assert manifest["encoder"]["normalize"] is True
    loaded = Retriever.load(tmp_path / "idx", model=str(tiny))
    after = loaded.retrieve_batch(TEXTS, k=5)
    assert [[h.id for h in hs] for hs in after] == [[h.id for h in hs] for hs in before]
    np.testing.assert_allclose([h.score for hs in after for h in hs], [h.score for hs in before for h in hs], rtol=1e-5)
    loaded.add([Document("z", "dog sat on mat")])
    assert loaded.retrieve("dog sat on mat", k=12)[0].id in ("z", "d6")


def test_loading_with_another_model_fails_clearly(tiny, tmp_path):
    r = Retriever.from_documents(DOCS[:4], method="dense", model=str(tiny), index="flat", show_progress=False)
    r.save(tmp_path / "idx")
    other = make_tiny_model(tmp_path / "other", seed=1)
    with pytest.raises(IndexFormatError, match="built with model"):
        Retriever.load(tmp_path / "idx", model=str(other))
    wide = load_encoder(str(make_tiny_model(tmp_path / "wide", normalize=False)), show_progress=False)
    with pytest.raises(IndexFormatError, match="normalize"):
        Retriever.load(tmp_path / "idx", encoder=wide)


def test_loading_with_a_different_dimension_fails_clearly(tiny, tmp_path, enc):
    r = Retriever.from_documents(DOCS[:4], method="dense", encoder=enc, index="flat", show_progress=False)
    r.save(tmp_path / "idx")
    stage = tmp_path / "idx" / "stage" / "manifest.json"
    manifest = json.loads(stage.read_text())
    manifest["encoder"]["dim"] = 64
    stage.write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="dimension is 64"):
        Retriever.load(tmp_path / "idx", verify=False)  # the edit is caught by the checksum otherwise


def test_newer_format_is_refused(tiny, tmp_path, enc):
    r = Retriever.from_documents(DOCS[:4], method="dense", encoder=enc, index="flat", show_progress=False)
    r.save(tmp_path / "idx")
    stage = tmp_path / "idx" / "stage" / "manifest.json"
    manifest = json.loads(stage.read_text())
    manifest["format_version"] = 99
    stage.write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="format version 99"):
        Retriever.load(tmp_path / "idx", verify=False)  # the edit is caught by the checksum otherwise


def test_model_aliases_count_as_the_same_model(tiny):
    assert same_model(str(tiny), str(tiny) + "/")
    assert not same_model(str(tiny), "some-org/other-model")


def test_int8_backend_is_recorded_and_reused_on_load(tiny, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("RETRIEVEKIT_CACHE", str(tmp_path / "cache"))
    r = Retriever.from_documents(DOCS, method="dense", model=str(tiny), int8=True, backend="onnx",
                                 show_progress=False)
    r.save(tmp_path / "idx")
    manifest = json.loads((tmp_path / "idx" / "stage" / "manifest.json").read_text())
    assert manifest["encoder"]["int8"] is True and manifest["encoder"]["backend"] == "onnx"
    loaded = Retriever.load(tmp_path / "idx")
    assert loaded.searcher.encoder.config.backend == "onnx"
    assert [h.id for h in loaded.retrieve(TEXTS[0], k=3)] == [h.id for h in r.retrieve(TEXTS[0], k=3)]
    fp32_onnx = Retriever.load(tmp_path / "idx", int8=False).searcher.encoder.config
    assert fp32_onnx.backend == "onnx" and not fp32_onnx.int8
    assert Retriever.load(tmp_path / "idx", backend="torch").searcher.encoder.config.backend == "torch"


def test_bf16_is_recorded_and_reused_on_load(tiny, tmp_path):
    r = Retriever.from_documents(DOCS, method="dense", model=str(tiny), bf16=True, show_progress=False)
    r.save(tmp_path / "idx")
    manifest = json.loads((tmp_path / "idx" / "stage" / "manifest.json").read_text())
    assert manifest["encoder"]["bf16"] is True and manifest["encoder"]["int8"] is False
    config = Retriever.load(tmp_path / "idx").searcher.encoder.config
    assert config.bf16 and not config.int8
    switched = Retriever.load(tmp_path / "idx", int8=True).searcher.encoder.config
    assert switched.int8 and not switched.bf16
    assert not Retriever.load(tmp_path / "idx", bf16=False).searcher.encoder.config.bf16


def test_a_relative_model_path_resolves_to_the_same_model_from_another_folder(tmp_path, monkeypatch):
    """Issue 12-7: the stored model is an absolute path plus a fingerprint, checked on load."""
    import shutil

    make_tiny_model(tmp_path / "models" / "m")
    monkeypatch.chdir(tmp_path)
    r = Retriever.from_documents(DOCS, method="dense", model="models/m/st", index="flat", show_progress=False)
    before = r.retrieve_batch(TEXTS[:4], k=3)
    r.save(tmp_path / "idx")
    saved = json.loads((tmp_path / "idx" / "stage" / "manifest.json").read_text())["encoder"]
    stored = str((tmp_path / "models" / "m" / "st").resolve())
    assert saved["model"] == stored and saved["source"] == "local" and len(saved["fingerprint"]) == 64
    make_tiny_model(tmp_path / "elsewhere" / "models" / "m", seed=1)   # another model at the same relative path
    monkeypatch.chdir(tmp_path / "elsewhere")
    after = Retriever.load(tmp_path / "idx").retrieve_batch(TEXTS[:4], k=3)
    assert [[h.id for h in hs] for hs in after] == [[h.id for h in hs] for hs in before]
    np.testing.assert_allclose([h.score for hs in after for h in hs], [h.score for hs in before for h in hs], rtol=1e-5)
    shutil.copytree(tmp_path / "models" / "m" / "st", tmp_path / "moved")
    moved = Retriever.load(tmp_path / "idx", model=str(tmp_path / "moved"))   # same fingerprint: accepted
    assert moved.retrieve(TEXTS[0], k=1)[0].id == before[0][0].id
    shutil.rmtree(tmp_path / "models")
    make_tiny_model(tmp_path / "models" / "m", seed=2)   # the folder now holds a different model
    with pytest.raises(IndexFormatError, match=f"built with model '{stored}' \\(fingerprint .*its weights or config"):
        Retriever.load(tmp_path / "idx")
    shutil.rmtree(tmp_path / "models")
    with pytest.raises(IndexFormatError, match=f"local model folder '{stored}', which does not exist"):
        Retriever.load(tmp_path / "idx")


def test_index_config_is_frozen_and_resolves_knobs_over_defaults():
    import dataclasses

    config = IndexConfig("hnsw", ef_search=64)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.nprobe = 3   # type: ignore[misc]
    resolved = resolve_index(config, 1000, 32)
    assert (resolved.factory, resolved.ef_search, resolved.ef_construction) == ("HNSW32,Flat", 64, 200)
    assert resolve_index(resolved, 5, 32) is resolved   # a config with a factory is kept as it is
    assert IndexConfig.from_dict(resolved.to_dict()) == resolved
    with pytest.raises(ValueError, match="IndexConfig: unknown key"):
        IndexConfig.from_dict({"name": "flat", "nlist": 4})
    with pytest.raises(ValueError, match="nprobe must be >= 1"):
        IndexConfig("ivf", nprobe=0)
