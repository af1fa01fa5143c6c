"""One contract for every first stage (bm25, dense on a tiny random BERT, hybrid): result shape, k above the
collection size, add/remove equal to a fresh build, save/load round trip, and option routing for every flat
option of every method (through ``Retriever.from_documents`` and through the CLI)."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("faiss")
pytest.importorskip("sentence_transformers")

from retrieval.cli import build_parser, main  # noqa: E402
from retrieval.configs import field_names  # noqa: E402
from retrieval.dense.encoders import EncoderConfig  # noqa: E402
from retrieval.dense.searcher import IndexConfig  # noqa: E402
from retrieval.hybrid.searcher import FusionConfig  # noqa: E402
from retrieval.options import METHOD_OPTIONS, options_from_args, valid_options  # noqa: E402
from retrieval.retriever import Retriever  # noqa: E402
from retrieval.sparse.scoring import BM25Config  # noqa: E402
from retrieval.sparse.tokenize import TokenizerConfig  # noqa: E402
from retrieval.types import Document  # noqa: E402

METHODS = ["bm25", "dense", "hybrid"]
TEXTS = ["the cat sat on the mat", "protein gene cancer", "mouse study results", "human trial therapy",
         "increased risk patients", "cell protein effect", "dog sat on mat", "decreased cancer risk",
         "gene therapy trial", "the human cell"]
DOCS = [Document(f"d{i}", t) for i, t in enumerate(TEXTS)]
QUERIES = ["cancer risk", "cat on the mat", "protein gene", "zebra"]


@pytest.fixture()
def tiny(tiny_model_folder):
    return tiny_model_folder


@pytest.fixture()
def enc(tiny_bi_encoder):
    return tiny_bi_encoder


def build(method: str, docs, enc) -> Retriever:
    """A retriever of ``method`` over ``docs``; the dense part reuses one loaded tiny encoder, exact search."""
    options = {} if method == "bm25" else {"encoder": enc, "index": "flat"}
    return Retriever.from_documents(docs, method=method, show_progress=False, **options)


def ids_and_scores(retriever: Retriever, queries, k: int):
    run = retriever.run(dict(enumerate(queries)), k=k)
    return [(list(hits), np.array(list(hits.values()))) for hits in run.values()]


@pytest.mark.parametrize("method", METHODS)
def test_result_shape(method, enc):
    searcher = build(method, DOCS, enc).searcher
    results = searcher.search(QUERIES, 3)
    assert len(results) == len(QUERIES)
    for rows, scores in results:
        assert rows.dtype == np.int64 and scores.ndim == 1 and len(rows) == len(scores) <= 3
        assert len(set(rows.tolist())) == len(rows) and all(0 <= r < len(DOCS) for r in rows.tolist())
        assert np.all(np.diff(scores) <= 1e-6)   # best first
    assert searcher.search([], 3) == []


@pytest.mark.parametrize("method", METHODS)
def test_k_above_the_collection_size(method, enc):
    searcher = build(method, DOCS[:4], enc).searcher
    for rows, scores in searcher.search(QUERIES, 50):
        assert len(rows) <= 4 and len(set(rows.tolist())) == len(rows) and np.all(rows >= 0)
    if method != "bm25":   # the dense stage ranks every document
        assert all(len(rows) == 4 for rows, _ in searcher.search(QUERIES, 50))


@pytest.mark.parametrize("method", METHODS)
def test_add_and_remove_equal_a_fresh_build(method, enc):
    grown = build(method, DOCS[:6], enc)
    grown.add(DOCS[6:])
    grown.remove(["d1", "d7"])
    kept = [d for d in DOCS if d.id not in ("d1", "d7")]
    fresh = build(method, kept, enc)
    assert [d.id for d in grown.docs] == [d.id for d in kept]
    for (ids_a, s_a), (ids_b, s_b) in zip(ids_and_scores(grown, QUERIES, 5), ids_and_scores(fresh, QUERIES, 5)):
        assert ids_a == ids_b
        np.testing.assert_allclose(s_a, s_b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_save_load_round_trip(method, enc, tmp_path):
    r = build(method, DOCS, enc)
    r.remove(["d3"])
    before = ids_and_scores(r, QUERIES, 5)
    r.save(tmp_path / "idx")
    loaded = Retriever.load(tmp_path / "idx")
    assert loaded.method == method and len(loaded) == len(DOCS) - 1
    for (ids_a, s_a), (ids_b, s_b) in zip(before, ids_and_scores(loaded, QUERIES, 5)):
        assert ids_a == ids_b
        np.testing.assert_allclose(s_a, s_b, rtol=1e-5, atol=1e-6)


# --- option routing -------------------------------------------------------------------------------
# A non-default value for every flat option; the two builds below set them all at once (two, because
# int8 and bf16 are two exclusive fast paths).
FIELD_VALUES = {
    "variant": "okapi", "k1": 0.9, "b": 0.5, "epsilon": 0.2, "dtype": "float64", "implementation": "rank_bm25",
    "lowercase": False, "token_pattern": r"[a-z]+", "stopwords": None, "stemmer": "porter",
    "int8": True, "backend": "onnx", "bf16": False, "max_seq_length": 16, "query_prefix": "q: ",
    "doc_prefix": "d: ", "batch_size": 3, "device": "cpu",
    "nprobe": 3, "ef_search": 17, "ef_construction": 33,
    "fusion": "linear", "weight": 0.3, "rrf_k": 10.0, "depth": 7,
}
BF16_VALUES = {"int8": False, "backend": "torch", "bf16": True}


def stage_configs(method: str, searcher) -> dict[type, object]:
    """Where each config lands on a built searcher (read off the real objects, not the option table)."""
    bm25 = searcher if method == "bm25" else getattr(searcher, "bm25", None)
    dense = searcher if method == "dense" else getattr(searcher, "dense", None)
    out: dict[type, object] = {}
    if bm25 is not None:
        out[BM25Config], out[TokenizerConfig] = bm25.index.config, bm25.tokenizer.config
    if dense is not None:
        out[EncoderConfig], out[IndexConfig] = dense.encoder.config, dense.config
    if method == "hybrid":
        out[FusionConfig] = searcher.config
    return out


def flat_options(method: str, tiny, values: dict) -> dict:
    names = valid_options(method)
    options = {k: v for k, v in values.items() if k in names}
    if "model" in names:
        options.update(model=str(tiny), index="hnsw")
    if "n_jobs" in names:   # the custom token_pattern needs the opt-in, so that is checked too
        options.update(n_jobs=1, allow_custom_pattern=True)
    if "index_workers" in names:
        options.update(index_workers=2)
    return options


def check_routed(method: str, searcher, options: dict) -> set[str]:
    """Assert every option's value is on the built searcher; return the names checked."""
    checked = set()
    configs = stage_configs(method, searcher)
    for cls, config in configs.items():
        for name in set(options) & (set(field_names(cls)) - {"name", "factory"}):
            assert getattr(config, name) == options[name], f"{method}: {name} did not reach {cls.__name__}"
            checked.add(name)
    if "index" in options:
        assert configs[IndexConfig].name == options["index"] and configs[IndexConfig].factory.startswith("HNSW")
        checked.add("index")
    if "n_jobs" in options:
        assert (searcher if method == "bm25" else searcher.bm25).n_jobs == options["n_jobs"]
        assert configs[TokenizerConfig].token_pattern == r"[a-z]+"
        checked |= {"n_jobs", "allow_custom_pattern"}
    return checked


def whole_values_routed(method: str, enc) -> set[str]:
    """``tokenizer=`` (a preset name) and ``encoder=`` (a ready encoder) reach their stage."""
    dense = {} if method == "bm25" else {"encoder": enc, "index": "flat"}
    options = {**dense, **({} if method == "dense" else {"tokenizer": "nostem"})}
    searcher = Retriever.from_documents(DOCS[:3], method=method, show_progress=False, **options).searcher
    configs = stage_configs(method, searcher)
    if "tokenizer" in options:
        assert configs[TokenizerConfig] == TokenizerConfig.preset("nostem")
    if "encoder" in options:
        assert (searcher if method == "dense" else searcher.dense).encoder is enc
    return set(options) - {"index"}


@pytest.mark.parametrize("method", METHODS)
def test_every_flat_option_reaches_its_stage(method, tiny, enc, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("RETRIEVEKIT_CACHE", str(tmp_path / "cache"))
    options = flat_options(method, tiny, FIELD_VALUES)
    import retrieval.sparse.searcher as sparse_searcher

    workers_seen: list = []
    real_count = sparse_searcher.count_texts
    monkeypatch.setattr(sparse_searcher, "count_texts",
                        lambda *a, **kw: workers_seen.append(kw.get("workers")) or real_count(*a, **kw))
    searcher = Retriever.from_documents(DOCS, method=method, show_progress=False, **options).searcher
    checked = check_routed(method, searcher, options) | whole_values_routed(method, enc)
    if "index_workers" in options:   # a build-time choice: it reaches the tokenizer pool, not a stored config
        assert workers_seen[0] == options["index_workers"]
        checked.add("index_workers")
    if method != "bm25":   # int8 and bf16 exclude each other: a second build sets bf16
        bf16 = {**options, **BF16_VALUES}
        bf16_searcher = Retriever.from_documents(DOCS, method=method, show_progress=False, **bf16).searcher
        checked |= check_routed(method, bf16_searcher, bf16)
    assert checked == set(valid_options(method)), "an option without a routing check"


def test_hybrid_backend_reaches_the_encoder_through_the_cli(tiny, tmp_path, monkeypatch):
    """The bug: ``--method hybrid --backend onnx`` failed with "unknown BM25 backend 'onnx'"."""
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("RETRIEVEKIT_CACHE", str(tmp_path / "cache"))
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"_id": d.id, "text": d.text}) + "\n" for d in DOCS), encoding="utf-8")
    out = tmp_path / "idx"
    assert main(["index", str(docs), "--out", str(out), "--quiet", "--method", "hybrid", "--model", str(tiny),
                 "--backend", "onnx", "--index", "flat", "--k1", "1.1"]) == 0
    stage = json.loads((out / "manifest.json").read_text())["stage"]
    assert stage["dense"]["encoder"]["backend"] == "onnx" and stage["bm25"]["bm25"]["k1"] == 1.1
    loaded = Retriever.load(out)
    assert loaded.searcher.dense.encoder.config.backend == "onnx"


@pytest.mark.parametrize("method", METHODS)
def test_every_cli_flag_maps_to_a_flat_option(method):
    names = valid_options(method)
    argv = ["index", "docs.jsonl", "--out", "x", "--method", method]
    expected = {}
    for name in names:
        value = {**FIELD_VALUES, "bf16": True}.get(name, {"tokenizer": "plain", "index": "hnsw", "model": "m",
                                                         "n_jobs": 2, "allow_custom_pattern": True,
                                                         "index_workers": 2}.get(name))
        if name == "encoder" or value is None:
            continue   # a ready object, or a None the CLI does not spell: library-only
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + name.replace("_", "-"))
        else:
            argv += [flag, str(value)]
        expected[name] = value
    assert options_from_args(build_parser().parse_args(argv)) == expected


def test_a_flag_of_another_method_is_refused():
    args = build_parser().parse_args(["index", "d.jsonl", "--out", "x", "--method", "bm25", "--backend", "onnx"])
    with pytest.raises(ValueError, match="--backend does not apply to --method bm25; its options: --variant"):
        options_from_args(args)


@pytest.mark.parametrize("method", METHODS)
def test_unknown_options_name_the_method_and_its_options(method):
    with pytest.raises(ValueError, match=f"method '{method}': unknown option.*'no_such'.*valid options: .*"):
        Retriever.from_documents(DOCS, method=method, no_such=1)
    with pytest.raises(ValueError, match=f"method '{method}' takes config= objects"):
        Retriever.from_documents(DOCS, method=method, config=object())


def test_bm25_backend_was_renamed():
    with pytest.raises(ValueError, match="'backend' is now called 'implementation'"):
        Retriever.from_documents(DOCS, backend="rank_bm25")


def test_config_objects_are_accepted_and_flat_options_refine_them(enc):
    r = Retriever.from_documents(DOCS, config=BM25Config(variant="okapi", k1=1.2), b=0.4, show_progress=False)
    assert r.searcher.index.config == BM25Config(variant="okapi", k1=1.2, b=0.4)
    r = Retriever.from_documents(DOCS, config=[TokenizerConfig.preset("plain"), BM25Config(k1=2.0)],
                                 show_progress=False)
    assert r.searcher.tokenizer.config.stemmer is None and r.searcher.index.config.k1 == 2.0
    h = Retriever.from_documents(DOCS, method="hybrid", encoder=enc, show_progress=False,
                                 config=[FusionConfig(fusion="linear", weight=0.2), IndexConfig("flat")])
    assert h.searcher.fusion == "linear" and h.searcher.weight == 0.2 and h.searcher.dense.config.factory == "Flat"
    with pytest.raises(ValueError, match="tokenizer= and a TokenizerConfig config both given"):
        Retriever.from_documents(DOCS, config=TokenizerConfig(), tokenizer="plain")
    with pytest.raises(ValueError, match="cannot change a ready"):
        Retriever.from_documents(DOCS, method="dense", encoder=enc, int8=True)


def test_tables_cover_each_config_field_once():
    for table in METHOD_OPTIONS.values():
        flat = table.flat()
        for slot in table.slots:
            assert set(slot.options()) <= set(flat)
    hybrid = set(valid_options("hybrid"))
    assert set(valid_options("bm25")) | set(valid_options("dense")) <= hybrid
    assert hybrid - set(valid_options("bm25")) - set(valid_options("dense")) == set(field_names(FusionConfig))


@pytest.mark.parametrize("method", METHODS)
def test_load_options_are_the_load_keywords(method):
    """``LOAD_OPTIONS`` (what Retriever.load accepts and hybrid routes) is exactly what each ``load`` takes."""
    import inspect

    from retrieval.retriever import searcher_class
    cls = searcher_class(method)
    own = [n for n in inspect.signature(cls.load).parameters if n not in {"folder", "config", "options"}]
    if method == "hybrid":    # hybrid takes its fusion keywords and passes the rest on to its two stages
        assert set(own) < set(cls.LOAD_OPTIONS)
        stages = searcher_class("bm25").LOAD_OPTIONS + searcher_class("dense").LOAD_OPTIONS
        assert set(cls.LOAD_OPTIONS) == set(own) | set(stages)
    else:
        assert tuple(own) == cls.LOAD_OPTIONS


@pytest.mark.parametrize("method", METHODS)
def test_load_refuses_an_unknown_option(method, enc, tmp_path):
    build(method, DOCS[:4], enc).save(tmp_path / "i")
    with pytest.raises(ValueError, match=f"unknown load option.*'nprob'.*{method} index"):
        Retriever.load(tmp_path / "i", nprob=4)


def test_hybrid_load_routes_options_to_the_right_stage(enc, tmp_path, monkeypatch):
    build("hybrid", DOCS[:4], enc).save(tmp_path / "i")
    loaded = Retriever.load(tmp_path / "i", encoder=enc, n_jobs=1, weight=0.3, fusion="linear")
    assert loaded.searcher.bm25.n_jobs == 1 and loaded.searcher.fusion == "linear"
    assert loaded.searcher.weight == 0.3 and loaded.searcher.dense.encoder is enc


@pytest.mark.parametrize("module, name, options", [
    ("retrieval.sparse.scoring", "BM25Config", {"k1": float("nan")}),
    ("retrieval.hybrid.searcher", "FusionConfig", {"rrf_k": float("inf")}),
    ("retrieval.distributed.cluster", "ClusterConfig", {"timeout_s": float("nan")}),
    ("training.config", "TSDAEConfig", {"corpus": "c", "out": "o", "lr": float("inf")}),
])
def test_config_numbers_must_be_finite(module: str, name: str, options: dict) -> None:
    """NaN passed every range check ('k1 < 0' is False for NaN), so every BM25 score became NaN."""
    import importlib

    config = getattr(importlib.import_module(module), name)
    with pytest.raises(ValueError, match=f"{name}.\\w+ must be a finite number"):
        config(**options)
