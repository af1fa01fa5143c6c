"""Reranker plumbing: score application, the cross-encoder reranker (tiny random BERT), the spec factory."""
from __future__ import annotations

import inspect
import math
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrieval.rerank import (CrossEncoderReranker, apply_scores, interpolate_first_stage, load_reranker, parse_option,
                              passage_text)
from retrieval.types import Hit
from helpers.tiny_rerank_models import write_tiny_bert_cross_encoder


def _hits(n: int) -> list[Hit]:
    return [Hit(id=f"d{i}", score=float(100 - i), text=f"text {i}", rank=i + 1) for i in range(n)]


def test_apply_scores_orders_and_keeps_first_stage_score() -> None:
    out = apply_scores(_hits(3), [0.1, 0.9, 0.5])
    assert [h.id for h in out] == ["d1", "d2", "d0"]
    assert [h.score for h in out] == [0.9, 0.5, 0.1]
    assert [h.rank for h in out] == [1, 2, 3]
    assert [h.extra["first_stage_score"] for h in out] == [99.0, 98.0, 100.0]


def test_apply_scores_ties_keep_input_order_and_tail_follows() -> None:
    out = apply_scores(_hits(5), [1.0, 2.0, 1.0])
    assert [h.id for h in out] == ["d1", "d0", "d2", "d3", "d4"]
    assert [h.score for h in out] == [2.0, 1.0, 1.0, 0.0, -1.0]
    assert [h.extra["reranked"] for h in out] == [True, True, True, False, False]


def test_apply_scores_nan_goes_last_and_input_is_untouched() -> None:
    hits = _hits(3)
    out = apply_scores(hits, [float("nan"), 0.5, 0.2])
    assert [h.id for h in out] == ["d1", "d2", "d0"]
    assert out[-1].score == -math.inf
    assert hits[0].score == 100.0 and hits[0].extra == {}


def test_apply_scores_rejects_too_many_scores() -> None:
    with pytest.raises(ValueError, match="3 scores for 2 hits"):
        apply_scores(_hits(2), [1.0, 2.0, 3.0])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=30), st.integers(0, 10))
def test_apply_scores_is_a_permutation_best_first(scores: list[float], extra: int) -> None:
    hits = _hits(len(scores) + extra)
    out = apply_scores(hits, scores)
    assert sorted(h.id for h in out) == sorted(h.id for h in hits)
    values = [h.score for h in out]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_passage_text_joins_title() -> None:
    assert passage_text(Hit("x", 0.0, text="body", title="Title")) == "Title body"
    assert passage_text(Hit("x", 0.0, text="body")) == "body"


@pytest.fixture(scope="module")
def tiny_ce(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bert_cross_encoder(tmp_path_factory.mktemp("tiny_ce"))


def test_cross_encoder_scores_are_the_model_logits(tiny_ce: Path) -> None:
    reranker = load_reranker(f"cross-encoder:{tiny_ce}", batch_size=2)
    assert isinstance(reranker, CrossEncoderReranker)
    hits = [Hit("a", 3.0, "mice cancer cells"), Hit("b", 2.0, "paris tower iron"), Hit("c", 1.0, "river water")]
    out = reranker.rerank("what causes cancer in mice", hits)
    assert sorted(h.id for h in out) == ["a", "b", "c"]
    import torch
    logits = reranker.model.predict([("what causes cancer in mice", h.text) for h in hits],
                                    activation_fn=torch.nn.Identity())
    expected = {h.id: float(s) for h, s in zip(hits, logits)}
    assert {h.id: h.score for h in out} == pytest.approx(expected, abs=1e-5)
    assert [h.score for h in out] == sorted((h.score for h in out), reverse=True)


def test_cross_encoder_depth_reranks_only_the_head(tiny_ce: Path) -> None:
    reranker = CrossEncoderReranker.from_pretrained(str(tiny_ce), depth=2)
    out = reranker.rerank("cancer", _hits(4))
    assert [h.id for h in out][2:] == ["d2", "d3"]
    assert out[2].score < min(out[0].score, out[1].score)


def test_interpolation_is_a_weighted_sum_of_min_max_scores() -> None:
    from retrieval.rerank import interpolate_first_stage

    hits = [Hit("a", 10.0), Hit("b", 6.0), Hit("c", 2.0)]  # first stage -> 1, 0.5, 0
    fused = interpolate_first_stage([0.0, 4.0, 2.0], hits, 0.25)  # reranker -> 0, 1, 0.5
    assert fused == pytest.approx([0.75, 0.25 + 0.375, 0.125])
    assert interpolate_first_stage([5.0, 5.0, 5.0], hits, 1.0) == pytest.approx([0, 0, 0])  # constant -> zeros
    assert interpolate_first_stage([1.0, 2.0, 3.0], hits, 0.0) == pytest.approx([1, 0.5, 0])
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        interpolate_first_stage([1.0, 2.0, 3.0], hits, 1.5)
    with pytest.raises(ValueError, match="3 hits"):
        interpolate_first_stage([1.0], hits, 0.5)


@pytest.mark.parametrize("weight", [-0.1, 1.5, float("nan"), "0.5", True, None])
def test_every_reranker_refuses_an_interpolation_weight_outside_zero_to_one(weight) -> None:
    from retrieval.rerank.base import checked_weight
    from retrieval.rerank.llm.listwise import ListwiseReranker
    from retrieval.rerank.llm.pointwise import RatingReranker, YesNoReranker
    from retrieval.rerank.llm.query_likelihood import QueryLikelihoodReranker

    hits = [Hit("a", 2.0, "x"), Hit("b", 1.0, "y")]
    llm = SimpleNamespace(continuation_logprobs=lambda prompts, continuations: [])   # never called
    build = [lambda w: CrossEncoderReranker(object(), interpolate=w),
             lambda w: YesNoReranker(llm, interpolate=w), lambda w: RatingReranker(llm, interpolate=w),
             lambda w: ListwiseReranker(llm, interpolate=w), lambda w: QueryLikelihoodReranker(llm, interpolate=w)]
    if weight is None:   # None means "no interpolation" for a reranker, but is no weight for the function
        assert all(make(None).interpolate is None for make in build)
    else:
        for make in build:
            with pytest.raises(ValueError, match="interpolate weight must be a number in \\[0, 1\\]"):
                make(weight)
    with pytest.raises(ValueError, match="interpolate weight"):
        interpolate_first_stage([1.0, 2.0], hits, weight)
    assert checked_weight(np.float32(0.25)) == 0.25 and isinstance(checked_weight(1), float)


@pytest.mark.parametrize("option, value", [("depth", 0), ("depth", -1), ("depth", 2.5), ("depth", "ten"),
                                           ("max_passage_words", 0), ("max_passage_words", -5),
                                           ("show_progress", "yes"), ("show_progress", 1),
                                           ("max_tokens", 0), ("max_tokens", -1), ("batch_size", 0)])
def test_reranker_options_are_checked_when_built_not_at_the_first_query(option, value) -> None:
    """A bad depth or passage length used to slice silently (depth=-1 dropped the last hit, 0 reranked nothing)
    or fail deep in a slice; max_tokens=-1 asked llama.cpp for an unbounded reply."""
    from retrieval.rerank.llm.listwise import ListwiseReranker
    from retrieval.rerank.llm.pointwise import YesNoReranker
    from retrieval.rerank.llm.query_likelihood import QueryLikelihoodReranker

    llm = SimpleNamespace(continuation_logprobs=lambda prompts, continuations: [])   # never called
    kinds = {"cross-encoder": lambda **o: CrossEncoderReranker(object(), **o),
             "yes/no": lambda **o: YesNoReranker(llm, **o), "listwise": lambda **o: ListwiseReranker(llm, **o),
             "query likelihood": lambda **o: QueryLikelihoodReranker(llm, **o)}
    takes = {name: make for name, make in kinds.items()
             if option in inspect.signature({"cross-encoder": CrossEncoderReranker, "yes/no": YesNoReranker,
                                             "listwise": ListwiseReranker,
                                             "query likelihood": QueryLikelihoodReranker}[name]).parameters}
    assert takes, option
    for make in takes.values():
        with pytest.raises(ValueError, match=f"{option} must be"):
            make(**{option: value})
        good = {"show_progress": True, "batch_size": 4}.get(option)   # the limits take None: "no limit"
        assert getattr(make(**{option: good}), option) == good


@pytest.mark.parametrize("spec", [None, 5, b"llm-yesno:smollm2"])
def test_a_reranker_spec_that_is_not_a_string_is_named(spec) -> None:
    with pytest.raises(ValueError, match="a reranker spec is a string KIND\\[:MODEL\\]"):
        load_reranker(spec)


@pytest.mark.parametrize("spec, option", [("llm-yesno:smollm2", {"depth": 0}),
                                          ("llm-rating:smollm2", {"interpolate": 2}),
                                          ("llm-listwise:smollm2", {"window": 2.0}),
                                          ("llm-ql:smollm2", {"reduce": "median"}),
                                          ("llm-ql:smollm2", {"examples": "/no/such/shots.jsonl"})])
def test_an_llm_rerankers_own_options_fail_before_its_model_loads(spec, option, monkeypatch) -> None:
    import retrieval.rerank.llm.base as llm_base
    from retrieval.errors import DataError

    monkeypatch.setattr(llm_base, "load_backend", lambda *a, **k: pytest.fail("the model loaded first"))
    with pytest.raises((ValueError, DataError)):
        load_reranker(spec, **option)


@pytest.mark.parametrize("spec, option, backend", [
    ("llm-ql:smollm2", {"window": 3}, "local (transformers)"),                 # a listwise option on llm-ql
    ("llm-yesno:smollm2", {"backend": "llama-cpp", "batch_size": 4}, "local (llama-cpp)"),
    ("llm-listwise:http://127.0.0.1:9/v1#m", {"n_threads": 1}, "HTTP"),
])
def test_an_option_no_part_takes_is_named_with_both_lists(spec, option, backend, monkeypatch) -> None:
    """The error names the reranker and the backend, and lists what each takes, before any model loads."""
    import retrieval.rerank.llm.base as llm_base

    monkeypatch.setattr(llm_base, "load_backend", lambda *a, **k: pytest.fail("the model loaded first"))
    bad = next(k for k in option if k != "backend")
    with pytest.raises(ValueError, match=rf"unknown option\(s\) \['{bad}'\] for \w+Reranker on the "
                                         rf"{re.escape(backend)} LLM backend; the reranker takes \[.*'depth'.*\], "
                                         r"the backend \[.*'show_progress'"):
        load_reranker(spec, **option)


def test_cross_encoder_interpolation_option(tiny_ce: Path) -> None:
    from retrieval.rerank import interpolate_first_stage

    hits = [Hit("a", 3.0, "mice cancer cells"), Hit("b", 2.0, "paris tower iron"), Hit("c", 1.0, "river water")]
    pure = load_reranker(f"cross-encoder:{tiny_ce}")
    fused = load_reranker(f"cross-encoder:{tiny_ce}", interpolate=0.5)
    logits = pure.score("cancer", hits)
    expected = dict(zip("abc", interpolate_first_stage(logits, hits, 0.5)))
    out = fused.rerank("cancer", hits)
    assert {h.id: h.score for h in out} == pytest.approx(expected)
    assert sorted(h.id for h in out) == ["a", "b", "c"]
    assert [h.extra["first_stage_score"] for h in sorted(out, key=lambda h: h.id)] == [3.0, 2.0, 1.0]
    with pytest.raises(ValueError, match="interpolate weight"):
        load_reranker(f"cross-encoder:{tiny_ce}", interpolate=-0.1)
    with pytest.raises(TypeError, match="rerank takes a query string, got NoneType"):
        pure.rerank(None, hits)
    with pytest.raises(TypeError, match="rerank: hit 1 is a str, not a Hit"):
        pure.rerank("cancer", [hits[0], "b"])
    assert sorted(h.id for h in pure.rerank("cancer", iter(hits))) == ["a", "b", "c"]


def test_cross_encoder_in_a_retriever(tiny_ce: Path) -> None:
    from retrieval.retriever import Retriever

    docs = [{"id": str(i), "text": t} for i, t in enumerate(
        ["mice cancer cells", "cancer gene protein", "heart disease", "paris tower", "cancer cells heart"])]
    reranker = load_reranker(f"cross-encoder:{tiny_ce}")
    retriever = Retriever.from_documents(docs, reranker=reranker, rerank_depth=3, show_progress=False)
    hits = retriever.retrieve("cancer cells", k=2)
    assert len(hits) == 2 and [h.rank for h in hits] == [1, 2]
    assert all("first_stage_score" in h.extra for h in hits)


def test_load_reranker_errors(tiny_ce: Path) -> None:
    with pytest.raises(ValueError, match="unknown reranker 'bm42'"):
        load_reranker("bm42:x")
    with pytest.raises(ValueError, match="needs a model"):
        load_reranker("cross-encoder")
    with pytest.raises(ValueError, match="windw"):
        load_reranker(f"cross-encoder:{tiny_ce}", windw=3)
    with pytest.raises(FileNotFoundError):
        load_reranker("cross-encoder:/no/such/folder")


def test_load_reranker_rejects_a_classifier_with_many_labels(tmp_path: Path) -> None:
    from transformers import BertForSequenceClassification

    folder = write_tiny_bert_cross_encoder(tmp_path / "m")
    model = BertForSequenceClassification.from_pretrained(folder, num_labels=3, ignore_mismatched_sizes=True)
    model.save_pretrained(folder)
    with pytest.raises(ValueError, match="3"):
        load_reranker(f"cross-encoder:{folder}")


@pytest.mark.parametrize("text, expected", [
    ("window=10", ("window", 10)), ("timeout=2.5", ("timeout", 2.5)), ("show_progress=false", ("show_progress", False)),
    ("depth=none", ("depth", None)), ("api_key=abc=1", ("api_key", "abc=1")),
])
def test_parse_option(text: str, expected: tuple) -> None:
    assert parse_option(text) == expected


def test_parse_option_needs_key_value() -> None:
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_option("window")


def test_scores_are_numpy_friendly() -> None:
    out = apply_scores(_hits(2), np.array([0.5, 0.7], dtype=np.float32))
    assert isinstance(out[0].score, float)
