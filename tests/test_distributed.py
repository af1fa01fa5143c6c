"""Scale-out on a real local Ray cluster: sharded results equal one index, and faults are survived.

One session cluster (``ray.init(num_cpus=2)``) serves every test but two: a killed driver runs in its own process
joined to that cluster, and the two-node test starts its own head and worker with ``ray start``. Shard actors
reserve no CPU here (``shard_cpus=0``) so several small indexes can be served at once on two cores.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest

from retrieval.cli import main
from retrieval.data import load_queries
from retrieval.errors import DataError, IndexFormatError
from retrieval.retriever import Retriever
from retrieval.sample import sample_dir

ray = pytest.importorskip("ray")

from retrieval.distributed.build import build_sharded, progress_name, write_sharded  # noqa: E402
from retrieval.distributed.cluster import ClusterConfig  # noqa: E402
from retrieval.distributed.errors import ShardError  # noqa: E402
from retrieval.distributed.merge import merge_batches  # noqa: E402
from retrieval.distributed.search import ShardedRetriever  # noqa: E402

pytestmark = pytest.mark.ray

CORPUS = sample_dir() / "corpus.jsonl"
QUERIES = list(load_queries(sample_dir() / "queries.jsonl").values())
DRIVER = Path(__file__).parent / "helpers" / "ray_driver.py"
SMALL = dict(shard_cpus=0, encode_cpus=0.5)   # two cores: actors must leave room for Ray Data's read tasks


@pytest.fixture(scope="session")
def ray_cluster() -> str:
    """A local Ray cluster for the session, on loopback only; yields its address for other driver processes."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"   # Ray then binds 127.0.0.1, not the host's address
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, _node_ip_address="127.0.0.1")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def assert_same(got: list, want: list, ties_on_cut: bool = False) -> None:
    """Same ids in the same order and scores within 1e-5, query by query.

    ``ties_on_cut``: documents tied with the last score may differ (FAISS keeps whichever its heap held).
    """
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.scores, np.asarray(w.scores, dtype=np.float32), rtol=0, atol=1e-5)
        keep = len(w.ids) if not ties_on_cut or not len(w.ids) else int((np.asarray(w.scores) > w.scores[-1]).sum())
        assert g.ids[:keep] == list(w.ids)[:keep] and len(g.ids) == len(w.ids)


@pytest.fixture(scope="module")
def bm25_index(ray_cluster: str, tmp_path_factory: pytest.TempPathFactory) -> ShardedRetriever:
    out = tmp_path_factory.mktemp("sharded") / "bm25"
    index = build_sharded(CORPUS, "bm25", cluster=ClusterConfig(shards=3, **SMALL), out=out, show_progress=False)
    yield index
    index.close()


@pytest.fixture(scope="module")
def hybrid_index(ray_cluster: str, tiny_model_folder: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> ShardedRetriever:
    out = tmp_path_factory.mktemp("sharded") / "hybrid"
    cluster = ClusterConfig(shards=2, encode_actors=2, **SMALL)
    index = build_sharded(CORPUS, "hybrid", cluster=cluster, out=out, show_progress=False,
                          model=str(tiny_model_folder), index="flat")
    yield index
    index.close()


def test_sharded_bm25_equals_one_index_bit_for_bit(bm25_index: ShardedRetriever) -> None:
    single = Retriever.from_documents(CORPUS, show_progress=False)
    for k in (1, 10, 100):
        got, want = bm25_index.search(QUERIES, k), single.retrieve_batch(QUERIES, k)
        assert_same(got, want)
        assert all(np.array_equal(g.scores, w.scores) for g, w in zip(got, want))


def test_okapi_idf_floor_uses_the_whole_collection(ray_cluster: str, tmp_path: Path) -> None:
    single = Retriever.from_documents(CORPUS, show_progress=False, variant="okapi", k1=0.9)
    with build_sharded(CORPUS, "bm25", cluster=ClusterConfig(shards=4, **SMALL), out=tmp_path / "idx",
                       show_progress=False, variant="okapi", k1=0.9) as index:
        assert_same(index.search(QUERIES, 20), single.retrieve_batch(QUERIES, 20))


def test_sharded_dense_flat_equals_one_index(ray_cluster: str, tiny_model_folder: Path, tmp_path: Path) -> None:
    single = Retriever.from_documents(CORPUS, "dense", show_progress=False, model=str(tiny_model_folder),
                                      index="flat")
    cluster = ClusterConfig(shards=3, encode_actors=2, **SMALL)
    with build_sharded(CORPUS, "dense", cluster=cluster, out=tmp_path / "idx", show_progress=False,
                       model=str(tiny_model_folder), index="flat") as index:
        for k in (5, 50):
            assert_same(index.search(QUERIES, k), single.retrieve_batch(QUERIES, k))


def test_encoding_actors_may_hold_every_cpu(ray_cluster: str, tiny_model_folder: Path, tmp_path: Path) -> None:
    cluster = ClusterConfig(shards=2, encode_actors=1, encode_cpus=2, shard_cpus=0)   # the session has 2 CPUs
    with build_sharded(CORPUS, "dense", cluster=cluster, out=tmp_path / "idx", show_progress=False,
                       model=str(tiny_model_folder), index="flat") as index:
        assert len(index) == 80


def test_sharded_hybrid_equals_one_index(hybrid_index: ShardedRetriever, tiny_model_folder: Path) -> None:
    single = Retriever.from_documents(CORPUS, "hybrid", show_progress=False, model=str(tiny_model_folder),
                                      index="flat")
    assert_same(hybrid_index.search(QUERIES, 10), single.retrieve_batch(QUERIES, 10))


def test_retriever_from_documents_builds_on_the_cluster(ray_cluster: str, tmp_path: Path) -> None:
    single = Retriever.from_documents(CORPUS, show_progress=False, k1=1.2)
    with Retriever.from_documents(CORPUS, cluster=ClusterConfig(**SMALL), shards=2, out=tmp_path / "idx",
                                  show_progress=False, k1=1.2) as index:
        assert isinstance(index, ShardedRetriever) and len(index.layout.shards) == 2
        assert_same(index.search(QUERIES, 10), single.retrieve_batch(QUERIES, 10))


def test_hits_and_runs_read_like_a_retriever(bm25_index: ShardedRetriever) -> None:
    single = Retriever.from_documents(CORPUS, show_progress=False)
    hits, want = bm25_index.retrieve("why does bread dough rise", k=3), single.retrieve("why does bread dough rise", 3)
    assert [(h.id, h.rank, h.title, h.text) for h in hits] == [(h.id, h.rank, h.title, h.text) for h in want]
    queries = dict(list(load_queries(sample_dir() / "queries.jsonl").items())[:5])
    got, want = bm25_index.run(queries, k=7), single.run(queries, k=7)
    assert list(got) == list(want)
    for qid in want:
        assert list(got[qid]) == list(want[qid]) and got[qid] == pytest.approx(want[qid])
    assert len(bm25_index) == 80 and bm25_index.method == "bm25"


def test_a_small_sharded_index_opens_in_one_process(bm25_index: ShardedRetriever,
                                                    hybrid_index: ShardedRetriever) -> None:
    for index in (bm25_index, hybrid_index):
        local = ShardedRetriever.load(index.layout.root)
        assert set(local.shard_pids()) == {os.getpid()}
        assert_same(local.search(QUERIES, 10), index.search(QUERIES, 10))


def test_each_shard_is_a_normal_saved_index_in_row_order(bm25_index: ShardedRetriever) -> None:
    root = bm25_index.layout.root
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["kind"] == "sharded" and [s["offset"] for s in manifest["shards"]] == [0, 26, 53]
    ids = [i for s in manifest["shards"] for i in Retriever.load(root / "shards" / s["name"]).docs.ids]
    assert ids == [json.loads(line)["_id"] for line in CORPUS.read_text().splitlines()]


def test_a_changed_shard_is_refused_naming_it(bm25_index: ShardedRetriever, tmp_path: Path) -> None:
    copy = bm25_index.save(tmp_path / "copy")
    shard_manifest = copy / "shards" / "shard-00001" / "manifest.json"
    shard_manifest.write_text(shard_manifest.read_text() + " ")
    with pytest.raises(IndexFormatError, match="shard-00001"):
        ShardedRetriever.load(copy)


@pytest.mark.parametrize("fmt", ["tsv", "csv", "parquet"])
def test_tables_are_read_in_blocks_as_jsonl_is(ray_cluster: str, tmp_path: Path, fmt: str) -> None:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    records = [json.loads(line) for line in CORPUS.read_text().splitlines()]
    table = pa.table({"docid": [r["_id"] for r in records], "title": [r["title"] for r in records],
                      "text": [r["text"] for r in records]})
    path = tmp_path / f"corpus.{fmt}"
    if fmt == "parquet":
        pq.write_table(table, path)
    else:
        pacsv.write_csv(table, path, pacsv.WriteOptions(delimiter="\t" if fmt == "tsv" else ","))
    single = Retriever.from_documents(CORPUS, show_progress=False)
    with build_sharded(path, "bm25", cluster=ClusterConfig(shards=2, **SMALL), out=tmp_path / "idx",
                       show_progress=False, id_field="docid") as index:
        assert_same(index.search(QUERIES, 10), single.retrieve_batch(QUERIES, 10))


def test_an_id_repeated_across_shards_is_a_data_error(ray_cluster: str, tmp_path: Path) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"_id": i, "text": f"text {n}"}) + "\n"
                              for n, i in enumerate(["a", "b", "c", "a"])))
    with pytest.raises(DataError, match="duplicate document id 'a' in shards \\[0, 1\\]"):
        write_sharded(corpus, "bm25", tmp_path / "idx", cluster=ClusterConfig(shards=2, **SMALL), show_progress=False)
    assert not (tmp_path / "idx").exists()


def _write_corpus(path: Path, n: int) -> Path:
    words = "cat dog protein cell gene cancer mouse human study results risk therapy".split()
    with path.open("w") as fh:
        for i in range(n):
            fh.write(json.dumps({"_id": f"doc{i}", "title": words[i % 12],
                                 "text": " ".join(words[(i * j) % 12] for j in range(1, 9))}) + "\n")
    return path


def test_killed_encoding_worker_is_retried_and_every_doc_indexed_once(ray_cluster: str, tiny_model_folder: Path,
                                                                      tmp_path: Path) -> None:
    corpus, out = _write_corpus(tmp_path / "c.jsonl", 1200), tmp_path / "idx"
    cluster = ClusterConfig(shards=2, encode_actors=2, encode_batch=2, **SMALL)
    errors: list[BaseException] = []

    def build() -> None:
        try:
            write_sharded(corpus, "dense", out, cluster=cluster, show_progress=False, model=str(tiny_model_folder),
                          index="flat")
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    thread = threading.Thread(target=build)
    thread.start()
    workers, deadline = {}, time.monotonic() + 120
    while not workers and time.monotonic() < deadline:
        names = [n for n in ray.util.list_named_actors() if n.startswith(progress_name(out))]
        try:
            workers = ray.get(ray.get_actor(names[0]).workers.remote()) if names else {}
        except ValueError:   # gone between the listing and the lookup
            workers = {}
        time.sleep(0.05)
    victim, done_at_kill = next(iter(workers)), sum(workers.values())
    os.kill(victim, signal.SIGKILL)
    thread.join(timeout=300)
    assert not errors, errors
    assert done_at_kill < 1200   # the worker died mid-encoding
    index = ShardedRetriever.load(out)
    ids = [i for s in index.shards.servers for i in s.retriever.docs.ids]
    assert ids == [f"doc{i}" for i in range(1200)]
    assert sum(len(s.retriever.searcher) for s in index.shards.servers) == 1200
    assert index.retrieve("cat protein", k=3)[0].id.startswith("doc")


def test_dead_shard_actor_is_restarted_from_its_folder(ray_cluster: str, tmp_path: Path) -> None:
    single = Retriever.from_documents(CORPUS, show_progress=False)
    with build_sharded(CORPUS, "bm25", cluster=ClusterConfig(shards=2, max_restarts=1, **SMALL),
                       out=tmp_path / "idx", show_progress=False) as index:
        before = index.shard_pids()
        os.kill(before[1], signal.SIGKILL)
        assert_same(index.search(QUERIES, 10), single.retrieve_batch(QUERIES, 10))
        after = index.shard_pids()
        assert after[0] == before[0] and after[1] != before[1]


def test_dead_shard_without_restarts_fails_naming_the_shard(ray_cluster: str, tmp_path: Path) -> None:
    with build_sharded(CORPUS, "bm25", cluster=ClusterConfig(shards=2, max_restarts=0, **SMALL),
                       out=tmp_path / "idx", show_progress=False) as index:
        os.kill(index.shard_pids()[1], signal.SIGKILL)
        with pytest.raises(ShardError, match=r"shard 1 \(.*shard-00001\) is down"):
            index.search(QUERIES, 10)


def test_killed_driver_leaves_the_previous_index(ray_cluster: str, tiny_model_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "idx"
    write_sharded(CORPUS, "bm25", out, cluster=ClusterConfig(shards=2, **SMALL), show_progress=False)
    corpus = _write_corpus(tmp_path / "big.jsonl", 3000)
    driver = subprocess.Popen([sys.executable, str(DRIVER), "build", ray_cluster, str(out), str(corpus),
                               str(tiny_model_folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert driver.stdout.readline().strip() == "building"
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob(".idx.tmp-*")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(tmp_path.glob(".idx.tmp-*")), "the build never started writing"
        time.sleep(1.0)
    finally:
        driver.kill()
        driver.wait()
    index = ShardedRetriever.load(out)      # the old bm25 index, whole; the leftover is cleaned
    assert index.method == "bm25" and len(index) == 80
    assert not list(tmp_path.glob(".idx.*"))


def test_no_cluster_answering_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    run = subprocess.run([sys.executable, str(DRIVER), "connect", f"127.0.0.1:{port}"], capture_output=True,
                         text=True, timeout=120)
    assert time.monotonic() - start < 60
    assert run.returncode != 0
    assert f"no Ray cluster answers at '127.0.0.1:{port}'" in run.stderr


def test_cli_builds_on_ray_and_searches_the_sharded_index(ray_cluster: str, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "idx"
    assert main(["index", str(sample_dir()), "--out", str(out), "--ray", "--shards", "2", "--quiet"]) == 0
    assert "indexed 80 documents with bm25 in 2 shards on Ray" in capsys.readouterr().out
    assert main(["search", str(out), "why does bread dough rise", "-k", "2", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert [h["rank"] for h in hits] == [1, 2] and hits[0]["id"] == "d31"


# a throwaway test cluster of two nodes on this machine: multi-node allowed, no token to hand around
TWO_NODE_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1", "RAY_AUTH_MODE": "disabled"}


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _wait_for_port(port: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _ray_start(args: list[str], temp_dir: str) -> subprocess.Popen:
    """``ray start --block`` in a process group of its own, so exactly its processes can be stopped."""
    ports = _free_ports(6)
    flags = ["--num-cpus=1", "--block", "--disable-usage-stats", "--node-ip-address=127.0.0.1",
             f"--node-manager-port={ports[0]}",
             f"--object-manager-port={ports[1]}", f"--dashboard-agent-listen-port={ports[2]}",
             f"--dashboard-agent-grpc-port={ports[3]}", f"--runtime-env-agent-port={ports[4]}",
             f"--metrics-export-port={ports[5]}"]
    env = {**os.environ, **TWO_NODE_ENV, "RAY_TMPDIR": temp_dir}
    return subprocess.Popen(["ray", "start", *args, *flags], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env=env)


def test_two_node_cluster_started_with_ray_start(tmp_path: Path) -> None:
    (port,) = _free_ports(1)
    temp_dir = tempfile.mkdtemp(prefix="rk-ray-", dir="/tmp")   # short: Ray's socket paths must fit 107 bytes
    nodes = [_ray_start(["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp_dir}"], temp_dir)]
    try:
        _wait_for_port(port, seconds=120)     # the head's GCS answers; the driver then waits for the second node
        nodes.append(_ray_start([f"--address=127.0.0.1:{port}"], temp_dir))
        run = subprocess.run([sys.executable, str(DRIVER), "two-nodes", f"127.0.0.1:{port}",
                              str(sample_dir() / "corpus.jsonl")], capture_output=True, text=True, timeout=240,
                             env={**os.environ, **TWO_NODE_ENV})
        assert run.returncode == 0, run.stderr[-3000:]
        report = json.loads(run.stdout.strip().splitlines()[-1])
        assert report["nodes"] == 2 and report["equal"]
        assert len(set(report["actor_nodes"])) == 2    # one shard actor per node (each holds the node's one CPU)
    finally:
        for node in reversed(nodes):     # exactly the process groups started above (no `ray stop`: it stops
            os.killpg(node.pid, signal.SIGKILL)   # every Ray on the machine, the session's cluster too)
            node.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_scifact_sharded_equals_one_index(ray_cluster: str, scifact_dir: Path, tiny_model_folder: Path,
                                          tmp_path: Path) -> None:
    """Real data: BM25 in 4 shards, dense flat and hybrid in 3, against one index over all 5,183 documents."""
    from retrieval.data import load_beir

    queries = list(load_beir(scifact_dir, split="test").queries.values())
    with build_sharded(scifact_dir, "bm25", cluster=ClusterConfig(shards=4, **SMALL), out=tmp_path / "bm25",
                       show_progress=False) as index:
        single = Retriever.from_documents(scifact_dir, show_progress=False)
        assert_same(index.search(queries, 100), single.retrieve_batch(queries, 100))
    # depth 10,000 > 5,183: the stages are fused whole, so no tie on a stage's cut can move a fused score (the tiny
    # random model gives many documents exactly the same vector; a real model gives that only to duplicates)
    dense = dict(model=str(tiny_model_folder), index="flat", depth=10_000)
    single = Retriever.from_documents(scifact_dir, "hybrid", show_progress=False, **dense)
    with build_sharded(scifact_dir, "hybrid", cluster=ClusterConfig(shards=3, **SMALL), out=tmp_path / "hybrid",
                       show_progress=False, **dense) as index:
        assert_same(index.search(queries, 100), single.retrieve_batch(queries, 100))
        got = index.shards.call("search", None, single.searcher.dense.encoder.encode_queries(queries), 100)
        ids = single.docs.ids
        want = [types.SimpleNamespace(ids=[ids[r] for r in rows.tolist()], scores=scores)
                for rows, scores in single.searcher.dense.search(queries, 100)]
        assert_same(merge_batches([a[1] for a in got], 100, "descending"), want, ties_on_cut=True)   # dense alone
