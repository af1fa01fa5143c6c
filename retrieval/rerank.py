"""Second-stage rerankers and the ``load_reranker(spec)`` factory the CLI and ``Retriever`` use.

Spec strings (``KIND[:MODEL]``; only the first ``:`` splits, so URLs and paths pass through):

* ``cross-encoder:PATH_OR_NAME`` — a sentence-transformers ``CrossEncoder`` folder or hub name (e.g. one
  made by ``training.cross_encoder.train_cross_encoder``); scores are its raw logits.
* ``llm-yesno[:MODEL]`` — P("Yes") vs P("No") to "Does the passage answer the query?".
* ``llm-rating[:MODEL]`` — expected 0-5 grade under the digits' next-token probabilities.
* ``llm-listwise[:MODEL]`` — RankGPT sliding windows (options ``window``, ``step``).

``MODEL`` for the LLM kinds defaults to ``smollm2`` (bundled SmolLM2-135M-Instruct GGUF); it may be a
local folder, a ``.gguf`` file, a hub name, or ``http://HOST:PORT/v1#MODEL_NAME`` for any
OpenAI-compatible server. ``load_reranker`` options: ``depth`` (rerank only the top N given hits) and
``show_progress`` for every kind; ``interpolate`` (weight W of the reranker in
``W * minmax(reranker) + (1 - W) * minmax(first stage)``) for ``cross-encoder``; ``batch_size``,
``device``, ``max_length`` for local models; ``max_passage_words`` for LLMs; ``window``, ``step``, ``max_tokens`` for listwise; ``timeout``,
``retries``, ``backoff``, ``api_key``, ``concurrency``, ``top_logprobs`` for HTTP.

Every reranker returns a permutation of its input: same hits, each once, best first, with ``score``
set to its own score and the first stage's score kept in ``hit.extra["first_stage_score"]``.
"""
from __future__ import annotations

import dataclasses
import importlib
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import MissingDependency
from .models import resolve_model
from .protocols import Reranker
from .types import Hit

logger = logging.getLogger(__name__)

# kind -> "module:Class"; each class has ``from_spec(model: str | None, **options)``; imported lazily.
RERANKERS: dict[str, str] = {
    "cross-encoder": "retrieval.rerank:CrossEncoderReranker",
    "llm-yesno": "retrieval.llm_rerank:YesNoReranker",
    "llm-rating": "retrieval.llm_rerank:RatingReranker",
    "llm-listwise": "retrieval.llm_rerank:ListwiseReranker",
}


def passage_text(hit: Hit) -> str:
    """Title and text joined by one space, as the first stage indexed them."""
    if hit.title and hit.text:
        return f"{hit.title} {hit.text}"
    return hit.title or hit.text


def apply_scores(hits: Sequence[Hit], scores: Sequence[float]) -> list[Hit]:
    """Reorder ``hits`` by ``scores`` (given for the first ``len(scores)`` hits), best first, ties stable.

    Hits beyond ``len(scores)`` (not reranked) follow in first-stage order with scores strictly below
    every reranked score. Returns new ``Hit`` objects; the old score goes to ``extra["first_stage_score"]``.
    """
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(values) > len(hits):
        raise ValueError(f"got {len(values)} scores for {len(hits)} hits")
    values = np.where(np.isnan(values), -np.inf, values)
    order = sorted(range(len(values)), key=lambda i: -values[i])  # sorted() is stable: ties keep input order
    lowest = float(values.min()) if len(values) else 0.0
    if lowest == np.inf:
        lowest = 0.0
    ranked = [(hits[i], float(values[i]), True) for i in order]
    ranked += [(h, lowest - 1.0 - j, False) for j, h in enumerate(hits[len(values):])]  # -inf stays -inf
    out = []
    for rank, (hit, score, reranked) in enumerate(ranked, start=1):
        extra = {**hit.extra, "reranked": reranked}
        extra.setdefault("first_stage_score", hit.score)
        out.append(dataclasses.replace(hit, score=score, rank=rank, extra=extra))
    return out


def interpolate_first_stage(scores: Sequence[float], hits: Sequence[Hit], weight: float) -> np.ndarray:
    """``weight * minmax(scores) + (1 - weight) * minmax(first-stage scores)`` over one query's hits.

    Score interpolation with the first stage (as in Pyserini's and BEIR's rerank studies) keeps what
    BM25 knows when a reranker was trained on few in-domain labels. Min-max is taken per query; a
    constant score list normalises to zeros.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"interpolate weight must be in [0, 1], got {weight}")
    first = np.array([h.extra.get("first_stage_score", h.score) for h in hits], dtype=np.float64)

    def minmax(values: np.ndarray) -> np.ndarray:  # unlike fusion.minmax, a constant list adds nothing (zeros)
        span = float(values.max() - values.min()) if len(values) else 0.0
        return (values - values.min()) / span if span > 0 else np.zeros_like(values)

    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(values) != len(first):
        raise ValueError(f"got {len(values)} scores for {len(first)} hits")
    return weight * minmax(values) + (1.0 - weight) * minmax(first)


class CrossEncoderReranker:
    """Scores (query, passage) pairs with a sentence-transformers ``CrossEncoder``; score = raw logit
    (or, with ``interpolate=W``, the logits min-max fused with the first-stage scores)."""

    def __init__(self, model: Any, batch_size: int = 32, depth: int | None = None,
                 show_progress: bool = False, interpolate: float | None = None) -> None:
        if interpolate is not None and not 0.0 <= interpolate <= 1.0:
            raise ValueError(f"interpolate weight must be in [0, 1], got {interpolate}")
        self.model = model
        self.batch_size = batch_size
        self.depth = depth
        self.show_progress = show_progress
        self.interpolate = interpolate

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, device: str | None = None, max_length: int | None = None,
                        **options: Any) -> "CrossEncoderReranker":
        """Load a CrossEncoder folder or hub name (hub names need internet or a filled HF cache)."""
        try:
            from sentence_transformers import CrossEncoder
        except ImportError as exc:
            raise MissingDependency("the cross-encoder reranker needs: pip install 'retrievekit[dense]'") from exc
        ref = resolve_model(name_or_path)
        model = CrossEncoder(ref.path, device=device, max_length=max_length)
        if model.num_labels != 1:
            raise ValueError(f"{name_or_path}: a reranking cross-encoder has 1 output label, this one has "
                             f"{model.num_labels}")
        return cls(model, **options)

    @classmethod
    def from_spec(cls, model: str | None, **options: Any) -> "CrossEncoderReranker":
        if not model:
            raise ValueError("cross-encoder needs a model: 'cross-encoder:FOLDER_OR_HUB_NAME' "
                             "(train one with training.cross_encoder)")
        return cls.from_pretrained(model, **options)

    def score(self, query: str, hits: Sequence[Hit]) -> np.ndarray:
        """Raw logits of the cross-encoder for each (query, hit) pair."""
        import torch

        if not hits:
            return np.zeros(0, dtype=np.float32)
        pairs = [(query, passage_text(h)) for h in hits]
        return np.asarray(self.model.predict(pairs, batch_size=self.batch_size, activation_fn=torch.nn.Identity(),
                                             show_progress_bar=self.show_progress))

    def rerank(self, query: str, hits: list[Hit]) -> list[Hit]:
        """The hits reordered by cross-encoder score (only the top ``depth`` are scored when set)."""
        head = hits if self.depth is None else hits[: self.depth]
        scores = self.score(query, head)
        if self.interpolate is not None:
            scores = interpolate_first_stage(scores, head, self.interpolate)
        return apply_scores(hits, scores)


def _call_with_options(factory: Any, kind: str, model: str | None, options: dict[str, Any]) -> Reranker:
    try:
        return factory(model, **options)
    except TypeError as exc:
        if "unexpected keyword argument" not in str(exc):
            raise
        raise ValueError(f"reranker {kind!r}: {exc}; see retrieval.rerank's docstring for its options") from None


def load_reranker(spec: str, **options: Any) -> Reranker:
    """Build a reranker from ``KIND[:MODEL]`` (see the module docstring); ``options`` tune it."""
    kind, _, model = spec.partition(":")
    if kind not in RERANKERS:
        raise ValueError(f"unknown reranker {kind!r} in spec {spec!r}; choose one of {sorted(RERANKERS)}")
    module, name = RERANKERS[kind].split(":")
    factory = getattr(importlib.import_module(module), name).from_spec
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


__all__ = ["RERANKERS", "CrossEncoderReranker", "apply_scores", "describe", "interpolate_first_stage",
           "load_reranker", "parse_option", "passage_text"]
