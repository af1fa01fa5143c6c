"""BM25 on BEIR SciFact: retrievekit vs bm25s vs rank-bm25, in one run.

Each system runs in its own subprocess (so peak RSS is its own), with the same tokenizer
(bm25s's recipe: (?u)\\b\\w\\w+\\b, English stopwords, Snowball stemmer), and is timed end to end from
raw query strings to top-k document ids. Prints a table and writes benchmarks/out/bm25_speed.json.

    python benchmarks/bm25_speed.py [--data ../shared/data] [--k 100] [--repeats 5]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SYSTEMS = ("retrievekit", "bm25s", "rank_bm25")


def _load(data_dir: Path):
    from retrieval import load_beir

    data = load_beir(data_dir / "beir" / "scifact", "test")
    return data, list(data.corpus())


def _run_retrievekit(docs, queries, k, repeats):
    from retrieval import Retriever

    t = time.perf_counter()
    r = Retriever.from_documents(docs, show_progress=False)
    build = time.perf_counter() - t
    batch = []
    for _ in range(repeats):
        t = time.perf_counter()
        results = r.searcher.search(queries, k)
        batch.append(time.perf_counter() - t)
    ranked = [[r.docs.ids[i] for i in rows] for rows, _ in results]
    single = []
    for q in queries:
        t = time.perf_counter()
        r.retrieve(q, k=10)
        single.append(time.perf_counter() - t)
    return build, batch, ranked, single, [list(map(float, s)) for _, s in results]


def _run_bm25s(docs, queries, k, repeats):
    import bm25s
    import Stemmer

    stemmer = Stemmer.Stemmer("english")
    t = time.perf_counter()
    tokens = bm25s.tokenize([d.full_text for d in docs], stopwords="en", stemmer=stemmer, show_progress=False)
    model = bm25s.BM25()
    model.index(tokens, show_progress=False)
    build = time.perf_counter() - t
    batch = []
    for _ in range(repeats):
        t = time.perf_counter()
        q = bm25s.tokenize(queries, stopwords="en", stemmer=stemmer, show_progress=False)
        rows, scores = model.retrieve(q, k=k, show_progress=False, n_threads=os.cpu_count() or 1)
        batch.append(time.perf_counter() - t)
    ranked = [[docs[i].id for i in row] for row in rows]
    single = []
    for query in queries:
        t = time.perf_counter()
        q = bm25s.tokenize([query], stopwords="en", stemmer=stemmer, show_progress=False)
        model.retrieve(q, k=10, show_progress=False)
        single.append(time.perf_counter() - t)
    return build, batch, ranked, single, scores.tolist()


def _run_rank_bm25(docs, queries, k, repeats):
    import numpy as np
    from rank_bm25 import BM25Okapi

    from retrieval import Tokenizer

    tok = Tokenizer()
    t = time.perf_counter()
    model = BM25Okapi([tok(d.full_text) for d in docs])
    build = time.perf_counter() - t
    t = time.perf_counter()
    ranked, scores = [], []
    for q in queries:
        s = model.get_scores(tok(q))
        top = np.argsort(-s, kind="stable")[:k]
        ranked.append([docs[i].id for i in top])
        scores.append(s[top].tolist())
    batch = [time.perf_counter() - t]  # one pass: it is ~1000x slower
    return build, batch, ranked, batch[0] / len(queries) * np.ones(len(queries)), scores


def run_one(system: str, data_dir: Path, k: int, repeats: int) -> dict:
    from retrieval import evaluate

    data, docs = _load(data_dir)
    qids = list(data.queries)
    queries = [data.queries[q] for q in qids]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn = {"retrievekit": _run_retrievekit, "bm25s": _run_bm25s, "rank_bm25": _run_rank_bm25}[system]
    build, batch, ranked, single, scores = fn(docs, queries, k, repeats)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    run = {qid: {d: float(s) for d, s in zip(r, sc)} for qid, r, sc in zip(qids, ranked, scores)}
    metrics = evaluate(data.qrels, run, k_values=(10, 100))
    single_ms = sorted(x * 1000 for x in single)
    return {
        "system": system, "build_s": build, "batch_s": min(batch), "qps": len(queries) / min(batch),
        "single_p50_ms": statistics.median(single_ms), "single_p99_ms": single_ms[int(0.99 * (len(single_ms) - 1))],
        "peak_rss_mb": peak_mb, "rss_before_index_mb": rss_before / 1024,
        "nDCG@10": metrics["nDCG@10"], "Recall@100": metrics["Recall@100"],
    }


def main() -> None:
    from retrieval.argtypes import at_least
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("RETRIEVEKIT_DATA",
                    REPO.parent / "shared" / "data")))
    ap.add_argument("--k", type=at_least(1), default=100)
    ap.add_argument("--repeats", type=at_least(1), default=5)
    ap.add_argument("--system", choices=SYSTEMS, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "bm25_speed.json")
    args = ap.parse_args()
    if args.system:
        print(json.dumps(run_one(args.system, args.data, args.k, args.repeats)))
        return
    rows = []
    for system in SYSTEMS:
        cmd = [sys.executable, __file__, "--system", system, "--data", str(args.data), "--k", str(args.k),
               "--repeats", str(args.repeats)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    ours = rows[0]
    for row in rows:
        row["our_qps_ratio"] = ours["qps"] / row["qps"]
    print(f"BEIR SciFact test (300 queries, 5,183 docs), k={args.k}, {os.cpu_count()} cores")
    print(f"{'system':<12} {'build s':>8} {'q/s':>9} {'ours x':>8} {'p50 ms':>7} {'p99 ms':>7} {'peak MB':>8} {'nDCG@10':>8} {'R@100':>7}")
    for r in rows:
        print(f"{r['system']:<12} {r['build_s']:>8.2f} {r['qps']:>9.0f} {r['our_qps_ratio']:>8.1f} "
              f"{r['single_p50_ms']:>7.3f} {r['single_p99_ms']:>7.3f} {r['peak_rss_mb']:>8.0f} "
              f"{r['nDCG@10']:>8.4f} {r['Recall@100']:>7.4f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "bm25_speed", "dataset": "beir/scifact test", "k": args.k, "cores": os.cpu_count(),
              "python": platform.python_version(), "date": time.strftime("%Y-%m-%d"), "rows": rows}
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
