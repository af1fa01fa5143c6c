"""Scale-out on Ray, measured on this machine: encoding throughput, sharded search, and correctness on SciFact.

    python benchmarks/scale.py [--data ../shared/data] [--docs 768] [--batch 64] [--parts encode,search,correctness]

(a) encode: the same first ``--docs`` SciFact documents embedded by all-MiniLM-L6-v2 three ways in one run:
    one plain process (``load_encoder().encode_documents``), Ray Data ``map_batches`` over 1 actor (2 CPUs) and
    over 2 actors (1 CPU each), batches of ``--batch``. Each time includes loading the model, as a build does.
    Ray's overhead per batch is the wall time of the same pipeline with an actor that returns its batch as is.
(b) search: SciFact BM25, unsharded ``Retriever`` against sharded indexes of 1, 2 and 4 shards (one Ray actor
    each), all 300 test queries, top-100: queries/s as one batch and one query at a time (p50), and the exact
    top-k merge alone per query.
(c) correctness: SciFact bm25 (4 shards) and hybrid with MiniLM in int8 ONNX (2 shards, encoded by one Ray actor;
    its dense stage checked on its own too) against one index: ids in the same order, largest score difference.

Ray runs locally with ``num_cpus=2``. Writes ``benchmarks/out/scale.json``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from retrieval.data import iter_documents, load_beir  # noqa: E402
from retrieval.datasets import data_dir  # noqa: E402
from retrieval.dense.cpu import cpu_flags, has_fast_bf16, has_fast_int8  # noqa: E402
from retrieval.distributed.build import build_sharded  # noqa: E402
from retrieval.distributed.cluster import ClusterConfig  # noqa: E402
from retrieval.distributed.encode import EncodeBatch  # noqa: E402
from retrieval.distributed.merge import merge_batches  # noqa: E402
from retrieval.retriever import Retriever  # noqa: E402
from retrieval.argtypes import at_least  # noqa: E402

logger = logging.getLogger("scale")


class TimedEncodeBatch(EncodeBatch):
    """EncodeBatch that also reports its model-load time and each batch's encoding time (seconds per row)."""

    def __init__(self, **kwargs: Any) -> None:
        start = time.perf_counter()
        super().__init__(**kwargs)
        self.load_s, self.pid = time.perf_counter() - start, os.getpid()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        out = super().__call__(batch)
        n = len(batch["_id"])
        out["encode_s"] = np.full(n, (time.perf_counter() - start) / n)
        out["load_s"], self.load_s = np.full(n, self.load_s / n), 0.0
        out["pid"] = np.full(n, self.pid)
        return out


class Passthrough:
    """An actor that returns its batch unchanged: what Ray Data costs per batch with no work."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return batch


def encode_part(ray: Any, docs: list, batch: int) -> dict[str, Any]:
    """(a): plain process, Ray 1 actor, Ray 2 actors, on the same documents; Ray's per-batch overhead."""
    from retrieval.dense.encoders import EncoderConfig, load_encoder

    config = EncoderConfig(batch_size=32, show_progress=False)

    def plain() -> tuple[float, float, np.ndarray]:
        start = time.perf_counter()
        encoder = load_encoder(config)
        load_s = time.perf_counter() - start
        emb = encoder.encode_documents(docs, show_progress=False)
        return time.perf_counter() - start, load_s, emb

    plain_s, load_s, plain_emb = plain()
    rows = [{"_id": d.id, "title": d.title, "text": d.text} for d in docs]
    out: dict[str, Any] = {"docs": len(docs), "batch": batch, "n_batches": -(-len(docs) // batch),
                           "plain": {"seconds": plain_s, "load_s": load_s, "docs_per_s": len(docs) / plain_s,
                                     "load_avg_1min": os.getloadavg()[0]}}
    for actors, cpus in ((1, 2), (2, 1)):
        start = time.perf_counter()
        pool = ray.data.ActorPoolStrategy(size=actors)
        ds = ray.data.from_items(rows).map_batches(TimedEncodeBatch, fn_constructor_kwargs={"config": config},
                                                   batch_size=batch, compute=pool, num_cpus=cpus,
                                                   batch_format="numpy").materialize()
        wall = time.perf_counter() - start
        cols = {k: [] for k in ("embedding", "encode_s", "load_s", "pid")}
        for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for k in cols:
                cols[k].append(b[k])
        pids = np.concatenate(cols["pid"])
        enc = np.concatenate(cols["encode_s"])
        busiest = max(enc[pids == p].sum() for p in np.unique(pids))
        emb = np.vstack(cols["embedding"])
        out[f"ray_{actors}_actor"] = {
            "seconds": wall, "docs_per_s": len(docs) / wall, "vs_plain": plain_s / wall,
            "model_load_s": float(np.concatenate(cols["load_s"]).sum()), "busiest_actor_encode_s": float(busiest),
            "max_abs_diff_vs_plain": float(np.abs(emb - plain_emb).max()), "load_avg_1min": os.getloadavg()[0]}
    again, _, _ = plain()    # the single process once more, after the Ray runs: the load may have changed
    out["plain_again"] = {"seconds": again, "docs_per_s": len(docs) / again, "load_avg_1min": os.getloadavg()[0]}
    mean_plain = (plain_s + again) / 2
    for actors in (1, 2):
        out[f"ray_{actors}_actor"]["vs_mean_plain"] = mean_plain / out[f"ray_{actors}_actor"]["seconds"]
    out["ray_overhead"] = passthrough_overhead(ray, rows, batch)
    return out


def passthrough_overhead(ray: Any, rows: list[dict[str, str]], batch: int) -> dict[str, float]:
    """Ray Data's cost per batch and per pipeline, from a do-nothing actor run at two batch sizes (same rows)."""
    def run(size: int) -> tuple[float, int]:
        start = time.perf_counter()
        ray.data.from_items(rows).map_batches(Passthrough, batch_size=size, compute=ray.data.ActorPoolStrategy(size=1),
                                              num_cpus=1, batch_format="numpy").materialize()
        return time.perf_counter() - start, -(-len(rows) // size)

    run(batch)   # warm-up: first pipeline of the session
    (t_few, n_few), (t_many, n_many) = run(batch), run(max(1, batch // 16))
    per_batch = (t_many - t_few) / (n_many - n_few) if n_many > n_few else float("nan")
    return {"per_batch_ms": 1000 * per_batch, "pipeline_start_s": t_few - n_few * per_batch,
            "batches_timed": [n_few, n_many], "seconds": [t_few, t_many]}


def _timed(fn: Any, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def search_part(scifact: Path, queries: list[str], work: Path) -> dict[str, Any]:
    """(b): BM25 unsharded vs 1/2/4 shards: queries/s (batch, single query) and merge cost per query, top-100."""
    single = Retriever.from_documents(scifact, show_progress=False)
    n = len(queries)
    batch_s = _timed(lambda: single.retrieve_batch(queries, 100))
    one = [_timed(lambda q=q: single.retrieve_batch([q], 100), 1) for q in queries[:100]]
    out: dict[str, Any] = {"queries": n, "k": 100,
                           "unsharded": {"batch_qps": n / batch_s, "single_query_p50_ms": 1000 * np.median(one)}}
    for shards in (1, 2, 4):
        cluster = ClusterConfig(shards=shards, shard_cpus=0.5)
        with build_sharded(scifact, "bm25", cluster=cluster, out=work / f"bm25-{shards}", show_progress=False) as index:
            index.search(queries[:5], 100)
            batch_s = _timed(lambda: index.search(queries, 100))
            one = [_timed(lambda q=q: index.search([q], 100), 1) for q in queries[:100]]
            answers = index.shards.call("search", queries, None, 100)
            merge_s = _timed(lambda: merge_batches([a[0] for a in answers], 100), 5)
            out[f"{shards}_shards"] = {"batch_qps": n / batch_s, "single_query_p50_ms": 1000 * np.median(one),
                                       "merge_ms_per_query": 1000 * merge_s / n}
    return out


def _compare(got: list, want: list) -> dict[str, Any]:
    same = sum(g.ids == list(w.ids) for g, w in zip(got, want))
    diff = max((float(np.abs(g.scores - np.asarray(w.scores, np.float32)).max()) for g, w in zip(got, want)
                if len(g.scores) and g.ids == list(w.ids)), default=0.0)
    return {"queries": len(got), "same_ids_same_order": same, "max_abs_score_diff": diff}


def correctness_part(scifact: Path, queries: list[str], work: Path) -> dict[str, Any]:
    """(c): sharded against one index on SciFact: bm25 (4 shards), hybrid and its dense stage (MiniLM, 2 shards)."""
    import types

    out: dict[str, Any] = {}
    single = Retriever.from_documents(scifact, show_progress=False)
    with build_sharded(scifact, "bm25", cluster=ClusterConfig(shards=4, shard_cpus=0.5), out=work / "c-bm25",
                       show_progress=False) as index:
        out["bm25_4_shards"] = _compare(index.search(queries, 100), single.retrieve_batch(queries, 100))
    start = time.perf_counter()
    fast = dict(index="flat", int8=True, backend="onnx")   # the int8 ONNX path, in the actors too
    single = Retriever.from_documents(scifact, "hybrid", show_progress=False, **fast)
    out["single_hybrid_build_s"] = time.perf_counter() - start
    start = time.perf_counter()
    cluster = ClusterConfig(shards=2, encode_actors=1, encode_cpus=2, shard_cpus=0.5)
    with build_sharded(scifact, "hybrid", cluster=cluster, out=work / "c-hybrid", show_progress=False,
                       **fast) as index:
        out["ray_hybrid_build_s"] = time.perf_counter() - start
        out["hybrid_2_shards"] = _compare(index.search(queries, 100), single.retrieve_batch(queries, 100))
        vectors = single.searcher.dense.encoder.encode_queries(queries)
        answers = index.shards.call("search", None, vectors, 100)
        ids = single.docs.ids
        want = [types.SimpleNamespace(ids=[ids[r] for r in rows.tolist()], scores=scores)
                for rows, scores in single.searcher.dense.search_vectors(vectors, 100)]
        merged = merge_batches([a[1] for a in answers], 100, "descending")
        out["dense_flat_2_shards"] = _compare(merged, want)
    return out


def machine() -> dict[str, Any]:
    import ray
    import torch

    return {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "ray": ray.__version__, "cpu_fast_int8": has_fast_int8(),
            "cpu_fast_bf16": has_fast_bf16(), "ray_worker_niceness": os.environ.get("RAY_worker_niceness"),
            "load_avg_1min_at_end": os.getloadavg()[0],
            "cpu_flags": sorted(cpu_flags() & {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8"})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(data_dir(default=REPO.parent / "shared" / "data")))
    ap.add_argument("--docs", type=at_least(1), default=768, help="documents for the encoding comparison")
    ap.add_argument("--batch", type=at_least(1), default=64,
                    help="documents per Ray Data batch in the encoding comparison")
    ap.add_argument("--parts", default="encode,search,correctness")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "out"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import ray

    scifact = Path(args.data) / "beir" / "scifact"
    queries = list(load_beir(scifact, split="test").queries.values())
    # Ray runs its workers at nice 15 by default; on a shared machine that alone would slow them against the
    # plain process (nice 0), so both run at the same priority here.
    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, _node_ip_address="127.0.0.1")
    ray.data.DataContext.get_current().enable_progress_bars = False
    ray.data.DataContext.get_current().execution_options.preserve_order = True   # as retrieval.distributed sets it
    parts = args.parts.split(",")
    result: dict[str, Any] = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="scale-bench-") as work:
        if "encode" in parts:
            docs = []
            for d in iter_documents(scifact):
                docs.append(d)
                if len(docs) == args.docs:
                    break
            result["encode"] = encode_part(ray, docs, args.batch)
            print(json.dumps(result["encode"], indent=2), flush=True)
        if "search" in parts:
            result["search"] = search_part(scifact, queries, Path(work))
            print(json.dumps(result["search"], indent=2), flush=True)
        if "correctness" in parts:
            result["correctness"] = correctness_part(scifact, queries, Path(work))
            print(json.dumps(result["correctness"], indent=2), flush=True)
    ray.shutdown()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "scale.json"   # parts run separately are merged: each part keeps the command that made it
    merged = json.loads(path.read_text()) if path.is_file() else {}
    for part in ("encode", "search", "correctness"):
        if part in result:
            key = f"encode_batch_{args.batch}" if part == "encode" else part
            merged[key] = {**result[part], "command": result["command"], "machine": result["machine"]}
    path.write_text(json.dumps(merged, indent=2, default=float))
    print(json.dumps(result["machine"], indent=2))


if __name__ == "__main__":
    main()
