"""Building a sharded index on Ray: read in blocks, encode on an actor pool, write one shard per row range.

    read (Ray Data) -> embed (map_batches over EncodeBatch actors; dense, hybrid) -> materialise -> split into
    ``shards`` contiguous row ranges -> one Ray task per shard writes a normal saved index -> the driver merges
    the shards' BM25 counts into collection-wide idf and average length -> manifest -> atomic swap into place

The whole folder is written through :func:`~retrieval.persistence.atomic_dir`, so a driver killed mid-build
leaves the previous index (or nothing) at ``out``. Output folders must be on storage every node can reach
(a shared file system) when the cluster has several machines.
"""
from __future__ import annotations

import functools
import logging
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from retrieval.distributed.cluster import ClusterConfig, cluster_config, connect, ray_module
from retrieval.distributed.layout import ENTRIES, KIND, shard_name, write_layout
from retrieval.distributed.reading import read_dataset
from retrieval.distributed.shards import DENSE_METHODS, SPARSE_METHODS, write_shard
from retrieval.distributed.stats import ShardTerms, global_idfs
from retrieval.errors import DataError
from retrieval.persistence import atomic_dir, check_index_target
from retrieval.safe_files import read_str_list

logger = logging.getLogger(__name__)

ENCODER_SLOT = {"dense": "encoder", "hybrid": "dense"}
DATA_FIELDS = ("format", "id_field", "text_field", "title_field")


def shard_offsets(n_docs: int, shards: int) -> list[int]:
    """First rows of ``min(shards, n_docs)`` near-equal contiguous ranges, plus ``n_docs`` at the end."""
    s = max(1, min(shards, n_docs))
    return [i * n_docs // s for i in range(s + 1)]


def _encoder_config(method: str, kwargs: dict[str, Any]) -> Any:
    """The :class:`EncoderConfig` the actors load (a ready in-memory encoder cannot be shipped to them)."""
    from retrieval.dense.encoders import EncoderConfig

    encoder = kwargs.pop(ENCODER_SLOT[method], None)
    if encoder is None:
        return EncoderConfig(show_progress=False)
    if not isinstance(encoder, EncoderConfig):
        raise ValueError(f"a cluster build loads the encoder in each actor: pass model= options or an EncoderConfig, "
                         f"not a ready {type(encoder).__name__}")
    return encoder


def _watch_encoding(progress: Any, total: int, show: bool) -> tuple[threading.Event, threading.Thread]:
    """A thread that moves a progress bar as the encoding actors report; set the event to stop it."""
    ray = ray_module()
    stop = threading.Event()

    def run() -> None:
        with tqdm(total=total, desc="Encoding (Ray actors)", unit="doc", disable=not show) as bar:
            while not stop.wait(1.0):
                done = min(ray.get(progress.total.remote()), total)   # a retried batch is counted twice
                bar.update(max(0, done - bar.n))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return stop, thread


def progress_name(out: str | Path) -> str:
    """The name prefix of the Ray actor that counts a build's encoded documents while the build of ``out`` runs:
    ``ray.get_actor(name).workers.remote()`` gives them per worker process (the name ends in a build id)."""
    return f"retrievekit-encode-progress:{Path(out).resolve()}:"


def _embedded(ray: Any, dataset: Any, method: str, cluster: ClusterConfig, encoder_config: Any, name: str,
              show_progress: bool) -> Any:
    """The materialised dataset, with an ``embedding`` column for dense and hybrid."""
    dataset = dataset.materialize()   # read whole first: encoding actors may then hold every CPU without starving it
    if method not in DENSE_METHODS:
        return dataset
    from retrieval.distributed.encode import EncodeProgress, encode_dataset

    progress = ray.remote(num_cpus=0)(EncodeProgress).options(name=name + uuid.uuid4().hex).remote()
    total = dataset.count()
    dataset = encode_dataset(dataset, encoder_config, actors=cluster.encode_actors, batch_size=cluster.encode_batch,
                             num_cpus=cluster.encode_cpus, num_gpus=cluster.encode_gpus, progress=progress)
    stop, thread = _watch_encoding(progress, total, show_progress)
    try:
        return dataset.materialize()
    finally:
        stop.set()
        thread.join()
        ray.kill(progress)


def _gather(ray: Any, refs: list[Any], show_progress: bool) -> list[Any]:
    """Results of the shard-writing tasks in shard order, with a progress bar as they finish."""
    pending = list(refs)
    with tqdm(total=len(refs), desc="Writing shards", unit="shard", disable=not show_progress) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            bar.update(len(done))
    return ray.get(refs)


def check_unique_ids(hashes: list[np.ndarray], folders: list[Path]) -> None:
    """Document ids must be unique across shards (each shard checked its own); a repeat names both shards.

    Shards send 64-bit hashes of their ids; only on a repeated hash are the ids themselves read to confirm it.
    """
    if len(hashes) < 2:
        return
    owner = np.concatenate([np.full(len(h), i) for i, h in enumerate(hashes)])
    flat = np.concatenate(hashes)
    values, counts = np.unique(flat, return_counts=True)
    for value in values[counts > 1]:
        shards = sorted(set(owner[flat == value].tolist()))
        id_sets = [set(read_str_list(folders[s] / "doc_ids.json", "document id")) for s in shards]
        common = set.intersection(*id_sets) if len(id_sets) > 1 else set()
        if common:
            raise DataError(f"duplicate document id {sorted(common)[0]!r} in shards {shards} "
                            f"({', '.join(str(folders[s]) for s in shards)})")


def _write_stats(root: Path, method: str, counts: list[ShardTerms], kwargs: dict[str, Any]) -> dict[str, int] | None:
    """Save each shard's collection-wide idf under ``stats/``; returns the collection's BM25 totals."""
    if method not in SPARSE_METHODS:
        return None
    from retrieval.sparse.scoring import BM25Config

    config = kwargs.get("config" if method == "bm25" else "bm25") or BM25Config()
    (root / "stats").mkdir()
    for i, term_idf in enumerate(global_idfs(counts, config)):
        np.save(root / "stats" / f"{shard_name(i)}.idf.npy", term_idf, allow_pickle=False)
    return {"n_docs": sum(c.n_docs for c in counts), "total_len": sum(c.total_len for c in counts)}


def build_sharded(documents: str | Path | Iterable[Any], method: str = "bm25", *,
                  cluster: ClusterConfig | str | None = None, out: str | Path | None = None, shards: int | None = None,
                  show_progress: bool = True, config: Any = None, **options: Any) -> Any:
    """Index ``documents`` as ``shards`` shards on a Ray cluster and return the index served there.

    ``cluster`` is a :class:`ClusterConfig` or a Ray address (default ``'local'``); ``shards`` overrides its
    ``shards``. ``out`` is the folder to write (atomically; default: a temporary folder removed by ``close()``).
    ``format``, ``id_field``, ``text_field``, ``title_field`` say how to read a file; ``config`` and other
    ``options`` are the method's, as in :meth:`Retriever.from_documents`. Returns a
    :class:`~retrieval.distributed.search.ShardedRetriever` with one actor per shard.
    """
    from retrieval.distributed.search import ShardedRetriever

    cluster = cluster_config(cluster, shards=shards)
    owned = out is None
    target = Path(tempfile.mkdtemp(prefix="retrievekit-sharded-")) / "index" if owned else Path(out)
    encoder = write_sharded(documents, method, target, cluster=cluster, show_progress=show_progress, config=config,
                            **options)
    return ShardedRetriever.load(target, cluster=cluster, query_encoder=encoder, _owned=owned)


def write_sharded(documents: str | Path | Iterable[Any], method: str, out: str | Path, *,
                  cluster: ClusterConfig | str | None = None, show_progress: bool = True, config: Any = None,
                  **options: Any) -> Any:
    """Build and save the sharded index at ``out`` (see :func:`build_sharded`); returns the query encoder it
    loaded for dense and hybrid (None for bm25), so a caller serving the index need not load it again."""
    from retrieval.options import build_kwargs
    from retrieval.retriever import searcher_class

    searcher_class(method)
    cluster = cluster_config(cluster)
    fields = {k: options.pop(k) for k in DATA_FIELDS if k in options}
    kwargs = build_kwargs(method, options, config, show_progress=False)
    encoder_config = _encoder_config(method, kwargs) if method in DENSE_METHODS else None
    target = Path(out)
    guard = functools.partial(check_index_target, kind=KIND, entries=ENTRIES)
    guard(target.resolve())
    ray = connect(cluster.address)
    ray.data.DataContext.get_current().enable_progress_bars = show_progress
    start = time.perf_counter()
    query_encoder = facts = None
    if encoder_config is not None:
        from retrieval.dense.encoders import load_encoder

        query_encoder = load_encoder(encoder_config)
        facts = query_encoder.describe()
    with atomic_dir(target, guard=guard) as tmp:   # from the first block read: a killed build leaves no index
        dataset = _embedded(ray, read_dataset(documents, **fields), method, cluster, encoder_config,
                            progress_name(target), show_progress)
        listed, counts, hashes = _write_shards(ray, tmp, dataset, method, cluster, kwargs, facts, show_progress)
        check_unique_ids(hashes, [tmp / "shards" / s["name"] for s in listed])
        bm25 = _write_stats(tmp, method, counts, kwargs)
        write_layout(tmp, method, listed, bm25=bm25, encoder=facts, fusion=_fusion(method, kwargs),
                     build={"cluster": cluster.to_dict(), "seconds": round(time.perf_counter() - start, 3)})
    n_docs = sum(s["n_docs"] for s in listed)
    logger.info("built a %s index of %d documents in %d shards at %s (%.1fs)", method, n_docs, len(listed), target,
                time.perf_counter() - start)
    return query_encoder


def _fusion(method: str, kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """The fusion settings a hybrid index records (the default ones when none were given)."""
    if method != "hybrid":
        return None
    from retrieval.hybrid.searcher import FusionConfig

    return (kwargs.get("fusion") or FusionConfig()).to_dict()


def _write_shards(ray: Any, tmp: Path, dataset: Any, method: str, cluster: ClusterConfig, kwargs: dict[str, Any],
                  facts: dict[str, Any] | None, show_progress: bool) -> tuple[list[dict[str, Any]], list, list]:
    """Cut the materialised dataset into contiguous ranges and save each as a shard, one Ray task per shard.

    Returns the manifest's shard entries, each shard's BM25 counts and id hashes. Every row lands in exactly one
    shard: the sizes written are checked against the ranges cut.
    """
    n_docs = dataset.count()
    if n_docs == 0:
        raise DataError("documents: no documents")
    offsets = shard_offsets(n_docs, cluster.shards)
    parts = dataset.split_at_indices(offsets[1:-1]) if len(offsets) > 2 else [dataset]
    task = ray.remote(write_shard).options(num_cpus=cluster.shard_cpus, max_retries=3)
    refs = [task.remote(part, str(tmp / "shards" / shard_name(i)), method, kwargs, facts)
            for i, part in enumerate(parts)]
    results = _gather(ray, refs, show_progress)
    sizes = [n for n, _, _ in results]
    if sizes != [b - a for a, b in zip(offsets, offsets[1:])]:
        raise RuntimeError(f"shards hold {sizes} documents, expected ranges from {offsets}; nothing was saved")
    listed = [{"name": shard_name(i), "offset": offsets[i], "n_docs": sizes[i]} for i in range(len(parts))]
    return listed, [c for _, c, _ in results], [h for _, _, h in results]
