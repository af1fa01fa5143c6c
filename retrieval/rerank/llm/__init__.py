"""LLM reranking: backends (transformers, llama.cpp, OpenAI-compatible HTTP), prompts and parsing, the rerankers."""
from retrieval.rerank.llm.base import _softmax
from retrieval.rerank.llm.listwise import ListwiseReranker, ListwiseStats
from retrieval.rerank.llm.pointwise import RatingReranker, YesNoReranker
from retrieval.rerank.llm.query_likelihood import QueryLikelihoodReranker

__all__ = ["ListwiseReranker", "ListwiseStats", "QueryLikelihoodReranker", "RatingReranker", "YesNoReranker",
           "_softmax"]
