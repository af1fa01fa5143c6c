"""The OpenVINO encoder backend on a tiny random BERT: fp32 equals torch, static int8 calibrates, caches, reloads."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("nncf")

from retrieval import Retriever  # noqa: E402
from retrieval.dense.encoders import EncoderConfig, load_encoder  # noqa: E402
from retrieval.errors import DataError  # noqa: E402

from helpers.tiny_encoder import make_tiny_model  # noqa: E402

TEXTS = ["the cat sat on the mat", "protein gene cancer risk", "mouse", "study results show increased risk",
         "patients trial effect of therapy", "the dog sat", "human cell study", "decreased risk in mouse"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("ov") / "m")


@pytest.mark.parametrize("pooling", ["mean", "cls", "max"])
def test_fp32_openvino_equals_torch(tmp_path, pooling) -> None:
    model = make_tiny_model(tmp_path / "m", pooling=pooling)
    torch_enc = load_encoder(str(model), show_progress=False)
    ov = load_encoder(str(model), backend="openvino", cache_dir=str(tmp_path / "cache"), batch_size=3,
                      show_progress=False)
    np.testing.assert_allclose(ov.encode_documents(TEXTS), torch_enc.encode_documents(TEXTS), atol=1e-4)
    np.testing.assert_allclose(ov.encode_queries(TEXTS[:2]), torch_enc.encode_queries(TEXTS[:2]), atol=1e-4)


def test_int8_calibrates_on_the_first_documents_and_reuses_its_cache(tiny, tmp_path, caplog) -> None:
    cache = tmp_path / "cache"
    ref = load_encoder(str(tiny), show_progress=False).encode_documents(TEXTS)
    int8 = load_encoder(str(tiny), int8=True, backend="openvino", cache_dir=str(cache), show_progress=False)
    with pytest.raises(ValueError, match="not calibrated"):
        int8.encode_queries(["cat"])                      # queries never calibrate: documents come first
    assert int8.describe()["calibration"] is None
    got = int8.encode_documents(TEXTS)
    ident = int8.describe()["calibration"]
    assert ident.startswith("sha256:")
    assert got.dtype == np.float32 and got.shape == ref.shape
    assert np.all((got * ref).sum(1) > 0.95)
    assert np.argmax(got @ ref.T, axis=1).tolist() == list(range(len(TEXTS)))
    models = [p for p in cache.iterdir() if p.name != "calibration"]
    assert len(models) == 1 and (models[0] / "model.int8.xml").is_file()
    assert json.loads((models[0] / "settings.json").read_text())["calibration"] == ident
    # the same calibration id (as a reloaded index passes it) reuses the quantised model
    with caplog.at_level("INFO", logger="retrieval.dense.openvino"):
        again = load_encoder(str(tiny), int8=True, backend="openvino", calibration=ident, cache_dir=str(cache),
                             show_progress=False)
    assert "reusing" in caplog.text
    np.testing.assert_allclose(again.encode_documents(TEXTS), got, atol=1e-5)
    assert [p for p in cache.iterdir() if p.name != "calibration"] == models


def test_calibration_from_a_corpus_file_and_clear_errors(tiny, tmp_path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": str(i), "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    enc = load_encoder(str(tiny), int8=True, backend="openvino", calibration=str(corpus),
                       cache_dir=str(tmp_path / "cache"), show_progress=False)
    assert enc.describe()["calibration"].startswith("sha256:")
    assert enc.encode_queries(["cat"]).shape == (1, 32)     # calibrated up front: queries work at once
    with pytest.raises(DataError, match="does not exist"):
        load_encoder(str(tiny), int8=True, backend="openvino", calibration=str(tmp_path / "missing.jsonl"),
                     cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataError, match="no cached texts"):
        load_encoder(str(tiny), int8=True, backend="openvino", calibration="sha256:" + "0" * 24,
                     cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="calibration applies"):
        EncoderConfig(model=str(tiny), backend="onnx", int8=True, calibration=str(corpus))
    with pytest.raises(ValueError, match="bf16"):
        EncoderConfig(model=str(tiny), backend="openvino", bf16=True)
    with pytest.raises(ValueError, match="CPU only"):
        EncoderConfig(model=str(tiny), backend="openvino", device="cuda")


def test_int8_openvino_index_saves_and_reloads_with_its_calibration(tiny, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("RETRIEVEKIT_CACHE", str(tmp_path / "cache"))
    docs = [{"id": f"d{i}", "text": t} for i, t in enumerate(TEXTS)]
    r = Retriever.from_documents(docs, method="dense", model=str(tiny), int8=True, backend="openvino",
                                 show_progress=False)
    r.save(tmp_path / "idx")
    manifest = json.loads((tmp_path / "idx" / "stage" / "manifest.json").read_text())
    assert manifest["encoder"]["backend"] == "openvino" and manifest["encoder"]["calibration"].startswith("sha256:")
    loaded = Retriever.load(tmp_path / "idx")
    assert loaded.searcher.encoder.describe()["calibration"] == manifest["encoder"]["calibration"]
    for query in TEXTS[:4]:
        assert [h.id for h in loaded.retrieve(query, k=3)] == [h.id for h in r.retrieve(query, k=3)]
