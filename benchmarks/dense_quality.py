"""Dense and hybrid retrieval quality and query latency on BEIR SciFact (test split).

    python benchmarks/dense_quality.py [--data ../shared/data] [--model minilm]

Corpus embeddings are cached in ``benchmarks/out/scifact_<model>_{fp32,int8,onnx,int8-onnx,bf16,...}.npy`` (keyed by a hash of
the corpus, model and settings in a JSON side file), so re-runs and ``dense_speed.py`` never re-encode.
Reports nDCG@10 / Recall@100 for BM25, dense Flat / HNSW / IVF-PQ, the fast paths (torch int8, ONNX fp32,
ONNX int8, bf16, OpenVINO fp32 and static int8; Flat, queries and corpus encoded by the fast path), hybrid RRF and
hybrid linear (each stage 1000 deep, then fused); recall@10 of HNSW / IVF-PQ against Flat; and one-query ``retrieve`` p50/p99 per method.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# No OMP_WAIT_POLICY=PASSIVE here: it made FAISS k-means faster on a busy machine, but torch shares the OpenMP
# runtime and sleeping threads double one-query encoding latency (7.7 -> 15.0 ms p50, measured idle).

from retrieval.sparse.searcher import BM25Searcher  # noqa: E402
from retrieval.data import load_beir  # noqa: E402
from retrieval.datasets import data_dir  # noqa: E402
from retrieval.dense.searcher import DenseSearcher  # noqa: E402
from retrieval.docstore import DocStore  # noqa: E402
from retrieval.dense.encoders import BiEncoder, load_encoder  # noqa: E402
from retrieval.eval.metrics import evaluate  # noqa: E402
from retrieval.hybrid.searcher import HybridSearcher  # noqa: E402
from retrieval.retriever import Retriever  # noqa: E402
from retrieval.types import Document  # noqa: E402
from retrieval.argtypes import at_least  # noqa: E402

logger = logging.getLogger("dense_quality")
FUSION_DEPTH = 1000   # each first stage's depth before fusion (HybridSearcher's default)


def cached_corpus_embeddings(encoder: BiEncoder, docs: list[Document], out: Path, tag: str) -> np.ndarray:
    """Encode ``docs`` once; reuse ``out/scifact_<tag>.npy`` when its key (corpus + encoder) matches."""
    key = hashlib.sha256(json.dumps([encoder.describe(), [d.id for d in docs],
                                     sum(len(d.full_text) for d in docs)]).encode()).hexdigest()[:16]
    npy, meta = out / f"scifact_{tag}.npy", out / f"scifact_{tag}.json"
    if npy.exists() and meta.exists() and json.loads(meta.read_text()).get("key") == key:
        logger.info("using cached embeddings %s", npy)
        return np.load(npy, allow_pickle=False)
    start = time.perf_counter()
    emb = encoder.encode_documents(docs, show_progress=True)
    seconds = time.perf_counter() - start
    np.save(npy, emb, allow_pickle=False)
    meta.write_text(json.dumps({"key": key, "encoder": encoder.describe(), "n_docs": len(docs),
                                "seconds": seconds, "docs_per_s": len(docs) / seconds}, indent=2))
    logger.info("encoded %d docs in %.0f s (%.1f docs/s) -> %s", len(docs), seconds, len(docs) / seconds, npy)
    return emb


def run_of(results: list[tuple[np.ndarray, np.ndarray]], qids: list[str], doc_ids: list[str]) -> dict:
    return {q: {doc_ids[r]: float(s) for r, s in zip(rows.tolist(), scores.tolist())}
            for q, (rows, scores) in zip(qids, results)}


def overlap_at_10(approx: list, exact: list) -> float:
    """Mean share of the exact top 10 that the approximate index also returns in its top 10."""
    return float(np.mean([len(set(a[0][:10].tolist()) & set(e[0][:10].tolist())) / max(1, min(10, len(e[0])))
                          for a, e in zip(approx, exact)]))


def latency(retriever: Retriever, queries: list[str], n: int) -> dict[str, float]:
    """p50/p99 of one-query ``retrieve`` (query encoding included), after one warm-up call.

    Also the process CPU time per query (all threads), which a busy shared machine inflates far less.
    """
    retriever.retrieve(queries[0], k=10)
    times, cpu = [], []
    for q in queries[:n]:
        t, c = time.perf_counter(), time.process_time()
        retriever.retrieve(q, k=10)
        times.append((time.perf_counter() - t) * 1000)
        cpu.append((time.process_time() - c) * 1000)
    return {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99)),
            "cpu_p50_ms": float(np.percentile(cpu, 50)), "n": len(times), "load_avg_1min": os.getloadavg()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(data_dir(default=REPO.parent / "shared" / "data")))
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--batch-size", type=at_least(1), default=32)
    ap.add_argument("--latency-queries", type=at_least(1), default=100)
    ap.add_argument("--fast-paths", default="int8,onnx,int8-onnx,bf16",
                    help="comma-separated fast paths to measure ('' for none): int8, onnx, int8-onnx, bf16, "
                         "openvino, int8-openvino (static int8, calibrated on 300 corpus passages)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "out"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ds = load_beir(Path(args.data) / "beir" / "scifact", "test")
    docs = list(ds.corpus())
    doc_ids = [d.id for d in docs]
    qids = list(ds.queries)
    qtexts = [ds.queries[q] for q in qids]
    result: dict = {"dataset": "beir/scifact test", "n_docs": len(docs), "n_queries": len(qids), "model": args.model,
                    "batch_size": args.batch_size, "quality": {}, "recall_vs_flat": {}, "latency": {}}

    def record(name: str, res: list) -> None:
        m = evaluate(ds.qrels, run_of(res, qids, doc_ids), k_values=(10, 100))
        result["quality"][name] = {"nDCG@10": m["nDCG@10"], "Recall@100": m["Recall@100"]}
        logger.info("%-22s nDCG@10 %.4f  Recall@100 %.4f", name, m["nDCG@10"], m["Recall@100"])

    bm25 = BM25Searcher.build(docs, show_progress=False)
    bm25_deep = bm25.search(qtexts, FUSION_DEPTH)
    record("BM25", [(r[:100], s[:100]) for r, s in bm25_deep])

    enc = load_encoder(args.model, batch_size=args.batch_size, show_progress=True)
    emb = cached_corpus_embeddings(enc, docs, out, f"{args.model}_fp32")
    q_emb = enc.encode_queries(qtexts)
    dense = {}
    for name in ("flat", "hnsw", "ivfpq"):
        dense[name] = DenseSearcher.from_embeddings(doc_ids, emb, enc, index=name)
        res = dense[name].search_vectors(q_emb, 100)
        record(f"Dense {name} ({dense[name].config.factory})", res)
        dense[name + "_res"] = res
    for name in ("hnsw", "ivfpq"):
        result["recall_vs_flat"][name] = overlap_at_10(dense[name + "_res"], dense["flat_res"])
        logger.info("recall@10 of %s vs Flat: %.4f", name, result["recall_vs_flat"][name])
    flat_deep = dense["flat"].search_vectors(q_emb, FUSION_DEPTH)
    for fusion in ("rrf", "linear"):
        hybrid = HybridSearcher(bm25, dense["flat"], fusion=fusion, weight=0.5, rrf_k=60, depth=FUSION_DEPTH)
        record(f"Hybrid {fusion}", hybrid.fuse(bm25_deep, flat_deep, 100))

    store = DocStore(docs)
    systems = {"bm25": bm25, "dense flat": dense["flat"], "dense hnsw": dense["hnsw"], "dense ivfpq": dense["ivfpq"],
               "hybrid rrf": HybridSearcher(bm25, dense["flat"], fusion="rrf"),
               "hybrid linear": HybridSearcher(bm25, dense["flat"], fusion="linear")}
    for name, searcher in systems.items():
        result["latency"][name] = latency(Retriever(searcher, store), qtexts, args.latency_queries)
        logger.info("latency %-14s p50 %.1f ms  p99 %.1f ms", name, result["latency"][name]["p50_ms"],
                    result["latency"][name]["p99_ms"])
    (out / "dense_quality.json").write_text(json.dumps(result, indent=2))

    fast_paths = {"int8": {"int8": True}, "onnx": {"backend": "onnx"}, "int8-onnx": {"int8": True, "backend": "onnx"},
                  "openvino": {"backend": "openvino"}, "int8-openvino": {"int8": True, "backend": "openvino"},
                  "bf16": {"bf16": True}}
    # calibrated up front on 300 passages spread over the corpus, so cached corpus vectors and queries agree
    fast_paths["int8-openvino"]["calibration"] = str(Path(args.data) / "beir" / "scifact")
    for name in [p for p in args.fast_paths.split(",") if p]:
        if name not in fast_paths:
            raise SystemExit(f"--fast-paths: unknown {name!r}; choose from {sorted(fast_paths)}")
        fast = load_encoder(args.model, batch_size=args.batch_size, show_progress=True, **fast_paths[name])
        emb_fast = cached_corpus_embeddings(fast, docs, out, f"{args.model}_{name}")
        flat_fast = DenseSearcher.from_embeddings(doc_ids, emb_fast, fast, index="flat")
        record(f"Dense flat {name}", flat_fast.search_vectors(fast.encode_queries(qtexts), 100))
        result["latency"][f"dense flat {name}"] = latency(Retriever(flat_fast, store), qtexts, args.latency_queries)
    (out / "dense_quality.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
