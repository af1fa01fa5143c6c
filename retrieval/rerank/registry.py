"""The ``load_reranker(spec)`` factory the CLI and ``Retriever`` use to build any second stage.

Spec strings (``KIND[:MODEL]``; only the first ``:`` splits, so URLs and paths pass through):

* ``cross-encoder:PATH_OR_NAME`` — a sentence-transformers ``CrossEncoder`` folder or hub name (e.g. one
  ``OUT/model`` made by ``retrieval train cross-encoder --out OUT``); scores are its raw logits.
* ``llm-yesno[:MODEL]`` — P("Yes") vs P("No") to "Does the passage answer the query?".
* ``llm-rating[:MODEL]`` — expected 0-5 grade under the digits' next-token probabilities.
* ``llm-listwise[:MODEL]`` — RankGPT sliding windows (options ``window``, ``step``).
* ``llm-ql[:MODEL]`` — query likelihood: mean (``reduce="sum"``: sum) log P(query | passage, instruction);
  options ``instruction`` and ``examples`` (a JSONL file of ``{"passage", "query"}`` demonstrations).

``MODEL`` for the LLM kinds defaults to ``smollm2`` (bundled SmolLM2-135M-Instruct GGUF); it may be
``gemma3-270m`` (the ``gemma`` extra), a local folder, a ``.gguf`` file, a hub name, or
``http://HOST:PORT/v1#MODEL_NAME`` for any OpenAI-compatible server. ``load_reranker`` options: ``depth``
(rerank only the top N given hits) and
``show_progress`` for every kind; ``interpolate`` (weight W of the reranker in
``W * minmax(reranker) + (1 - W) * minmax(first stage)``) for ``cross-encoder`` and every LLM kind;
``backend`` (``"transformers"``, the default, or ``"llama-cpp"``: the GGUF run natively) for local LLMs;
``batch_size``, ``device``, ``max_length``, ``dtype`` (``"bfloat16"``: 3x faster on AMX CPUs) for local
transformers models; ``max_length``, ``n_threads``, ``n_batch``, ``convert`` (``f16``/``bf16``/``q8_0``/``f32``:
a re-typed copy) and ``extra_buffers`` (``false``: plain CPU buffers, no AMX) for llama-cpp; ``max_passage_words`` for LLMs; ``window``, ``step``, ``max_tokens`` for listwise; ``timeout``,
``retries``, ``backoff``, ``api_key``, ``concurrency``, ``top_logprobs``, ``max_reply_bytes``, ``max_redirects``,
``completion_template`` (``plain``/``chatml``, for ``llm-ql``'s ``/completions`` prompts), ``check_echo`` for HTTP.

Every reranker returns a permutation of its input: same hits, each once, best first, with ``score``
set to its own score and the first stage's score kept in ``hit.extra["first_stage_score"]``.
"""
from __future__ import annotations

import importlib
from typing import Any

from retrieval.protocols import Reranker

# kind -> "module:Class"; each class has ``from_spec(model: str | None, **options)``; imported lazily.
RERANKERS: dict[str, str] = {
    "cross-encoder": "retrieval.rerank.cross_encoder:CrossEncoderReranker",
    "llm-yesno": "retrieval.rerank.llm.pointwise:YesNoReranker",
    "llm-rating": "retrieval.rerank.llm.pointwise:RatingReranker",
    "llm-listwise": "retrieval.rerank.llm.listwise:ListwiseReranker",
    "llm-ql": "retrieval.rerank.llm.query_likelihood:QueryLikelihoodReranker",
}


def _call_with_options(factory: Any, kind: str, model: str | None, options: dict[str, Any]) -> Reranker:
    try:
        return factory(model, **options)
    except TypeError as exc:
        if "unexpected keyword argument" not in str(exc):
            raise
        raise ValueError(f"reranker {kind!r}: {exc}; see retrieval.rerank.registry's docstring for its options") from None


def reranker_class(spec: str) -> type:
    """The class a ``KIND[:MODEL]`` spec names, imported but not built (for its class attributes)."""
    if not isinstance(spec, str):
        raise ValueError(f"a reranker spec is a string KIND[:MODEL], e.g. 'llm-yesno:smollm2'; got {spec!r}")
    kind = spec.partition(":")[0]
    if kind not in RERANKERS:
        raise ValueError(f"unknown reranker {kind!r} in spec {spec!r}; choose one of {sorted(RERANKERS)}")
    module, name = RERANKERS[kind].split(":")
    return getattr(importlib.import_module(module), name)


def load_reranker(spec: str, **options: Any) -> Reranker:
    """Build a reranker from ``KIND[:MODEL]`` (see the module docstring); ``options`` tune it."""
    factory = reranker_class(spec).from_spec     # checks the spec first
    kind, _, model = spec.partition(":")
    return _call_with_options(factory, kind, model or None, options)


def parse_option(text: str) -> tuple[str, Any]:
    """``"window=10"`` -> ``("window", 10)``; values become int, float, bool or None when they read as one."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"reranker option {text!r}: expected KEY=VALUE")
    lowered = raw.strip().lower()
    if lowered in ("true", "false"):
        return key.strip(), lowered == "true"
    if lowered in ("none", "null"):
        return key.strip(), None
    for kind in (int, float):
        try:
            return key.strip(), kind(raw)
        except ValueError:
            pass
    return key.strip(), raw


def describe(reranker: Reranker) -> dict[str, Any]:
    """A JSON-able summary (class and simple settings), for benchmark records."""
    settings = {k: v for k, v in vars(reranker).items() if isinstance(v, (int, float, str, bool, type(None)))}
    return {"class": type(reranker).__name__, **settings}
