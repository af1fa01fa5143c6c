"""A separate Ray driver process for the scale-out tests: ``python ray_driver.py COMMAND ADDRESS ARGS...``.

``build OUT CORPUS MODEL``: a slow dense build (many tiny batches) into OUT, printing "building" first, so a test can
kill this driver mid-build. ``two-nodes CORPUS``: wait for the second node to join, build bm25 in two shards on a
two-node cluster, check results equal one index and print the nodes the shard actors ran on as JSON. ``connect``: only
connect (to see the error).
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from retrieval.distributed.build import build_sharded, write_sharded  # noqa: E402
from retrieval.distributed.cluster import ClusterConfig, connect  # noqa: E402


def build(address: str, out: str, corpus: str, model: str) -> None:
    connect(address)
    print("building", flush=True)
    write_sharded(corpus, "dense", out, cluster=ClusterConfig(address=address, shards=2, encode_batch=2,
                                                              encode_cpus=0.5, shard_cpus=0.5),
                  show_progress=False, model=model, index="flat")
    print("built", flush=True)


def two_nodes(address: str, corpus: str) -> None:
    import ray

    from retrieval.data import load_beir
    from retrieval.retriever import Retriever

    connect(address)
    deadline = time.monotonic() + 180    # a node started just before may take a while to join on a loaded machine
    while (nodes := len([n for n in ray.nodes() if n["Alive"]])) < 2 and time.monotonic() < deadline:
        time.sleep(1)
    queries = list(load_beir(Path(corpus).parent, split="test").queries.values())
    single = Retriever.from_documents(corpus, show_progress=False)
    out = Path(tempfile.mkdtemp(prefix="rk-two-nodes-")) / "idx"
    cluster = ClusterConfig(address=address, shards=2, shard_cpus=1)
    with build_sharded(corpus, "bm25", cluster=cluster, out=out, show_progress=False) as index:
        got, want = index.search(queries, 10), single.retrieve_batch(queries, 10)
        equal = all(g.ids == list(w.ids) for g, w in zip(got, want))
        where = index.shards.call("node")
    print(json.dumps({"nodes": nodes, "actor_nodes": where, "equal": equal}), flush=True)


if __name__ == "__main__":
    command, address, *rest = sys.argv[1:]
    if command == "build":
        build(address, *rest)
    elif command == "two-nodes":
        two_nodes(address, *rest)
    elif command == "connect":
        connect(address)
        print("connected", flush=True)
    else:
        raise SystemExit(f"unknown command {command!r}")
