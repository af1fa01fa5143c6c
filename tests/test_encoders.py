"""Bi-encoder loading and encoding, on a tiny random BERT (offline) and a few checks on the bundled MiniLM."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
st = pytest.importorskip("sentence_transformers")

from retrieval.dense.encoders import BiEncoder, load_encoder  # noqa: E402
from retrieval.types import Document  # noqa: E402

from helpers.tiny_encoder import make_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "m")


def test_documents_encode_title_and_text_as_float32(tiny_model_dir):
    enc = load_encoder(str(tiny_model_dir), show_progress=False)
    docs = [Document("d1", "cell gene", "the cat"), Document("d2", "mouse study")]
    emb = enc.encode_documents(docs)
    assert emb.dtype == np.float32 and emb.shape == (2, 32) and enc.dim == 32
    same = enc.encode_documents(["the cat cell gene", "mouse study"])
    np.testing.assert_allclose(emb, same, atol=1e-6)
    assert enc.model_name == str(tiny_model_dir)


def test_normalisation_follows_the_model(tmp_path):
    normed = load_encoder(str(make_tiny_model(tmp_path / "n", normalize=True)), show_progress=False)
    raw = load_encoder(str(make_tiny_model(tmp_path / "r", normalize=False)), show_progress=False)
    assert normed.normalize and not raw.normalize
    np.testing.assert_allclose(np.linalg.norm(normed.encode_queries(["cat sat"]), axis=1), 1.0, atol=1e-5)
    assert abs(np.linalg.norm(raw.encode_queries(["cat sat"])) - 1.0) > 1e-3


def test_prefixes_from_model_prompts_and_overrides(tmp_path):
    path = make_tiny_model(tmp_path / "p", prompts={"query": "query: ", "document": "passage: "})
    enc = load_encoder(str(path), show_progress=False)
    assert (enc.query_prefix, enc.doc_prefix) == ("query: ", "passage: ")
    plain = load_encoder(str(path), query_prefix="", doc_prefix="", show_progress=False)
    np.testing.assert_allclose(enc.encode_queries(["cat"]), plain.encode_documents(["query: cat"]), atol=1e-5)
    np.testing.assert_allclose(enc.encode_documents(["cat"]), plain.encode_queries(["passage: cat"]), atol=1e-5)
    assert not np.allclose(enc.encode_queries(["cat"]), enc.encode_documents(["cat"]))


def test_batch_order_does_not_change_embeddings(tiny_model_dir):
    enc = load_encoder(str(tiny_model_dir), batch_size=2, show_progress=False)
    texts = ["cat", "the dog sat on the mat", "gene", "protein cell results show increased risk"]
    batched = enc.encode_documents(texts)
    single = np.vstack([enc.encode_documents([t]) for t in texts])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_max_seq_length_truncates(tiny_model_dir):
    short = load_encoder(str(tiny_model_dir), max_seq_length=4, show_progress=False)
    assert short.max_seq_length == 4
    a, b = short.encode_documents(["cat dog sat on mat", "cat dog sat gene protein"])
    np.testing.assert_allclose(a, b, atol=1e-6)   # identical first 2 word pieces after [CLS]
    with pytest.raises(ValueError, match="max_seq_length"):
        load_encoder(str(tiny_model_dir), max_seq_length=0)


def test_from_model_wraps_in_memory_model(tiny_model_dir):
    model = st.SentenceTransformer(str(tiny_model_dir), device="cpu")
    enc = BiEncoder.from_model(model, model_name="tiny", show_progress=False)
    assert enc.model_name == "tiny" and enc.dim == 32 and enc.normalize
    np.testing.assert_allclose(enc.encode_queries(["cat"]), model.encode(["cat"], normalize_embeddings=True),
                               atol=1e-6)


def test_int8_path_stays_close_and_leaves_original(tiny_model_dir):
    model = st.SentenceTransformer(str(tiny_model_dir), device="cpu")
    fp32 = BiEncoder.from_model(model, show_progress=False)
    int8 = BiEncoder.from_model(model, int8=True, show_progress=False)
    assert int8.model is not model and type(model[0].auto_model.encoder.layer[0].intermediate.dense).__name__ == "Linear"
    texts = ["the cat sat on the mat", "protein gene cancer risk"]
    cos = (fp32.encode_documents(texts) * int8.encode_documents(texts)).sum(1)
    assert np.all(cos > 0.95)
    with pytest.raises(ValueError, match="CPU"):
        load_encoder(str(tiny_model_dir), int8=True, device="cuda")


def test_int8_packing_engine_is_restored_and_bad_engine_fails(tiny_model_dir):
    from retrieval.dense.quantize import default_engine, quantize_linear_int8

    model = st.SentenceTransformer(str(tiny_model_dir), device="cpu")
    before = torch.backends.quantized.engine
    assert default_engine() in torch.backends.quantized.supported_engines
    for engine in {default_engine(), before}:
        quantized = quantize_linear_int8(model, engine=engine)
        assert torch.backends.quantized.engine == before
        cos = (model.encode(["the cat sat"], normalize_embeddings=True)
               * quantized.encode(["the cat sat"], normalize_embeddings=True)).sum()
        assert cos > 0.95
    with pytest.raises(ValueError, match="not in this torch build"):
        quantize_linear_int8(model, engine="no-such-engine")
    assert torch.backends.quantized.engine == before


def test_bf16_path_autocasts_and_stays_close(tiny_model_dir, monkeypatch):
    model = st.SentenceTransformer(str(tiny_model_dir), device="cpu")
    fp32 = BiEncoder.from_model(model, show_progress=False)
    bf16 = BiEncoder.from_model(model, bf16=True, show_progress=False)
    seen = []
    original = torch.nn.Linear.forward

    def spy(self, x):
        out = original(self, x)
        seen.append(out.dtype)
        return out

    monkeypatch.setattr(torch.nn.Linear, "forward", spy)
    texts = ["the cat sat on the mat", "protein gene cancer risk"]
    emb = bf16.encode_documents(texts)
    assert set(seen) == {torch.bfloat16}          # the matrix products really ran in bf16
    assert emb.dtype == np.float32 and bf16.model is model and bf16.describe()["bf16"] is True
    seen.clear()
    cos = (fp32.encode_documents(texts) * emb).sum(1)
    assert set(seen) == {torch.float32} and np.all(cos > 0.99) and np.all(cos < 1 + 1e-5)
    with pytest.raises(ValueError, match="pick one"):
        load_encoder(str(tiny_model_dir), int8=True, bf16=True)
    with pytest.raises(ValueError, match="pick one"):
        BiEncoder.from_model(model, int8=True, bf16=True)


def test_bf16_warns_on_a_cpu_without_bf16_instructions(tiny_model_dir, monkeypatch, caplog):
    import retrieval.dense.encoders as encoders

    monkeypatch.setattr(encoders, "has_fast_bf16", lambda: False)
    with caplog.at_level("WARNING", logger="retrieval.dense.encoders"):
        load_encoder(str(tiny_model_dir), bf16=True, show_progress=False)
    assert "slower than fp32" in caplog.text


def test_cpu_flags_parse_proc_cpuinfo(monkeypatch, tmp_path):
    import retrieval.dense.cpu as cpu

    fake = tmp_path / "cpuinfo"
    fake.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_vnni amx_bf16\n\nprocessor\t: 1\nflags\t: fpu\n")
    real_path = cpu.Path
    monkeypatch.setattr(cpu, "Path", lambda p: fake if p == "/proc/cpuinfo" else real_path(p))
    cpu.cpu_flags.cache_clear()
    try:
        assert cpu.cpu_flags() == {"fpu", "avx2", "avx512_vnni", "amx_bf16"}
        assert cpu.has_fast_int8() and cpu.has_fast_bf16()
        fake.write_text("processor\t: 0\nflags\t: fpu avx2\n")
        cpu.cpu_flags.cache_clear()
        assert not cpu.has_fast_int8() and not cpu.has_fast_bf16()
        fake.unlink()
        cpu.cpu_flags.cache_clear()
        assert cpu.cpu_flags() == frozenset()
    finally:
        cpu.cpu_flags.cache_clear()


def test_bad_inputs_fail_clearly(tiny_model_dir):
    enc = load_encoder(str(tiny_model_dir), show_progress=False)
    with pytest.raises(TypeError):
        enc.encode_queries("one string")
    assert enc.encode_documents([]).shape == (0, 32)
    with pytest.raises(FileNotFoundError):
        load_encoder("./no/such/model/folder")


@pytest.mark.model
def test_bundled_minilm_loads_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = load_encoder("minilm", show_progress=False)
    assert (enc.dim, enc.normalize, enc.pooling, enc.max_seq_length) == (384, True, "mean", 256)
    q = enc.encode_queries(["A cat sits on a mat.", "Tumour suppressor genes in cancer."])
    d = enc.encode_documents(["A kitten rests on a rug.", "p53 mutations drive tumour growth."])
    sim = q @ d.T
    assert sim[0, 0] > sim[0, 1] and sim[1, 1] > sim[1, 0]
    int8 = load_encoder("minilm", int8=True, show_progress=False)
    assert float((int8.encode_queries(["A cat sits on a mat."]) * q[:1]).sum()) > 0.95
    bf16 = load_encoder("minilm", bf16=True, show_progress=False)
    assert float((bf16.encode_queries(["A cat sits on a mat."]) * q[:1]).sum()) > 0.999


def test_onnx_int8_backend_matches_torch_and_reuses_its_cache(tiny_model_dir, tmp_path, caplog):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    cache = tmp_path / "onnx-cache"
    fp32 = load_encoder(str(tiny_model_dir), show_progress=False)
    onnx = load_encoder(str(tiny_model_dir), int8=True, backend="onnx", cache_dir=str(cache), batch_size=2,
                        show_progress=False)
    assert onnx.describe()["backend"] == "onnx" and onnx.config.to_dict()["backend"] == "onnx"
    texts = ["the cat sat on the mat", "protein gene cancer risk", "mouse", "study results show increased risk"]
    got, ref = onnx.encode_documents(texts), fp32.encode_documents(texts)
    assert got.dtype == np.float32 and got.shape == ref.shape
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert np.all((got * ref).sum(1) > 0.95)
    assert np.argmax(got @ ref.T, axis=1).tolist() == [0, 1, 2, 3]
    folders = list(cache.iterdir())
    assert len(folders) == 1 and (folders[0] / "model.int8.onnx").is_file()
    stamp = (folders[0] / "model.int8.onnx").stat().st_mtime_ns
    with caplog.at_level("INFO", logger="retrieval.dense.onnx"):
        again = load_encoder(str(tiny_model_dir), int8=True, backend="onnx", cache_dir=str(cache), show_progress=False)
    assert "reusing" in caplog.text and list(cache.iterdir()) == folders
    assert (folders[0] / "model.int8.onnx").stat().st_mtime_ns == stamp
    # activations are quantised per batch, so another batch size moves the vectors only slightly
    np.testing.assert_allclose(again.encode_documents(texts), got, atol=2e-3)
    other = make_tiny_model(tmp_path / "other", seed=1)
    load_encoder(str(other), int8=True, backend="onnx", cache_dir=str(cache), show_progress=False)
    assert len(list(cache.iterdir())) == 2   # different weights, different cache folder


def test_onnx_backend_follows_prefixes_truncation_and_pooling(tmp_path):
    pytest.importorskip("onnxruntime")
    cache = str(tmp_path / "cache")
    path = make_tiny_model(tmp_path / "p", prompts={"query": "query: ", "document": "passage: "}, pooling="cls",
                           normalize=False)
    torch_enc = load_encoder(str(path), max_seq_length=4, show_progress=False)
    onnx = load_encoder(str(path), int8=True, backend="onnx", cache_dir=cache, max_seq_length=4, show_progress=False)
    assert onnx.max_seq_length == 4 and onnx.pooling == "cls" and not onnx.normalize
    q, r = onnx.encode_queries(["cat dog sat on mat"]), torch_enc.encode_queries(["cat dog sat on mat"])
    assert float((q * r).sum() / np.linalg.norm(q) / np.linalg.norm(r)) > 0.95
    a, b = onnx.encode_documents(["cat dog sat on mat", "cat dog sat gene protein"])
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert onnx.encode_documents([]).shape == (0, 32)


def test_onnx_fp32_backend_matches_torch_and_has_its_own_cache_entry(tmp_path):
    pytest.importorskip("onnxruntime")
    cache = tmp_path / "cache"
    path = make_tiny_model(tmp_path / "m", prompts={"query": "query: ", "document": "passage: "})
    torch_enc = load_encoder(str(path), show_progress=False)
    onnx = load_encoder(str(path), backend="onnx", cache_dir=str(cache), batch_size=2, show_progress=False)
    assert onnx.describe()["backend"] == "onnx" and not onnx.describe()["int8"]
    texts = ["the cat sat on the mat", "protein gene cancer risk", "mouse", "study results show increased risk"]
    # fp32 through ONNX Runtime: the same vectors as torch, not merely close ones
    np.testing.assert_allclose(onnx.encode_documents(texts), torch_enc.encode_documents(texts), atol=1e-5)
    np.testing.assert_allclose(onnx.encode_queries(texts[:1]), torch_enc.encode_queries(texts[:1]), atol=1e-5)
    assert [p.name for p in cache.glob("*/*.onnx")] == ["model.fp32.onnx"]
    load_encoder(str(path), int8=True, backend="onnx", cache_dir=str(cache), show_progress=False)
    assert sorted(p.name for p in cache.glob("*/*.onnx")) == ["model.fp32.onnx", "model.int8.onnx"]
    with pytest.raises(ValueError, match="CPU only"):
        load_encoder(str(path), backend="onnx", device="cuda")
    with pytest.raises(ValueError, match="bf16=True runs in torch"):
        load_encoder(str(path), backend="onnx", bf16=True, cache_dir=str(cache))


def test_onnx_backend_options_and_missing_dependency(tiny_model_dir, monkeypatch):
    with pytest.raises(ValueError, match="backend"):
        load_encoder(str(tiny_model_dir), int8=True, backend="tensorrt")
    import builtins

    from retrieval.errors import MissingDependency

    real_import = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name.split(".")[0] in ("onnxruntime", "onnx"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    with pytest.raises(MissingDependency, match="pip install onnxruntime onnx"):
        load_encoder(str(tiny_model_dir), int8=True, backend="onnx")


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_exported_backends_refuse_what_numpy_pooling_cannot_redo_naming_themselves(backend):
    from retrieval.dense.onnx import _st_parts

    def module(kind, **attrs):
        return type(kind, (), attrs)()

    transformer = module("Transformer")
    assert _st_parts([transformer, module("Pooling", pooling_mode="cls"), module("Normalize")], backend) == (
        transformer, "cls")
    for parts, why in (([transformer, module("Dense")], "Transformer -> Pooling"),
                       ([transformer, module("Pooling"), module("Dense")], "Transformer -> Pooling"),
                       ([transformer, module("Pooling", pooling_mode="weightedmean")], "supports pooling"),
                       ([transformer, module("Pooling", pooling_mode="mean", include_prompt=False)], "include_prompt")):
        with pytest.raises(ValueError, match=f"backend='{backend}' .*{why}"):
            _st_parts(parts, backend)


@pytest.mark.model
def test_bundled_minilm_onnx_int8_stays_close(monkeypatch, tmp_path):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    texts = ["A cat sits on a mat.", "p53 mutations drive tumour growth in several human cancers."]
    fp32 = load_encoder("minilm", show_progress=False).encode_documents(texts)
    onnx = load_encoder("minilm", int8=True, backend="onnx", cache_dir=str(tmp_path), show_progress=False)
    assert onnx.describe()["backend"] == "onnx"
    assert np.all((onnx.encode_documents(texts) * fp32).sum(1) > 0.97)
    onnx32 = load_encoder("minilm", backend="onnx", cache_dir=str(tmp_path), show_progress=False)
    np.testing.assert_allclose(onnx32.encode_documents(texts), fp32, atol=1e-4)


def test_encoder_config_is_frozen_validated_once_and_the_one_list_of_options(tiny_model_dir):
    import dataclasses

    from retrieval.dense.encoders import ENCODER_OPTIONS, EncoderConfig

    config = EncoderConfig(model=tiny_model_dir, batch_size=4)   # a Path is kept as a string
    assert config.model == str(tiny_model_dir)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.int8 = True   # type: ignore[misc]
    assert EncoderConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="EncoderConfig: unknown key"):
        EncoderConfig.from_dict({"model": "m", "quantize": True})
    assert ENCODER_OPTIONS == tuple(f.name for f in dataclasses.fields(EncoderConfig) if f.name != "show_progress")
    for bad, message in (({"batch_size": 0}, "batch_size"), ({"int8": "yes"}, "int8 must be bool"),
                         ({"device": "cuda", "backend": "onnx"}, "CPU only"), ({"max_seq_length": 2.5}, "int")):
        with pytest.raises(ValueError, match=message):
            EncoderConfig(**bad)
    with pytest.raises(ValueError, match="EncoderConfig: unknown option.*'quantize'"):
        load_encoder(str(tiny_model_dir), quantize=True)
    enc = load_encoder(config, show_progress=False)   # a whole config, with a field changed
    assert enc.config == config.with_options(show_progress=False) and enc.source == "local"


def test_registry_prefixes_apply_only_when_the_model_declares_none(tiny_model_dir, monkeypatch):
    import retrieval.models as models
    from retrieval.models import ModelSpec

    monkeypatch.setitem(models._BY_NAME, str(tiny_model_dir),
                        ModelSpec(str(tiny_model_dir), "bi-encoder", query_prefix="q: ", doc_prefix="d: "))
    enc = load_encoder(str(tiny_model_dir), show_progress=False)
    assert (enc.query_prefix, enc.doc_prefix) == ("q: ", "d: ")


def test_document_encoding_streams_in_blocks(tiny_model_dir, monkeypatch):
    """Texts are made and encoded a block at a time into one array: the same vectors as one call."""
    import retrieval.dense.encoders as encoders

    enc = load_encoder(str(tiny_model_dir), show_progress=False, batch_size=2)
    docs = [Document(id=str(i), title="t" * (i % 3), text=f"the cat {'gene ' * i} sat") for i in range(11)]
    whole = enc.encode_documents(docs)
    sizes = []
    real = enc._encode
    monkeypatch.setattr(enc, "_encode", lambda texts, *a, **kw: sizes.append(len(texts)) or real(texts, *a, **kw))
    monkeypatch.setattr(encoders, "STREAM_BLOCK", 4)
    streamed = enc.encode_documents(iter(docs))          # any iterable
    assert sizes == [4, 4, 3]
    assert streamed.dtype == np.float32 and streamed.shape == whole.shape
    np.testing.assert_allclose(streamed, whole, atol=1e-5)


@pytest.mark.parametrize("call, arg, words", [
    ("encode_queries", None, "encode_queries takes a list of str, got NoneType"),
    ("encode_queries", [None], "encode_queries: query 0 is a NoneType, not a str"),
    ("encode_documents", [{"_id": "x", "text": "t"}], "document 0 is a dict, not a Document or str"),  # was its repr
    ("encode_documents", 5, "takes a list of Documents or strings, got int"),
])
def test_encoders_name_what_is_not_text(call, arg, words, tmp_path: Path) -> None:
    encoder = load_encoder(str(make_tiny_model(tmp_path)), show_progress=False)
    with pytest.raises(TypeError, match=words):
        getattr(encoder, call)(arg)


@pytest.mark.parametrize("model", [5, None, "", "  "])
def test_a_model_that_is_not_a_name_is_refused(model) -> None:
    from retrieval.dense.encoders import EncoderConfig

    with pytest.raises(ValueError, match="EncoderConfig.model must name a model"):
        EncoderConfig(model=model)


def test_an_unreachable_hub_name_says_what_was_tried() -> None:
    """Offline, a name that is no alias and no folder fails with one line that says so (not only the hub's text)."""
    with pytest.raises(OSError, match=r"model 'nobody/no-such-model' is not a bundled alias \(minilm\) or a local "
                                      r"folder, and loading it from the Hugging Face hub failed"):
        load_encoder("nobody/no-such-model")
