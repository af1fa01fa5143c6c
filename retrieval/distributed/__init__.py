"""Scale-out on Ray: build an index as shards across a cluster and search them with an exact top-k merge.

Nothing here imports Ray until it is used, so ``import retrieval`` (and this package) works without it:

    from retrieval.distributed import ClusterConfig, ShardedRetriever, build_sharded
    index = build_sharded("corpus.jsonl", out="idx", method="hybrid", cluster=ClusterConfig(shards=4))
    hits = index.retrieve("query", k=10)              # same ids, order and scores as one machine
    ShardedRetriever.load("idx", cluster="auto")      # one Ray actor per shard; cluster=None: one process

Modules: ``cluster`` (connecting, resources), ``reading`` (Ray Data input), ``encode`` (actor-pool encoding),
``stats`` (global BM25 statistics), ``shards`` (writing and serving one shard), ``layout`` (the sharded folder),
``merge`` (exact top-k merge), ``build`` and ``search`` (the two entry points).
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "build_sharded": "build", "ShardedRetriever": "search", "ClusterConfig": "cluster", "connect": "cluster",
    "ClusterError": "errors", "ShardError": "errors", "merge_top_k": "merge",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'retrieval.distributed' has no attribute {name!r}")


__all__ = list(_LAZY)
