"""retrievekit: dense, sparse and hybrid retrieval, reranking and evaluation that run on a laptop CPU.

The light core (data, BM25, evaluation) imports eagerly; names that need torch, FAISS or an LLM stack
resolve on first use, so ``import retrieval`` stays fast and never loads a model.
"""
import importlib
import logging
from typing import Any


from retrieval.version import __version__
from retrieval.data import BeirDataset, iter_documents, load_beir, load_documents, load_qrels, load_queries
from retrieval.errors import DataError, IndexFormatError, LLMError, MissingDependency
from retrieval.eval.metrics import evaluate, per_query, read_run, write_run
from retrieval.retriever import Retriever
from retrieval.eval.significance import compare_runs, paired_t_test, randomization_test
from retrieval.sparse.scoring import BM25Config
from retrieval.sparse.tokenize import Tokenizer, TokenizerConfig
from retrieval.types import Document, Hit, Qrels, Run

logging.getLogger(__name__).addHandler(logging.NullHandler())

_LAZY = {
    "BiEncoder": "dense.encoders", "EncoderConfig": "dense.encoders", "load_encoder": "dense.encoders",
    "DenseSearcher": "dense.searcher", "IndexConfig": "dense.searcher", "HybridSearcher": "hybrid.searcher",
    "FusionConfig": "hybrid.searcher",
    "BM25Searcher": "sparse.searcher", "CrossEncoderReranker": "rerank.cross_encoder",
    "load_reranker": "rerank.registry", "YesNoReranker": "rerank.llm.pointwise",
    "RatingReranker": "rerank.llm.pointwise", "ListwiseReranker": "rerank.llm.listwise",
    "QueryLikelihoodReranker": "rerank.llm.query_likelihood",
    "load_backend": "rerank.llm.backends", "MTEBEncoder": "eval.mteb_adapter", "run_task": "eval.mteb_tasks",
    "run_benchmark": "bench.report", "resolve_model": "models",
    "evaluate_retriever": "eval.pipeline", "CachedEncoder": "dense.cache", "data_dir": "datasets",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'retrieval' has no attribute {name!r}")


__all__ = [
    "__version__", "BeirDataset", "BM25Config", "DataError", "Document", "Hit", "IndexFormatError", "LLMError",
    "MissingDependency", "Qrels", "Retriever", "Run", "Tokenizer", "TokenizerConfig", "compare_runs", "evaluate",
    "iter_documents", "load_beir", "load_documents", "load_qrels", "load_queries", "paired_t_test", "per_query",
    "randomization_test", "read_run", "write_run", *_LAZY,
]
