"""The one-call API: ``Retriever.from_documents(docs, method=...)``, ``.retrieve(query)``, ``.save``/``.load``."""
from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from retrieval.data import iter_documents
from retrieval.docstore import DocStore
from retrieval.errors import IndexFormatError
from retrieval.persistence import atomic_dir, read_manifest, write_manifest
from retrieval.protocols import Reranker, RowHits, Searcher
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


class Retriever:
    """A document collection with one first stage and an optional reranker."""

    def __init__(self, searcher: Searcher, docs: DocStore, reranker: Reranker | None = None,
                 rerank_depth: int = 100) -> None:
        self.searcher = searcher
        self.docs = docs
        self.reranker = reranker
        self.rerank_depth = rerank_depth

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

    def _hits(self, row_hits: RowHits) -> list[Hit]:
        rows, scores = row_hits
        hits = []
        for rank, (row, score) in enumerate(zip(rows.tolist(), scores.tolist()), start=1):
            doc = self.docs[row]
            hits.append(Hit(id=doc.id, score=float(score), text=doc.text, rank=rank, title=doc.title))
        return hits

    def _finish(self, query: str, hits: list[Hit], k: int) -> list[Hit]:
        if self.reranker is not None and hits:
            hits = self.reranker.rerank(query, hits)
        hits = hits[:k]
        for rank, hit in enumerate(hits, start=1):
            hit.rank = rank
        return hits

    def retrieve(self, query: str, k: int = 10) -> list[Hit]:
        """The ``k`` best documents for ``query``, best first (reranked when a reranker is set)."""
        return self.retrieve_batch([query], k)[0]

    def retrieve_batch(self, queries: Sequence[str], k: int = 10) -> list[list[Hit]]:
        """``retrieve`` for many queries at once; the first stage batches them (and uses all cores)."""
        if isinstance(queries, str):
            raise TypeError("retrieve_batch takes a list of queries; use retrieve() for one")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        depth = max(k, self.rerank_depth) if self.reranker is not None else k
        results = self.searcher.search(list(queries), depth)
        return [self._finish(q, self._hits(r), k) for q, r in zip(queries, results)]

    def run(self, queries: Mapping[str, str], k: int = 100) -> Run:
        """A BEIR-style run ``{qid: {docid: score}}`` for evaluation."""
        qids = list(queries)
        results = self.retrieve_batch([queries[q] for q in qids], k)
        return {qid: {h.id: h.score for h in hits} for qid, hits in zip(qids, results)}

    def add(self, documents: str | Path | Iterable[Any]) -> None:
        """Add documents after build; ids must be new."""
        docs = list(iter_documents(documents))
        self.docs.add(docs)
        try:
            self.searcher.add(docs)
        except BaseException:
            self.docs.remove(self.docs.rows([d.id for d in docs]))
            raise

    def remove(self, ids: Sequence[str]) -> None:
        """Remove documents by id."""
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
