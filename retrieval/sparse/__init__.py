"""Sparse retrieval: text to terms (``tokenize``), BM25 scoring over a sparse matrix (``scoring``), the first stage (``searcher``)."""
from retrieval.sparse.scoring import BM25Config, BM25Index
from retrieval.sparse.searcher import BM25Searcher
from retrieval.sparse.tokenize import Tokenizer, TokenizerConfig

__all__ = ["BM25Config", "BM25Index", "BM25Searcher", "Tokenizer", "TokenizerConfig"]
