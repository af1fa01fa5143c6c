"""A GGUF that crashes llama.cpp on this CPU is found in a child process and replaced, never loaded in ours."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest

pytest.importorskip("llama_cpp")

from retrieval.rerank.llm import gguf_probe  # noqa: E402

CRASH_UNLESS_F16 = """
import os, signal, sys
if not sys.argv[1].endswith(".f16.gguf") and sys.argv[2] == "extra":   # the AMX crash: plain buffers run
    os.kill(os.getpid(), signal.SIGSEGV)
"""


@pytest.fixture()
def fake_models(tmp_path, monkeypatch):
    monkeypatch.setenv("RETRIEVEKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(gguf_probe, "PROBE", CRASH_UNLESS_F16)
    source = tmp_path / "model.Q4_1.gguf"
    source.write_bytes(b"GGUF")

    def convert(path, target):
        out = tmp_path / f"model.{target}.gguf"
        out.write_bytes(b"GGUF")
        return out

    monkeypatch.setattr(gguf_probe, "converted_gguf", convert)
    return source


def test_a_file_that_crashes_here_is_replaced_by_an_f16_copy(fake_models, caplog):
    with caplog.at_level("WARNING"):
        chosen = gguf_probe.runnable_gguf(fake_models, None)
    assert chosen.name == "model.f16.gguf"
    assert "crashes llama.cpp on this CPU" in caplog.text


def test_an_explicit_type_that_crashes_is_refused_clearly(fake_models):
    with pytest.raises(RuntimeError, match=r"q8_0 weights, extra buffers\) on this CPU; "
                                           r"try extra_buffers=False .* or convert='f16'"):
        gguf_probe.runnable_gguf(fake_models, "q8_0")
    assert gguf_probe.runnable_gguf(fake_models, "f16").name == "model.f16.gguf"


def test_plain_buffers_are_probed_apart_and_run_the_quantised_file(fake_models):
    assert gguf_probe.runnable_gguf(fake_models, None, extra_buffers=False) == fake_models
    assert gguf_probe.runnable_gguf(fake_models, "q8_0", extra_buffers=False).name == "model.q8_0.gguf"
    assert gguf_probe.runs_natively(fake_models) is False              # the extra-buffer answer is its own record
    assert gguf_probe.runs_natively(fake_models, extra_buffers=False) is True


def test_the_answer_is_cached_per_file(fake_models, monkeypatch):
    calls = []
    real = subprocess.run

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(gguf_probe.subprocess, "run", counting)
    assert gguf_probe.runs_natively(fake_models) is False
    assert gguf_probe.runs_natively(fake_models) is False
    assert len(calls) == 1
    fake_models.write_bytes(b"GGUF, changed")          # another file (size/mtime): probed again
    gguf_probe.runs_natively(fake_models)
    assert len(calls) == 2


@pytest.mark.model
def test_the_bundled_model_resolves_to_a_file_llama_cpp_runs_here():
    from retrieval.models import resolve_model

    ref = resolve_model("smollm2")
    chosen = gguf_probe.runnable_gguf(f"{ref.path}/{ref.gguf_file}", None)
    assert chosen.is_file() and gguf_probe.runs_natively(chosen)


@pytest.mark.model
def test_the_shipped_quantised_file_runs_on_plain_buffers_and_scores_like_f16():
    """On AMX CPUs this is the path that runs Q4_1 at all; anywhere, it must score close to the F16 copy."""
    import llama_cpp

    from retrieval.rerank.llm.llamacpp_backend import LlamaCppLM
    from retrieval.rerank.llm.prompts import YES_NO_CHOICES, yes_no_messages

    prompts = [yes_no_messages("What do mitochondria make?", "Mitochondria make ATP, the energy of the cell."),
               yes_no_messages("What do mitochondria make?", "The Eiffel tower is in Paris.")]
    plain = LlamaCppLM.from_pretrained("smollm2", convert=None, extra_buffers=False, n_threads=1)
    assert llama_cpp.llama_cpp.llama_model_default_params().use_extra_bufts   # the swap is undone after loading
    f16 = LlamaCppLM.from_pretrained("smollm2", convert="f16", n_threads=1)
    a = np.exp(np.asarray(plain.choice_logprobs(prompts, YES_NO_CHOICES)))
    b = np.exp(np.asarray(f16.choice_logprobs(prompts, YES_NO_CHOICES)))
    yes_a, yes_b = a[:, 0] / a.sum(axis=1), b[:, 0] / b.sum(axis=1)
    # Q4_1 kernels quantise the activations to 8 bits: up to 0.03 apart from fp32 on 40 SciFact passages
    # (benchmarks/RESULTS.md); F16 stays within 0.002
    assert np.max(np.abs(yes_a - yes_b)) < 5e-2
