"""Second stages: a cross-encoder and LLM rerankers (pointwise, listwise), all built by ``load_reranker(spec)``.

Every reranker implements :class:`~retrieval.protocols.Reranker` and returns a permutation of its input.
"""
from retrieval.rerank.base import apply_scores, interpolate_first_stage, passage_text
from retrieval.rerank.cross_encoder import CrossEncoderReranker
from retrieval.rerank.registry import RERANKERS, describe, load_reranker, parse_option

__all__ = ["RERANKERS", "CrossEncoderReranker", "apply_scores", "describe", "interpolate_first_stage",
           "load_reranker", "parse_option", "passage_text"]
