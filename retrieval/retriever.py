"""The one-call API: ``Retriever.from_documents(docs, method=...)``, ``.retrieve(query)``, ``.save``/``.load``."""
from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.data import iter_documents
from retrieval.docstore import DocStore, DocView
from retrieval.hits import HitList
from retrieval.errors import IndexFormatError
from retrieval.persistence import atomic_dir, read_manifest, write_manifest
from retrieval.protocols import Reranker, RowHits, Searcher
from retrieval.rwlock import ReadWriteLock
from retrieval.types import Hit, Run

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1

# method name -> "module:class"; imported lazily so BM25 users never import torch or faiss.
METHODS: dict[str, str] = {
    "bm25": "retrieval.sparse.searcher:BM25Searcher",
    "dense": "retrieval.dense.searcher:DenseSearcher",
    "hybrid": "retrieval.hybrid.searcher:HybridSearcher",
}


def searcher_class(method: str) -> type:
    """Resolve a method name to its first-stage class."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    module, name = METHODS[method].split(":")
    return getattr(importlib.import_module(module), name)


def check_k(k: object, name: str = "k") -> int:
    """``k`` as a positive int; bools, floats, strings and None are refused with a clear message."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"{name} must be a positive int, got {k!r} ({type(k).__name__})")
    if k < 1:
        raise ValueError(f"{name} must be >= 1, got {k}")
    return int(k)


def check_queries(queries: object) -> list[str]:
    """A list of query strings from any iterable (a generator is read once); other types are refused."""
    if isinstance(queries, (str, bytes)):
        raise TypeError("retrieve_batch takes a list of query strings; use retrieve() for one")
    if not isinstance(queries, Iterable):
        raise TypeError(f"retrieve_batch takes a list of query strings, got {type(queries).__name__}")
    out = list(queries)
    for i, q in enumerate(out):
        if not isinstance(q, str):
            raise TypeError(f"query {i} is a {type(q).__name__}, not a str: {q!r:.60}")
    return out


class Retriever:
    """A document collection with one first stage and an optional reranker."""

    def __init__(self, searcher: Searcher, docs: DocStore, reranker: Reranker | None = None,
                 rerank_depth: int = 100) -> None:
        self.searcher = searcher
        self.docs = docs
        self.reranker = reranker
        self.rerank_depth = check_k(rerank_depth, "rerank_depth")
        self._lock = ReadWriteLock()  # retrieve() calls run together; add()/remove() run alone

    @classmethod
    def from_documents(cls, documents: str | Path | Iterable[Any], method: str = "bm25", *,
                       reranker: Reranker | None = None, rerank_depth: int = 100,
                       show_progress: bool = True, **options: Any) -> "Retriever":
        """Index documents (a BEIR folder, a JSONL/CSV/TSV file, or an iterable of str/dict/Document).

        ``options`` go to the method's ``build`` (e.g. ``tokenizer=``, ``variant=`` for BM25;
        ``model=``, ``index=`` for dense).
        """
        docs = list(iter_documents(documents))
        searcher = searcher_class(method).build(docs, show_progress=show_progress, **options)
        return cls(searcher, DocStore(docs), reranker=reranker, rerank_depth=rerank_depth)

    @property
    def method(self) -> str:
        return self.searcher.method

    def __len__(self) -> int:
        return len(self.docs)

    def _finish(self, query: str, hits: HitList, k: int) -> Sequence[Hit]:
        if self.reranker is None or not len(hits):
            return hits if len(hits) <= k else HitList(hits._rows[:k], hits._scores[:k], hits._view)
        reranked = self.reranker.rerank(query, hits.to_list())[:k]
        for rank, hit in enumerate(reranked, start=1):
            hit.rank = rank
        return reranked

    def _search(self, queries: Sequence[str], k: int) -> tuple[list[RowHits], DocView]:
        """First-stage rows and a snapshot of the documents, taken together under the read lock."""
        with self._lock.read():
            return self.searcher.search(queries, k), self.docs.view()

    def retrieve(self, query: str, k: int = 10) -> Sequence[Hit]:
        """The ``k`` best documents for ``query``, best first (reranked when a reranker is set).

        Returns a :class:`~retrieval.hits.HitList` (a sequence of :class:`Hit`; texts are read on first use).
        """
        if not isinstance(query, str):
            raise TypeError(f"retrieve takes one query string, got {type(query).__name__}; "
                            "use retrieve_batch() for several")
        return self.retrieve_batch([query], k)[0]

    def retrieve_batch(self, queries: Iterable[str], k: int = 10) -> list[Sequence[Hit]]:
        """``retrieve`` for many queries at once; the first stage batches them (and uses all cores)."""
        queries = check_queries(queries)
        k = check_k(k)
        depth = max(k, self.rerank_depth) if self.reranker is not None else k
        results, view = self._search(queries, depth)
        return [self._finish(q, HitList(rows, scores, view), k) for q, (rows, scores) in zip(queries, results)]

    def run(self, queries: Mapping[str, str], k: int = 100) -> Run:
        """A BEIR-style run ``{qid: {docid: score}}`` for evaluation (reads no document text)."""
        if not isinstance(queries, Mapping):
            raise TypeError(f"run takes a mapping {{query_id: text}}, got {type(queries).__name__}")
        qids = list(queries)
        if self.reranker is not None:
            results = self.retrieve_batch([queries[q] for q in qids], k)
            return {qid: {h.id: float(h.score) for h in hits} for qid, hits in zip(qids, results)}
        texts = check_queries([queries[q] for q in qids])
        rows_scores, view = self._search(texts, check_k(k))
        ids = view.ids
        return {qid: dict(zip([ids[r] for r in rows.tolist()], scores.tolist()))
                for qid, (rows, scores) in zip(qids, rows_scores)}

    def add(self, documents: str | Path | Iterable[Any]) -> None:
        """Add documents after build; ids must be new."""
        docs = list(iter_documents(documents))
        with self._lock.write():
            self.docs.add(docs)
            try:
                self.searcher.add(docs)
            except BaseException:
                self.docs.remove(self.docs.rows([d.id for d in docs]))
                raise

    def remove(self, ids: Sequence[str]) -> None:
        """Remove documents by id."""
        if isinstance(ids, str):
            raise TypeError("remove takes a list of document ids, not one string")
        with self._lock.write():
            rows = self.docs.rows(list(ids))
            self.searcher.remove(rows)
            self.docs.remove(rows)

    def save(self, path: str | Path) -> Path:
        """Write the index folder atomically: ``manifest.json``, the documents and the stage's files."""
        with atomic_dir(path) as tmp:
            self.docs.save(tmp)
            stage = self.searcher.save(tmp / "stage")
            write_manifest(tmp, kind="retriever", format_version=FORMAT_VERSION, method=self.method,
                           n_docs=len(self.docs), stage=stage)
        logger.info("saved %s index of %d docs to %s", self.method, len(self.docs), path)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, *, reranker: Reranker | None = None, rerank_depth: int = 100,
             **options: Any) -> "Retriever":
        """Open a saved index folder (never unpickles); ``options`` go to the stage's ``load``."""
        path = Path(path)
        manifest = read_manifest(path, "retriever", FORMAT_VERSION)
        docs = DocStore.load(path)
        if len(docs) != manifest.get("n_docs"):
            raise IndexFormatError(f"{path}: manifest says {manifest.get('n_docs')} docs, found {len(docs)}")
        searcher = searcher_class(manifest["method"]).load(path / "stage", manifest["stage"], **options)
        return cls(searcher, docs, reranker=reranker, rerank_depth=rerank_depth)
