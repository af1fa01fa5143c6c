"""The cross-encoder reranker: a sentence-transformers ``CrossEncoder`` scoring (query, passage) pairs."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from retrieval.errors import MissingDependency
from retrieval.models import resolve_model
from retrieval.rerank.base import (apply_scores, checked_count, checked_flag, checked_input, checked_weight,
                                   interpolate_first_stage, passage_text)
from retrieval.types import Hit


class CrossEncoderReranker:
    """Scores (query, passage) pairs with a sentence-transformers ``CrossEncoder``; score = raw logit
    (or, with ``interpolate=W``, the logits min-max fused with the first-stage scores)."""

    scores_each_passage = True   # a passage's score does not depend on the others

    def __init__(self, model: Any, batch_size: int = 32, depth: int | None = None,
                 show_progress: bool = False, interpolate: float | None = None) -> None:
        self.model = model
        self.batch_size = checked_count("batch_size", batch_size)
        self.depth = checked_count("depth", depth, optional=True)
        self.show_progress = checked_flag("show_progress", show_progress)
        self.interpolate = None if interpolate is None else checked_weight(interpolate)

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
                             "(train one with: retrieval train cross-encoder --data BEIR_DIR --out OUT)")
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
        hits = checked_input(query, hits)
        head = hits if self.depth is None else hits[: self.depth]
        scores = self.score(query, head)
        if self.interpolate is not None:
            scores = interpolate_first_stage(scores, head, self.interpolate)
        return apply_scores(hits, scores)
