"""LLM reranking: backends (local transformers, OpenAI-compatible HTTP), prompts and parsing, and the rerankers."""
from retrieval.rerank.llm.base import _softmax
from retrieval.rerank.llm.listwise import ListwiseReranker, ListwiseStats
from retrieval.rerank.llm.pointwise import RatingReranker, YesNoReranker

__all__ = ["ListwiseReranker", "ListwiseStats", "RatingReranker", "YesNoReranker", "_softmax"]
