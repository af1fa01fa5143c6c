"""One shard: writing it (a normal saved index over a contiguous range of rows) and serving it (search, texts).

:func:`write_shard` runs as a Ray task on the rows of its range (embeddings already computed by the actor pool)
and reports the counts the driver merges into global BM25 statistics. :class:`ShardServer` opens a saved shard
with those statistics and answers in global rows; it runs as a Ray actor per shard, or in the driver's process
for an index small enough for one machine.
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.distributed.layout import ShardSpec, load_idf
from retrieval.distributed.merge import ShardHits
from retrieval.distributed.stats import GlobalStatsIndex, ShardTerms, shard_terms
from retrieval.docstore import DocStore
from retrieval.persistence import manifest_field, read_manifest
from retrieval.types import Document

logger = logging.getLogger(__name__)

SPARSE_METHODS = ("bm25", "hybrid")
DENSE_METHODS = ("dense", "hybrid")


class FrozenEncoder:
    """The facts a dense stage keeps about its encoder (``describe()``), without the model.

    Shards never encode: documents are embedded by the actor pool and queries once by the driver, so a shard's
    dense stage holds this instead of a loaded model.
    """

    def __init__(self, facts: dict[str, Any]) -> None:
        self.facts = dict(facts)
        self.dim = int(facts["dim"])
        self.model_name = str(facts["model"])
        self.normalize = bool(facts["normalize"])
        self.pooling = facts.get("pooling")
        self.fingerprint = facts.get("fingerprint")

    def describe(self) -> dict[str, Any]:
        return dict(self.facts)


def _documents(part: Any) -> tuple[list[Document], np.ndarray | None]:
    """The documents of a dataset part, in order, and their embeddings when the part has them."""
    docs: list[Document] = []
    embeddings = []
    for batch in part.iter_batches(batch_size=None, batch_format="numpy"):
        docs.extend(Document(id=str(i), title=str(t), text=str(x))
                    for i, t, x in zip(batch["_id"], batch["title"], batch["text"]))
        if "embedding" in batch:
            embeddings.append(np.asarray(batch["embedding"], dtype=np.float32).reshape(len(batch["_id"]), -1))
    emb = np.concatenate(embeddings) if embeddings else None
    return docs, emb


def build_shard_searcher(method: str, docs: Sequence[Document], embeddings: np.ndarray | None,
                         kwargs: dict[str, Any], encoder_facts: dict[str, Any] | None) -> Any:
    """The first stage of one shard from its documents (and precomputed embeddings), built as one machine would."""
    from retrieval.sparse.searcher import BM25Searcher

    bm25_keys = ("tokenizer", "n_jobs", "allow_custom_pattern", "index_workers")
    sparse = {k: v for k, v in kwargs.items() if k in bm25_keys}
    sparse.setdefault("index_workers", 1)   # one process per shard task: Ray schedules the parallelism
    if method == "bm25":
        return BM25Searcher.build(docs, show_progress=False, config=kwargs.get("config"), **sparse)
    from retrieval.dense.searcher import DenseSearcher

    if embeddings is None or encoder_facts is None:
        raise ValueError(f"a {method} shard needs the documents' embeddings and the encoder's facts")
    dense = DenseSearcher.from_embeddings([d.id for d in docs], embeddings, FrozenEncoder(encoder_facts),
                                          index=kwargs.get("index", "auto"))
    if method == "dense":
        return dense
    from retrieval.hybrid.searcher import HybridSearcher

    bm25 = BM25Searcher.build(docs, show_progress=False, config=kwargs.get("bm25"), **sparse)
    return HybridSearcher(bm25, dense, kwargs.get("fusion"))


def bm25_stage(searcher: Any) -> Any:
    """The BM25 stage of a bm25 or hybrid searcher."""
    return searcher.bm25 if hasattr(searcher, "bm25") else searcher


def id_hashes(ids: Sequence[str]) -> np.ndarray:
    """64-bit hashes of document ids, sorted: what the driver compares across shards to find a repeated id."""
    return np.sort(np.array([int.from_bytes(hashlib.blake2b(i.encode("utf-8"), digest_size=8).digest(), "little")
                             for i in ids], dtype=np.uint64))


def write_shard(part: Any, folder: str, method: str, kwargs: dict[str, Any],
                encoder_facts: dict[str, Any] | None) -> tuple[int, ShardTerms | None, np.ndarray]:
    """Build one shard from a dataset part and save it to ``folder`` (atomically).

    Returns its size, its BM25 counts (bm25, hybrid) and the hashes of its ids.
    """
    from retrieval.retriever import Retriever

    docs, emb = _documents(part)
    searcher = build_shard_searcher(method, docs, emb, kwargs, encoder_facts)
    Retriever(searcher, DocStore(docs)).save(folder)
    counts = shard_terms(bm25_stage(searcher).index) if method in SPARSE_METHODS else None
    logger.info("wrote %s: %d documents (pid %d)", folder, len(docs), os.getpid())
    return len(docs), counts, id_hashes([d.id for d in docs])


def load_shard(spec: ShardSpec, root: Path, avgdl: float | None, verify: bool = True) -> Any:
    """A saved shard as a :class:`~retrieval.Retriever`, its BM25 stage scored with the collection's statistics."""
    from retrieval.retriever import FORMAT_VERSION, Retriever

    folder = Path(spec.folder)
    manifest = read_manifest(folder, "retriever", FORMAT_VERSION)
    stage = manifest_field(manifest, "stage", dict, folder / "manifest.json")
    method = manifest_field(manifest, "method", str, folder / "manifest.json")
    options: dict[str, Any] = {}
    if method in DENSE_METHODS:
        facts = (stage["dense"] if method == "hybrid" else stage)["encoder"]
        options = {"encoder": FrozenEncoder(facts), "model": facts["model"]}
    retriever = Retriever.load(folder, verify=verify, **options)
    if method in SPARSE_METHODS:
        stage_obj = bm25_stage(retriever.searcher)
        stage_obj.index = GlobalStatsIndex.of(stage_obj.index, load_idf(spec, root, verify), avgdl or 1.0)
    return retriever


class ShardServer:
    """One loaded shard answering in global rows: BM25 by query text, dense by query vector, texts by row."""

    def __init__(self, spec: ShardSpec, root: str, avgdl: float | None, verify: bool = True) -> None:
        self.spec = spec
        self.retriever = load_shard(spec, Path(root), avgdl, verify)
        self.method = self.retriever.method
        logger.info("serving %s (pid %d)", spec.label, os.getpid())

    def pid(self) -> int:
        """The process id of this shard's server (a Ray worker when it runs as an actor)."""
        return os.getpid()

    def node(self) -> str:
        """The Ray node this shard is served on (``"local"`` outside Ray)."""
        import sys

        ray = sys.modules.get("ray")
        if ray is None or not ray.is_initialized():
            return "local"
        return str(ray.get_runtime_context().get_node_id())

    def _hits(self, results: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[ShardHits]:
        ids = self.retriever.docs.ids
        return [ShardHits(rows.astype(np.int64) + self.spec.offset, scores.astype(np.float32, copy=False),
                          [ids[r] for r in rows.tolist()]) for rows, scores in results]

    def search(self, queries: Sequence[str] | None, vectors: np.ndarray | None,
               k: int) -> tuple[list[ShardHits] | None, list[ShardHits] | None]:
        """(BM25 hits for ``queries``, dense hits for ``vectors``), each None when not asked or not held."""
        searcher = self.retriever.searcher
        sparse = dense = None
        if queries is not None and self.method in SPARSE_METHODS:
            sparse = self._hits(bm25_stage(searcher).search(list(queries), k))
        if vectors is not None and self.method in DENSE_METHODS:
            stage = searcher.dense if self.method == "hybrid" else searcher
            dense = self._hits(stage.search_vectors(vectors, k))
        return sparse, dense

    def documents(self, rows: Sequence[int]) -> list[tuple[str, str, str]]:
        """(id, title, text) of the given global rows, which must be this shard's."""
        out = []
        for row in rows:
            local = int(row) - self.spec.offset
            if not 0 <= local < self.spec.n_docs:
                raise IndexError(f"row {row} is not in {self.spec.label}")
            doc = self.retriever.docs[local]
            out.append((doc.id, doc.title, doc.text))
        return out
