"""Run our encoders inside the official ``mteb`` package (its v2 ``EncoderProtocol``).

    >>> import mteb
    >>> from retrieval.dense.encoders import load_encoder
    >>> from retrieval.eval.mteb_adapter import MTEBEncoder
    >>> model = MTEBEncoder(load_encoder("minilm"), name="retrievekit/minilm")
    >>> mteb.evaluate(model, mteb.get_tasks(tasks=["STSBenchmark"]))   # needs the hub for the data

Queries are encoded with ``encode_queries`` and documents (``prompt_type="document"``) with
``encode_documents``; symmetric tasks (STS, classification) use ``encode_queries``. Similarity is cosine.
``mteb`` itself is only imported when ``mteb_model_meta`` is read (``pip install mteb``).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from retrieval.errors import MissingDependency
from retrieval.eval.mteb_tasks import encode_texts


def _texts(inputs: Iterable[Any]) -> list[str]:
    """Flatten mteb's batches (dicts with a ``text`` list) or plain strings into one list."""
    out: list[str] = []
    for batch in inputs:
        if isinstance(batch, str):
            out.append(batch)
        elif isinstance(batch, dict) and "text" in batch:
            out.extend(batch["text"])
        else:
            raise TypeError(f"expected batches with a 'text' field, got {type(batch).__name__}")
    return out


def _unit(x: Any) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    x = x[None, :] if x.ndim == 1 else x
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1.0, norms)


class MTEBEncoder:
    """Wraps a retrievekit BiEncoder (or any ``encode(list[str])`` model) as an mteb encoder."""

    def __init__(self, encoder: Any, name: str | None = None, revision: str | None = None) -> None:
        self.encoder = encoder
        self.name = name or f"retrievekit/{getattr(encoder, 'model_name', type(encoder).__name__)}"
        self.revision = revision
        self._meta = None

    def encode(self, inputs: Iterable[Any], *, task_metadata: Any = None, hf_split: str | None = None,
               hf_subset: str | None = None, prompt_type: Any = None, **kwargs: Any) -> np.ndarray:
        """Embed every text of the dataloader; ``prompt_type`` "document" selects ``encode_documents``."""
        role = "document" if str(getattr(prompt_type, "value", prompt_type)) == "document" else "query"
        return encode_texts(self.encoder, _texts(inputs), role=role)

    def similarity(self, embeddings1: Any, embeddings2: Any) -> np.ndarray:
        """Cosine similarity matrix ``[n1, n2]``."""
        return _unit(embeddings1) @ _unit(embeddings2).T

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any) -> np.ndarray:
        """Cosine similarity of each row pair ``[n]``."""
        return np.sum(_unit(embeddings1) * _unit(embeddings2), axis=1)

    @property
    def mteb_model_meta(self) -> Any:
        """mteb's ``ModelMeta`` for this model (name, dimension, cosine similarity)."""
        if self._meta is None:
            try:
                from mteb.models import ModelMeta
            except ImportError as exc:
                raise MissingDependency("the mteb adapter needs mteb: pip install mteb") from exc
            self._meta = ModelMeta(
                loader=None, name=self.name, revision=self.revision, release_date=None, languages=None,
                n_parameters=None, memory_usage_mb=None, max_tokens=None,
                embed_dim=getattr(self.encoder, "dim", None), license=None, open_weights=True,
                public_training_code=None, public_training_data=None, framework=["PyTorch"],
                similarity_fn_name="cosine", use_instructions=False, training_datasets=None)
        return self._meta
