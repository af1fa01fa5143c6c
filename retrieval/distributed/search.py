"""Searching a sharded index: scatter each query batch to every shard, gather, and merge exactly.

On a cluster each shard is a Ray actor (restarted from its saved folder when its process dies, up to
``max_restarts`` times, and the interrupted call retried); without one, every shard is opened in this process.
Dense queries are encoded once, here, and the vectors sent to the shards. A shard that cannot answer makes the
search raise :class:`~retrieval.distributed.errors.ShardError` naming it: results are never silently partial.
"""
from __future__ import annotations

import functools
import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.distributed.cluster import ClusterConfig, cluster_config, connect
from retrieval.distributed.errors import ShardError
from retrieval.distributed.layout import ENTRIES, KIND, Layout, read_layout
from retrieval.distributed.merge import ShardHits, merge_batches
from retrieval.distributed.shards import DENSE_METHODS, SPARSE_METHODS, ShardServer
from retrieval.persistence import atomic_dir, check_index_target, recover
from retrieval.retriever import check_k, check_queries
from retrieval.types import Hit, Run

logger = logging.getLogger(__name__)

Answer = tuple[list[ShardHits] | None, list[ShardHits] | None]
DENSE_TIES = "descending"   # FAISS lists equal scores by descending id (see merge.py)


class LocalShards:
    """Every shard opened in this process (for an index that fits one machine)."""

    def __init__(self, layout: Layout, verify: bool = True) -> None:
        self.layout = layout
        self.servers = [ShardServer(spec, str(layout.root), layout.avgdl, verify) for spec in layout.shards]

    def call(self, method: str, *args: Any, shards: Sequence[int] | None = None) -> list[Any]:
        """``method(*args)`` on each shard (all, or those listed), in shard order."""
        picked = range(len(self.servers)) if shards is None else shards
        return [getattr(self.servers[i], method)(*args) for i in picked]

    def close(self) -> None:
        self.servers = []


class RayShards:
    """One Ray actor per shard, each restarted from its folder by Ray when its process dies."""

    def __init__(self, layout: Layout, cluster: ClusterConfig, verify: bool = True) -> None:
        self.layout, self.cluster = layout, cluster
        self.ray = connect(cluster.address)
        actor = self.ray.remote(ShardServer).options(num_cpus=cluster.shard_cpus, max_restarts=cluster.max_restarts,
                                                     max_task_retries=cluster.max_restarts)
        self.actors = [actor.remote(spec, str(layout.root), layout.avgdl, verify) for spec in layout.shards]
        self.call("pid")   # wait until every shard is loaded, so a bad folder fails here, naming its shard

    def call(self, method: str, *args: Any, shards: Sequence[int] | None = None) -> list[Any]:
        """``method(*args)`` on each shard (all, or those listed) in parallel; a failure names its shard."""
        picked = list(range(len(self.actors))) if shards is None else list(shards)
        shared = [self.ray.put(a) if isinstance(a, np.ndarray) else a for a in args]
        refs = [getattr(self.actors[i], method).remote(*shared) for i in picked]
        out = []
        for i, ref in zip(picked, refs):
            out.append(self._get(i, ref))
        return out

    def _get(self, i: int, ref: Any) -> Any:
        ray, spec = self.ray, self.layout.shards[i]
        try:
            return ray.get(ref, timeout=self.cluster.timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise ShardError(f"{spec.label} did not answer within {self.cluster.timeout_s}s") from None
        except ray.exceptions.RayActorError as exc:
            raise ShardError(f"{spec.label} is down: its actor died and was not restarted (max_restarts="
                             f"{self.cluster.max_restarts}); results would be missing its {spec.n_docs} documents "
                             f"({type(exc).__name__}: {_last_line(exc)})") from None
        except ray.exceptions.RayTaskError as exc:
            raise ShardError(f"{spec.label} failed: {_last_line(exc)}") from exc

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []


def _last_line(exc: BaseException) -> str:
    """The last non-empty line of an error's text (where Ray puts the cause), shortened."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(exc).__name__


def _fused(bm25: ShardHits, dense: ShardHits, k: int, fusion: Any) -> ShardHits:
    """One query's hybrid result from its merged BM25 and dense lists, fused as a single index fuses them."""
    from retrieval.hybrid.fusion import fuse

    weights = (1.0 - fusion.weight, fusion.weight) if fusion.fusion == "linear" else None
    rows, scores = fuse([(bm25.rows, bm25.scores), (dense.rows, dense.scores)], k, method=fusion.fusion,
                        weights=weights, rrf_k=fusion.rrf_k)
    names = dict(zip(bm25.rows.tolist(), bm25.ids))
    names.update(zip(dense.rows.tolist(), dense.ids))
    return ShardHits(rows, scores, [names[r] for r in rows.tolist()])


class ShardedRetriever:
    """A sharded index: ``retrieve``/``retrieve_batch``/``run``/``save`` as :class:`~retrieval.Retriever` has them."""

    def __init__(self, layout: Layout, shards: LocalShards | RayShards, query_encoder: Any = None,
                 owned: bool = False) -> None:
        from retrieval.hybrid.searcher import FusionConfig

        self.layout, self.shards, self.encoder = layout, shards, query_encoder
        self.fusion = FusionConfig.from_dict(layout.fusion) if layout.fusion else None
        self._owned = owned

    @classmethod
    def load(cls, path: str | Path, cluster: ClusterConfig | str | None = None, *, verify: bool = True,
             model: str | None = None, query_encoder: Any = None, _owned: bool = False) -> "ShardedRetriever":
        """Open a sharded index: onto a Ray cluster (one actor per shard) or, with ``cluster=None``, here.

        ``model`` names where the query encoder is now if its saved local folder moved; ``query_encoder`` is a
        ready one (checked against the saved facts like a dense index checks it).
        """
        root = Path(path).resolve()
        recover(root)
        layout = read_layout(root, verify)
        if layout.method in DENSE_METHODS:
            query_encoder = _query_encoder(layout, model, query_encoder)
        shards = LocalShards(layout, verify) if cluster is None else RayShards(layout, cluster_config(cluster), verify)
        return cls(layout, shards, query_encoder, owned=_owned)

    @property
    def method(self) -> str:
        return self.layout.method

    def __len__(self) -> int:
        return self.layout.n_docs

    def shard_pids(self) -> list[int]:
        """The process id serving each shard (Ray workers on a cluster; this process otherwise)."""
        return self.shards.call("pid")

    def search(self, queries: Sequence[str], k: int) -> list[ShardHits]:
        """Per query, the ``k`` best documents over all shards: global rows, scores and ids, best first."""
        queries = check_queries(queries)
        k = check_k(k)
        if not queries:
            return []
        depth = max(self.fusion.depth, k) if self.method == "hybrid" else k
        vectors = self.encoder.encode_queries(queries) if self.method in DENSE_METHODS else None
        answers: list[Answer] = self.shards.call("search", queries if self.method in SPARSE_METHODS else None,
                                                 vectors, depth)
        sparse = merge_batches([a[0] for a in answers], depth) if self.method in SPARSE_METHODS else None
        dense = merge_batches([a[1] for a in answers], depth, DENSE_TIES) if self.method in DENSE_METHODS else None
        if self.method == "hybrid":
            return [_fused(b, d, k, self.fusion) for b, d in zip(sparse, dense)]
        return sparse if sparse is not None else dense

    def retrieve(self, query: str, k: int = 10) -> list[Hit]:
        """The ``k`` best documents for ``query``, best first, with their titles and texts."""
        if not isinstance(query, str):
            raise TypeError(f"retrieve takes one query string, got {type(query).__name__}")
        return self.retrieve_batch([query], k)[0]

    def retrieve_batch(self, queries: Sequence[str], k: int = 10) -> list[list[Hit]]:
        """``retrieve`` for many queries: one scatter-gather, then one text fetch per shard holding a hit."""
        results = self.search(queries, k)
        texts = self._texts(np.unique(np.concatenate([r.rows for r in results] or [np.zeros(0, np.int64)])))
        return [[Hit(id=i, score=float(s), rank=n + 1, title=texts[r][0], text=texts[r][1])
                 for n, (r, s, i) in enumerate(zip(res.rows.tolist(), res.scores.tolist(), res.ids))]
                for res in results]

    def _texts(self, rows: np.ndarray) -> dict[int, tuple[str, str]]:
        owner = np.searchsorted(self.layout.offsets, rows, side="right") - 1
        out: dict[int, tuple[str, str]] = {}
        for shard in np.unique(owner).tolist():
            wanted = rows[owner == shard].tolist()
            (docs,) = self.shards.call("documents", wanted, shards=[shard])
            out.update((row, (title, text)) for row, (_, title, text) in zip(wanted, docs))
        return out

    def run(self, queries: Mapping[str, str], k: int = 100) -> Run:
        """A BEIR-style run ``{qid: {docid: score}}`` (reads no document text)."""
        if not isinstance(queries, Mapping):
            raise TypeError(f"run takes a mapping {{query_id: text}}, got {type(queries).__name__}")
        qids = list(queries)
        results = self.search([queries[q] for q in qids], k)
        return {qid: dict(zip(res.ids, res.scores.tolist())) for qid, res in zip(qids, results)}

    def save(self, path: str | Path) -> Path:
        """Copy the index folder to ``path`` atomically (only a sharded index or an empty folder is replaced)."""
        guard = functools.partial(check_index_target, kind=KIND, entries=ENTRIES, source=self.layout.root)
        with atomic_dir(path, guard=guard) as tmp:
            shutil.copytree(self.layout.root, tmp, dirs_exist_ok=True)
        return Path(path)

    def close(self) -> None:
        """Stop the shard actors (and delete the folder of an index built without ``out=``)."""
        self.shards.close()
        if self._owned:
            shutil.rmtree(self.layout.root.parent, ignore_errors=True)

    def __enter__(self) -> "ShardedRetriever":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _query_encoder(layout: Layout, model: str | None, encoder: Any) -> Any:
    """The bi-encoder for queries, loaded with the settings the documents were embedded with, and checked."""
    from retrieval.dense.encoders import load_encoder
    from retrieval.dense.searcher import _check_encoder, saved_model_name

    facts = layout.encoder or {}
    where = layout.root
    if encoder is None:
        name = saved_model_name(where, facts, model)
        encoder = load_encoder(name, int8=facts["int8"], bf16=facts.get("bf16", False),
                               backend=facts.get("backend", "torch"), max_seq_length=facts["max_seq_length"],
                               query_prefix=facts["query_prefix"], doc_prefix=facts["doc_prefix"],
                               show_progress=False)
    _check_encoder(where, facts, encoder)
    return encoder
