"""Query-likelihood reranking (llm-ql), interpolation for every LLM reranker, and echoed-logprob parsing."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrieval.errors import DataError, LLMError
from retrieval.rerank import load_reranker
from retrieval.rerank.llm import ListwiseReranker, YesNoReranker
from retrieval.rerank.llm.backends import HFCausalLM
from retrieval.rerank.llm.prefix_cache import PrefixKV, common_prefix, shared_length, sliding_window
from retrieval.rerank.llm.prompts import Messages, query_likelihood_messages
from retrieval.rerank.llm.query_likelihood import QueryLikelihoodReranker, read_examples
from retrieval.rerank.llm.replies import prompt_logprobs
from retrieval.types import Hit
from helpers.tiny_rerank_models import tiny_causal_lm

# how likely each passage makes the query, per query token
LIKELIHOOD = {"alpha": -0.5, "bravo": -3.0, "charlie": -1.0, "delta": -4.0, "echo": -2.0}


def _hits() -> list[Hit]:
    return [Hit(id=w, score=float(10 - i), text=f"{w} passage") for i, w in enumerate(LIKELIHOOD)]


class ScriptedQL:
    """continuation_logprobs from LIKELIHOOD: one value per whitespace word of the continuation."""

    def __init__(self) -> None:
        self.seen: list[tuple[Messages, str]] = []

    def continuation_logprobs(self, prompts: Sequence[Messages], continuations: Sequence[str]) -> list[np.ndarray]:
        out = []
        for prompt, text in zip(prompts, continuations):
            self.seen.append((prompt, text))
            word = next(w for w in LIKELIHOOD if f"{w} passage" in prompt[-1]["content"])
            out.append(np.full(len(text.split()), LIKELIHOOD[word]))
        return out


def test_query_likelihood_ranks_by_the_query_log_probability() -> None:
    backend = ScriptedQL()
    reranker = QueryLikelihoodReranker(backend)
    out = reranker.rerank("  what causes cancer ", _hits())
    assert [h.id for h in out] == ["alpha", "charlie", "echo", "bravo", "delta"]
    assert out[0].score == pytest.approx(-0.5)                 # mean over tokens
    assert {text for _, text in backend.seen} == {"what causes cancer"}   # the query, stripped, is the continuation
    assert backend.seen[0][0] == query_likelihood_messages("alpha passage")
    summed = QueryLikelihoodReranker(ScriptedQL(), reduce="sum").score("what causes cancer", _hits())
    assert summed == pytest.approx([3 * v for v in LIKELIHOOD.values()])
    assert reranker.stats.to_dict() == {"passages": 5, "mean_query_tokens": 3.0,
                                        "mean_token_logprob": pytest.approx(np.mean(list(LIKELIHOOD.values()))),
                                        "nonfinite": 0}


def test_query_likelihood_checks_its_backend_and_options() -> None:
    with pytest.raises(ValueError, match="reduce"):
        QueryLikelihoodReranker(ScriptedQL(), reduce="max")

    class ChoicesOnly:
        def choice_logprobs(self, prompts, choices):
            return np.zeros((len(prompts), len(choices)))

    with pytest.raises(ValueError, match="continuation"):
        QueryLikelihoodReranker(ChoicesOnly())
    with pytest.raises(ValueError, match="interpolate"):
        QueryLikelihoodReranker(ScriptedQL(), interpolate=1.5)
    with pytest.raises(ValueError, match="instruction must be a non-empty string"):
        QueryLikelihoodReranker(ScriptedQL(), instruction="  ")
    with pytest.raises(ValueError, match="instruction must be a non-empty string, got 5"):
        QueryLikelihoodReranker(ScriptedQL(), instruction=5)


def test_query_likelihood_instruction_is_the_last_line_of_every_prompt() -> None:
    """A custom instruction (e.g. for claims rather than questions) replaces UPR's, in every passage's prompt."""
    backend = ScriptedQL()
    claim = "Please write a claim that this passage supports."
    reranker = load_reranker("llm-ql:http://127.0.0.1:9/v1#m", instruction=claim)
    assert reranker.instruction == claim
    reranker = QueryLikelihoodReranker(backend, instruction=claim)
    reranker.rerank("a claim", _hits())
    assert len(backend.seen) == len(LIKELIHOOD)
    for messages, _ in backend.seen:
        assert messages[-1]["content"].endswith("\n\n" + claim)
        assert "Please write a question" not in messages[-1]["content"]
    assert backend.seen[0][0] == query_likelihood_messages("alpha passage", claim)


def test_load_reranker_builds_llm_ql_without_touching_the_network() -> None:
    reranker = load_reranker("llm-ql:http://127.0.0.1:9/v1#m", depth=5, interpolate=0.3, timeout=1.0,
                             completion_template="chatml")
    assert isinstance(reranker, QueryLikelihoodReranker)
    assert (reranker.depth, reranker.interpolate) == (5, 0.3)
    assert reranker.backend.completion_template == "chatml"
    with pytest.raises(ValueError, match="completion_template"):
        load_reranker("llm-ql:http://127.0.0.1:9/v1#m", completion_template="alpaca")


SHOTS = [("Aspirin lowers the risk of heart attack in adults over fifty years of age.",
          "Aspirin prevents heart attacks."),
         ("Regular exercise improves sleep quality in older people.", "Exercise helps sleep.")]


def test_demonstrations_come_first_as_earlier_turns_in_every_prompt() -> None:
    """PaRaDe-style shots: each is a user turn (passage + instruction) and the query as the reply, before the
    scored passage; their passages are cut like the scored ones; the ranking still follows the scored passage."""
    backend = ScriptedQL()
    claim = "Please write a claim based on this passage."
    reranker = QueryLikelihoodReranker(backend, instruction=claim, examples=SHOTS, max_passage_words=4)
    out = reranker.rerank("a claim", _hits())
    assert [h.id for h in out] == ["alpha", "charlie", "echo", "bravo", "delta"]
    assert reranker.n_examples == 2 and reranker.examples_from is None
    for messages, _ in backend.seen:
        assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
        assert messages[1]["content"] == f"Passage: Aspirin lowers the risk\n\n{claim}"   # cut to 4 words
        assert [messages[2]["content"], messages[4]["content"]] == [q for _, q in SHOTS]
        assert messages[-1]["content"].endswith("\n\n" + claim)
    assert len({str(m[:5]) for m, _ in backend.seen}) == 1    # one shared prefix for every passage
    assert query_likelihood_messages("p", claim, ())[1:] == [{"role": "user", "content": f"Passage: p\n\n{claim}"}]


def test_demonstrations_load_from_jsonl_and_bad_ones_name_the_line(tmp_path) -> None:
    good = tmp_path / "shots.jsonl"
    good.write_text('{"passage": "P one.", "query": " q one ", "query_id": "7"}\n\n'
                    '{"passage": "P two.", "query": "q two"}\n')
    assert read_examples(good) == [("P one.", "q one"), ("P two.", "q two")]
    assert read_examples(str(good)) == read_examples([{"passage": "P one.", "query": "q one"}, ("P two.", "q two")])
    reranker = load_reranker("llm-ql:http://127.0.0.1:9/v1#m", examples=str(good))   # the CLI's --option form
    assert reranker.examples == [("P one.", "q one"), ("P two.", "q two")]
    assert reranker.examples_from == str(good)
    cases = {'{"passage": "p"}\n': r"line 1: missing field 'query'",
             '{"passage": "p", "query": "q"}\n{"passage": "", "query": "q"}\n': r"line 2, field 'passage'",
             '{"passage": "p", "query": 3}\n': r"line 1, field 'query': expected non-empty text",
             '["p", "q"]\n': r"line 1: expected a JSON object",
             '{"passage": "p", "query": "q"\n': r"line 1: malformed JSON",
             '{"passage": "p", "query": "\\ud800"}\n': r"line 1, field 'query': lone surrogate",
             '\n': r"no records"}
    for i, (text, match) in enumerate(cases.items()):
        bad = tmp_path / f"bad{i}.jsonl"
        bad.write_text(text)
        with pytest.raises(DataError, match=match) as info:
            QueryLikelihoodReranker(ScriptedQL(), examples=bad)
        assert str(bad) in str(info.value)
    with pytest.raises(DataError, match="no such demonstrations file"):
        QueryLikelihoodReranker(ScriptedQL(), examples=tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match=r"examples\[1\]: expected a \(passage, query\) pair"):
        read_examples([("p", "q"), ("only one",)])
    with pytest.raises(DataError, match="a JSONL path or a list"):
        read_examples({"passage": "p", "query": "q"})
    assert QueryLikelihoodReranker(ScriptedQL(), examples=[]).n_examples == 0


# ---- interpolation with the first stage, for every LLM reranker ------------------------------------------

class YesFrom:
    """P(Yes) per passage word; the listwise reply sorts by the same numbers."""

    def __init__(self, relevance: dict[str, float]) -> None:
        self.relevance = relevance

    def _words(self, prompt: Messages) -> list[str]:
        text = prompt[-1]["content"]
        return sorted((w for w in self.relevance if f"{w} passage" in text), key=text.index)

    def choice_logprobs(self, prompts, choices):
        rows = []
        for p in prompts:
            r = self.relevance[self._words(p)[0]]
            rows.append([math.log(r) if r > 0 else -math.inf, math.log(1 - r)])
        return np.array(rows)

    def complete(self, prompt, max_tokens):
        words = self._words(prompt)
        ranked = sorted(range(len(words)), key=lambda i: -self.relevance[words[i]])
        return " > ".join(f"[{i + 1}]" for i in ranked)


REVERSED = {"alpha": 0.1, "bravo": 0.2, "charlie": 0.3, "delta": 0.4, "echo": 0.5}   # the LLM disagrees with BM25


@pytest.mark.parametrize("make", [lambda w: YesNoReranker(YesFrom(REVERSED), interpolate=w),
                                  lambda w: ListwiseReranker(YesFrom(REVERSED), window=5, step=5, interpolate=w),
                                  lambda w: QueryLikelihoodReranker(ScriptedQL(), interpolate=w)])
def test_interpolation_weights_move_between_first_stage_and_llm(make) -> None:
    first_stage = [h.id for h in _hits()]
    assert [h.id for h in make(0.0).rerank("q", _hits())] == first_stage
    assert [h.id for h in make(1.0).rerank("q", _hits())] == [h.id for h in make(None).rerank("q", _hits())]
    mixed = make(0.5).rerank("q", _hits())
    assert all(0.0 <= h.score <= 1.0 for h in mixed)
    assert all(h.extra["first_stage_score"] == 10 - first_stage.index(h.id) for h in mixed)


def test_interpolation_ranks_a_zero_probability_last_not_nan() -> None:
    relevance = {"alpha": 0.0, "bravo": 0.9, "charlie": 0.5, "delta": 0.5, "echo": 0.5}
    out = YesNoReranker(YesFrom(relevance), interpolate=0.9).rerank("q", _hits())
    assert not any(math.isnan(h.score) for h in out)
    assert out[0].id == "bravo"


class RandomQL:
    """Arbitrary (even broken) per-token log-probs, drawn by hypothesis."""

    def __init__(self, data: st.DataObject) -> None:
        self.data = data

    def continuation_logprobs(self, prompts, continuations):
        values = st.floats(allow_nan=True, allow_infinity=True, width=32)
        return [np.array(self.data.draw(st.lists(values, max_size=4)), dtype=np.float64) for _ in prompts]


@settings(max_examples=100, deadline=None)
@given(st.data(), st.integers(0, 10), st.one_of(st.none(), st.integers(1, 10)),
       st.one_of(st.none(), st.floats(0.0, 1.0)), st.sampled_from(["mean", "sum"]))
def test_query_likelihood_always_returns_a_permutation(data, n, depth, weight, reduce) -> None:
    hits = [Hit(id=f"d{i}", score=float(-i), text=f"passage {i}") for i in range(n)]
    out = QueryLikelihoodReranker(RandomQL(data), reduce=reduce, depth=depth, interpolate=weight).rerank("q", hits)
    assert sorted(h.id for h in out) == sorted(h.id for h in hits)
    scores = [h.score for h in out]
    assert all(a >= b for a, b in zip(scores, scores[1:]))


# ---- teacher forcing on the local transformers backend ---------------------------------------------------

@pytest.fixture(scope="module")
def tiny_lm():
    return tiny_causal_lm()


def test_continuation_logprobs_equal_a_full_forward_pass(tiny_lm) -> None:
    import torch

    model, tokenizer = tiny_lm
    backend = HFCausalLM(model, tokenizer, batch_size=3)
    prompts = [query_likelihood_messages("mice cancer cells"), query_likelihood_messages("paris tower built iron"),
               query_likelihood_messages("water")]
    targets = ["what causes cancer ?", "tower", "does the river cause music in the city ?"]
    got = backend.continuation_logprobs(prompts, targets)
    single = HFCausalLM(model, tokenizer, batch_size=1).continuation_logprobs(prompts, targets)
    for prompt, target, row, one in zip(prompts, targets, got, single):
        head = tokenizer(backend.render(prompt), add_special_tokens=False)["input_ids"]
        tail = tokenizer(target, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([head + tail])).logits[0]
        expected = torch.log_softmax(logits, -1)[len(head) - 1:-1].numpy()[np.arange(len(tail)), tail]
        assert len(row) == len(tail)
        np.testing.assert_allclose(row, expected, atol=1e-5)
        np.testing.assert_allclose(one, expected, atol=1e-5)   # batching with left padding changes nothing


def test_prefix_cache_leaves_scores_unchanged_and_runs_the_demonstrations_once(tiny_lm) -> None:
    model, tokenizer = tiny_lm
    shots = [("mice cancer cells protein gene", "what causes cancer ?"), ("paris tower built iron", "the tower")]
    passages = ("heart disease gene", "river water city music", "song")
    prompts = [query_likelihood_messages(p, examples=shots) for p in passages]
    targets = ["what causes heart disease ?", "the river", "song"]
    plain = HFCausalLM(model, tokenizer, batch_size=2, prefix_cache=False)
    cached = HFCausalLM(model, tokenizer, batch_size=2, min_prefix=1)
    assert plain.prefix is None
    expected = plain.continuation_logprobs(prompts, targets)
    for _ in range(2):       # the second call finds the demonstrations in the cache the first one kept
        for got, want in zip(cached.continuation_logprobs(prompts, targets), expected):
            np.testing.assert_allclose(got, want, atol=1e-5)
    shared = shared_length([tokenizer(cached.render(p), add_special_tokens=False)["input_ids"] for p in prompts])
    assert shared > 20                                      # the system prompt and both demonstrations
    assert cached.prefix.tokens_reused >= 3 * shared        # four batches, only the first ran them
    single = HFCausalLM(model, tokenizer, batch_size=1, min_prefix=1)   # one row: the cache spans all but its end
    for got, want in zip(single.continuation_logprobs(prompts, targets), expected):
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert single.prefix.tokens_reused >= 2 * shared


def test_prefix_kv_cuts_and_extends_the_kept_cache_to_the_keys_a_fresh_pass_computes(tiny_lm) -> None:
    import torch

    model, _ = tiny_lm
    kv = PrefixKV(model)

    def keys(cache) -> list:
        return [layer.keys.clone() for layer in cache.layers]

    def fresh(ids: list[int]) -> list:
        with torch.inference_mode():
            return keys(model(input_ids=torch.tensor([ids]), use_cache=True)[kv.arg])

    a, b = list(range(3, 23)), list(range(3, 13)) + list(range(40, 46))
    for ids, evaluated in ((a, 20), (a[:12], 0), (b, 6), (a, 10), (a, 0)):
        before = kv.tokens_evaluated
        got = kv.covering(ids)
        assert kv.tokens_evaluated - before == evaluated          # only what the kept prefix lacks is run
        for mine, theirs in zip(keys(got), fresh(ids)):
            torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)
    got.batch_repeat_interleave(3)                                 # the caller's copy: the kept one stays as it was
    assert kv.cache.layers[0].keys.shape[0] == 1 and kv.ids == a
    before = kv.tokens_reused
    kv.covering(a[:15], rows=3)        # 15 from the kept cache, and 15 more for each of the batch's two other rows
    assert kv.tokens_reused - before == 15 + 2 * 15
    assert (common_prefix([1, 2, 3], [1, 2, 4]), common_prefix([], [1]), shared_length([[1, 2], [1, 2, 3], [1]])) \
        == (2, 0, 1)
    assert shared_length([]) == 0
    from transformers import Gemma3TextConfig, LlamaConfig, MistralConfig, Qwen2Config

    assert [sliding_window(c) for c in (LlamaConfig(), Qwen2Config(), MistralConfig(sliding_window=4096),
                                        Gemma3TextConfig(num_hidden_layers=2))] == [False, False, True, True]
    from transformers import Gemma3ForCausalLM

    tokenizer = tiny_lm[1]
    gemma = Gemma3ForCausalLM(Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                               num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                               head_dim=8, sliding_window=8))
    assert HFCausalLM(gemma, tokenizer).prefix is None       # its cache cannot be cut back: prompts run whole
    for bad in ({"prefix_cache": "yes"}, {"min_prefix": 0}):
        with pytest.raises(ValueError):
            HFCausalLM(*tiny_lm, **bad)


def test_query_likelihood_runs_on_the_tiny_lm(tiny_lm) -> None:
    reranker = QueryLikelihoodReranker(HFCausalLM(*tiny_lm, batch_size=2), interpolate=0.5)
    hits = [Hit("a", 3.0, "mice cancer cells"), Hit("b", 2.0, "paris tower"), Hit("c", 1.0, "river water")]
    out = reranker.rerank("what causes cancer", hits)
    assert sorted(h.id for h in out) == ["a", "b", "c"]
    assert reranker.stats.passages == 3 and reranker.stats.tokens == 9


def test_bfloat16_weights_score_close_to_float32(tiny_lm, tmp_path) -> None:
    """``dtype="bfloat16"`` (3x faster on AMX CPUs, RESULTS.md) reaches the model and keeps the scores near fp32's."""
    import torch

    model, tokenizer = tiny_lm
    model.save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    hits = [Hit("a", 3.0, "mice cancer cells"), Hit("b", 2.0, "paris tower"), Hit("c", 1.0, "river water")]
    exact = load_reranker(f"llm-ql:{tmp_path / 'lm'}").score("what causes cancer", hits)
    half = load_reranker(f"llm-ql:{tmp_path / 'lm'}", dtype="bfloat16")
    assert half.backend.model.dtype == torch.bfloat16
    scores = half.score("what causes cancer", hits)
    assert scores.dtype == np.float64 and np.isfinite(scores).all()
    np.testing.assert_allclose(scores, exact, atol=0.05)


# ---- reading echoed prompt log-probs from /completions replies --------------------------------------------

def _reply(tokens: list[str], values: list) -> dict:
    return {"choices": [{"text": "", "logprobs": {"tokens": tokens, "token_logprobs": values}}]}


URL = "http://x/v1/completions"


def test_prompt_logprobs_finds_the_continuation_from_the_end() -> None:
    tokens = ["<s>", "Passage", ":", " mice", "\n", "what", " causes", " cancer", "?"]
    values = [None, -1.0, -2.0, -3.0, -0.5, -4.0, -5.0, -6.0, -7.0]
    assert prompt_logprobs(_reply(tokens, values), URL, "what causes cancer") == [-4.0, -5.0, -6.0]
    # a reply that also lists the one generated token, and an end-of-text token
    assert prompt_logprobs(_reply(tokens[:-1] + ["!", ""], values[:-1] + [-0.1, None]), URL,
                           "what causes cancer") == [-4.0, -5.0, -6.0]
    # a token that straddles the boundary counts (its log-prob is the model's for the whole token)
    assert prompt_logprobs(_reply(["ab", "cd"], [-1.0, -2.0]), URL, "bcd") == [-1.0, -2.0]


@pytest.mark.parametrize("reply, match", [
    (_reply(["a", "b"], [-1.0, -2.0]), "do not end with"),
    (_reply(["x", "what"], [-1.0, None]), "null"),
    (_reply(["x", "what"], [-1.0, "high"]), "token_logprobs"),
    (_reply(["x"], [-1.0, -2.0]), "1 tokens but 2"),
    ({"choices": [{"text": "hi"}]}, "logprobs"),
    ({"choices": [{"logprobs": {"tokens": "what", "token_logprobs": [-1.0]}}]}, "not an array"),
    ({"choices": []}, "choices"),
])
def test_prompt_logprobs_rejects_replies_it_cannot_trust(reply, match) -> None:
    with pytest.raises(LLMError, match=match):
        prompt_logprobs(reply, URL, "what")
