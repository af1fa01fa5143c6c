"""retrievekit: dense, sparse and hybrid retrieval, reranking and evaluation that run on a laptop CPU.

The light core (data, BM25, evaluation) imports eagerly; names that need torch, FAISS or an LLM stack
resolve on first use, so ``import retrieval`` stays fast and never loads a model.
"""
import importlib
import logging
from typing import Any

__version__ = "0.1.0"

from .data import BeirDataset, DataError, iter_documents, load_beir, load_documents, load_qrels, load_queries
from .errors import IndexFormatError, MissingDependency
from .evaluation import evaluate, per_query, read_run, write_run
from .retriever import Retriever
from .significance import compare_runs, paired_t_test, randomization_test
from .sparse import BM25Config
from .tokenize import Tokenizer, TokenizerConfig
from .types import Document, Hit, Qrels, Run

logging.getLogger(__name__).addHandler(logging.NullHandler())

_LAZY = {
    "BiEncoder": "encoders", "load_encoder": "encoders", "DenseSearcher": "dense", "HybridSearcher": "hybrid",
    "BM25Searcher": "bm25", "CrossEncoderReranker": "rerank", "load_reranker": "rerank",
    "YesNoReranker": "llm_rerank", "RatingReranker": "llm_rerank", "ListwiseReranker": "llm_rerank",
    "load_backend": "llm", "MTEBEncoder": "mteb_adapter", "run_task": "mteb_tasks",
    "run_benchmark": "report", "resolve_model": "models",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'retrieval' has no attribute {name!r}")


__all__ = [
    "__version__", "BeirDataset", "BM25Config", "DataError", "Document", "Hit", "IndexFormatError",
    "MissingDependency", "Qrels", "Retriever", "Run", "Tokenizer", "TokenizerConfig", "compare_runs", "evaluate",
    "iter_documents", "load_beir", "load_documents", "load_qrels", "load_queries", "paired_t_test", "per_query",
    "randomization_test", "read_run", "write_run", *_LAZY,
]
