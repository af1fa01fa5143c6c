"""The one-call API: ``Retriever.from_documents(docs, method=...)``, ``.retrieve(query)``, ``.save``/``.load``."""
from __future__ import annotations

import functools
import importlib
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from retrieval.data import iter_documents
from retrieval.docstore import DocStore, DocView
from retrieval.hits import HitList
from retrieval.errors import IndexFormatError
from retrieval.persistence import (atomic_dir, check_index_target, manifest_field, read_manifest, recover,
                                   write_manifest)
from retrieval.safe_files import FileTable, check_tree, file_table, verifying
from retrieval.protocols import Reranker, RowHits, Searcher
from retrieval.rwlock import ReadWriteLock
from retrieval.types import Hit, Run, typed_list

if TYPE_CHECKING:
    from retrieval.distributed.search import ShardedRetriever

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2   # 2 adds the manifest's "files" table (size, SHA-256, rows); 1 still loads, unchecksummed

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


def checked_reranker(reranker: Reranker | str | None) -> Reranker | None:
    """A reranker object, one built from a :func:`~retrieval.rerank.load_reranker` spec (``"llm-ql:smollm2"``),
    or None; anything else is refused here, not at the first query."""
    if reranker is None:
        return None
    if isinstance(reranker, str):
        from retrieval.rerank.registry import load_reranker

        return load_reranker(reranker)
    if not callable(getattr(reranker, "rerank", None)):
        raise TypeError(f"reranker must have a rerank(query, hits) method or be a spec string such as "
                        f"'cross-encoder:FOLDER' or 'llm-ql:smollm2', got {type(reranker).__name__}: {reranker!r:.60}")
    return reranker


def _checked_rerank(reranker: Reranker, given: list[Hit], out: Any) -> list[Hit]:
    """A reranker's output as a list, refused when it could corrupt the ranking: items that are not hits, a hit
    twice, or a document that was not among the candidates (a custom reranker may drop candidates)."""
    name = type(reranker).__name__
    if not isinstance(out, Sequence) or isinstance(out, (str, bytes)):
        raise TypeError(f"reranker {name} returned {type(out).__name__}, not a list of hits")
    known = {h.id for h in given}
    seen: set[str] = set()
    for i, hit in enumerate(out):
        if not isinstance(hit, Hit):
            raise TypeError(f"reranker {name} returned {type(hit).__name__} at position {i}, not a Hit")
        if hit.id not in known:
            raise ValueError(f"reranker {name} returned document {hit.id!r}, which was not among its candidates")
        if hit.id in seen:
            raise ValueError(f"reranker {name} returned document {hit.id!r} twice; a reranker reorders its input")
        seen.add(hit.id)
    return list(out)


def check_queries(queries: object) -> list[str]:
    """A list of query strings from any iterable (a generator is read once); other types are refused."""
    if isinstance(queries, (str, bytes)):
        raise TypeError("retrieve_batch takes a list of query strings; use retrieve() for one")
    return typed_list(queries, str, "retrieve_batch", "query")


class Retriever:
    """A document collection with one first stage and an optional reranker."""

    def __init__(self, searcher: Searcher, docs: DocStore, reranker: Reranker | str | None = None,
                 rerank_depth: int = 100) -> None:
        self.searcher = searcher
        self.docs = docs
        self.reranker = checked_reranker(reranker)
        self.rerank_depth = check_k(rerank_depth, "rerank_depth")
        self._lock = ReadWriteLock()  # retrieve() calls run together; add()/remove() run alone

    @classmethod
    def from_documents(cls, documents: str | Path | Iterable[Any], method: str = "bm25", *,
                       reranker: Reranker | str | None = None, rerank_depth: int = 100, show_progress: bool = True,
                       config: Any = None, cluster: Any = None, **options: Any) -> "Retriever | ShardedRetriever":
        """Index documents (a BEIR folder, a JSONL/CSV/TSV file, or an iterable of str/dict/Document).

        ``config`` is a stage config object (or a list of them: ``BM25Config``, ``TokenizerConfig``,
        ``EncoderConfig``, ``IndexConfig``, ``FusionConfig``, as the method takes). ``options`` are flat
        fields of those configs (``k1=``, ``tokenizer="plain"``, ``model=``, ``backend="onnx"``, ``index=``,
        ``fusion=``...), mapped by :data:`retrieval.options.METHOD_OPTIONS`; an unknown one raises ValueError.
        ``reranker`` is a reranker object or a ``load_reranker`` spec string; it reorders the top ``rerank_depth``.

        ``cluster`` (a Ray address, ``"local"`` or a ``ClusterConfig``) builds on Ray instead and returns a
        :class:`~retrieval.distributed.search.ShardedRetriever` (same search methods; ``shards=``, ``out=``
        accepted): see :func:`retrieval.distributed.build.build_sharded`.
        """
        from retrieval.options import build_kwargs

        if cluster is not None:
            if reranker is not None:
                raise ValueError("a sharded (cluster=) index takes no reranker; rerank its hits yourself")
            from retrieval.distributed.build import build_sharded

            return build_sharded(documents, method, cluster=cluster, show_progress=show_progress, config=config,
                                 **options)
        searcher_cls = searcher_class(method)
        kwargs = build_kwargs(method, options, config, show_progress=show_progress)
        reranker = checked_reranker(reranker)     # a bad spec or depth fails before the documents are indexed
        check_k(rerank_depth, "rerank_depth")
        docs = list(iter_documents(documents))
        searcher = searcher_cls.build(docs, show_progress=show_progress, **kwargs)
        return cls(searcher, DocStore(docs), reranker=reranker, rerank_depth=rerank_depth)

    @property
    def method(self) -> str:
        return self.searcher.method

    def __len__(self) -> int:
        return len(self.docs)

    def _finish(self, query: str, hits: HitList, k: int) -> Sequence[Hit]:
        if self.reranker is None or not len(hits):
            return hits if len(hits) <= k else HitList(hits._rows[:k], hits._scores[:k], hits._view)
        given = hits.to_list()
        reranked = _checked_rerank(self.reranker, given, self.reranker.rerank(query, given))[:k]
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

    def remove(self, ids: Iterable[str | int]) -> None:
        """Remove documents by id. Integer ids are matched as text, as indexing stores them (``{"_id": 7}`` is
        ``"7"``); an id given twice is removed once; an unknown id is a KeyError and nothing is removed."""
        if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
            raise TypeError(f"remove takes a list of document ids, got {type(ids).__name__}")
        wanted: dict[str, None] = {}
        for i, doc_id in enumerate(ids):
            if isinstance(doc_id, bool) or not isinstance(doc_id, (str, int, np.integer)):
                raise TypeError(f"remove: id {i} is a {type(doc_id).__name__}, not a str or int: {doc_id!r:.60}")
            wanted[str(doc_id)] = None
        with self._lock.write():
            rows = self.docs.rows(list(wanted))
            self.searcher.remove(rows)
            self.docs.remove(rows)

    def save(self, path: str | Path) -> Path:
        """Write the index folder atomically: ``manifest.json`` (size, SHA-256 and rows of every file), the
        documents and the stage's files.

        Only a retrievekit index, an empty folder or a new path is replaced; any other folder, the current
        folder or its parents, and a path inside or around the index this one was loaded from are refused
        (:func:`~retrieval.persistence.check_index_target`). A killed save leaves the old or the new index.
        """
        guard = functools.partial(check_index_target, kind="retriever", source=getattr(self, "_source", None))
        with self._lock.read(), atomic_dir(path, guard=guard) as tmp:
            self.docs.save(tmp)
            stage = self.searcher.save(tmp / "stage")
            write_manifest(tmp, kind="retriever", format_version=FORMAT_VERSION, method=self.method,
                           n_docs=len(self.docs), stage=stage, files=file_table(tmp))
        logger.info("saved %s index of %d docs to %s", self.method, len(self.docs), path)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, *, reranker: Reranker | str | None = None, rerank_depth: int = 100,
             verify: bool = True, **options: Any) -> "Retriever":
        """Open a saved index folder (never unpickles); ``options`` go to the stage's ``load``.

        An interrupted save at ``path`` is first finished or rolled back. Only regular files inside the folder
        are read; every array is checked before use. ``verify`` (default) also checks every file against the
        manifest's size and SHA-256 (format 2; about 10 ms for SciFact's 12 MB), or for a format-1 index each
        line's id; ``verify=False`` keeps only the structural checks. A problem raises
        :class:`IndexFormatError` naming the file.
        """
        reranker = checked_reranker(reranker)      # the caller's mistakes are named before the index is read
        check_k(rerank_depth, "rerank_depth")
        root = Path(os.path.abspath(path))
        recover(root)
        manifest = read_manifest(root, "retriever", FORMAT_VERSION)
        where = root / "manifest.json"
        method, n_docs = manifest_field(manifest, "method", str, where), manifest_field(manifest, "n_docs", int, where)
        stage = manifest_field(manifest, "stage", dict, where)
        if method not in METHODS:
            raise IndexFormatError(f"{where}: unknown method {method!r}")
        _check_load_options(method, options)
        check_tree(root)
        table = FileTable(root, manifest_field(manifest, "files", dict, where), where) \
            if manifest["format_version"] >= 2 else None
        with verifying(table if verify else None):
            docs = DocStore.load(root, check_ids=verify and table is None)
            if len(docs) != n_docs:
                raise IndexFormatError(f"{where}: says {n_docs} docs, {root / 'doc_ids.json'} holds {len(docs)}")
            searcher = searcher_class(method).load(root / "stage", stage, **options)
        _check_stage_rows(searcher, docs, root)
        retriever = cls(searcher, docs, reranker=reranker, rerank_depth=rerank_depth)
        retriever._source = root.resolve()
        return retriever


def _check_load_options(method: str, options: dict[str, Any]) -> None:
    """Options for ``load`` must be ones the saved method's stage takes; a typo is an error, not ignored."""
    valid = searcher_class(method).LOAD_OPTIONS
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown load option(s) {unknown} for a {method} index; valid: {sorted(valid)}")


def _check_stage_rows(searcher: Searcher, docs: DocStore, root: Path) -> None:
    """The stage must hold one row per document, in the DocStore's order."""
    if len(searcher) != len(docs):
        raise IndexFormatError(f"{root / 'stage'}: the {searcher.method} stage holds {len(searcher)} documents, "
                               f"{root / 'doc_ids.json'} lists {len(docs)}; the index folder is damaged")
    for stage in (searcher, getattr(searcher, "dense", None)):
        ids = getattr(stage, "doc_ids", None)
        if ids is not None and list(ids) != docs.ids:
            raise IndexFormatError(f"{root / 'stage'}: the dense stage's doc_ids.json lists the documents in another "
                                   f"order than {root / 'doc_ids.json'}; the index folder is damaged")
