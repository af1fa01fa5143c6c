"""retrievekit: dense, sparse and hybrid retrieval, reranking and evaluation that run on a laptop CPU."""
import logging

__version__ = "0.1.0"

from .data import BeirDataset, DataError, iter_documents, load_beir, load_documents, load_qrels, load_queries
from .errors import IndexFormatError, MissingDependency
from .evaluation import evaluate, per_query
from .retriever import Retriever
from .sparse import BM25Config
from .tokenize import Tokenizer, TokenizerConfig
from .types import Document, Hit, Qrels, Run

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "__version__", "BeirDataset", "BM25Config", "DataError", "Document", "Hit", "IndexFormatError",
    "MissingDependency", "Qrels", "Retriever", "Run", "Tokenizer", "TokenizerConfig", "evaluate",
    "iter_documents", "load_beir", "load_documents", "load_qrels", "load_queries", "per_query",
]
