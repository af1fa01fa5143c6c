"""The public API against its own search core and against bm25s, at k=10 and k=100, in one process and one run.

Measures queries/s on BEIR SciFact test (300 queries) for:
  core         ``retriever.searcher.search(texts, k)`` (tokenize + sparse product + top-k)
  batch        ``retriever.retrieve_batch(texts, k)`` (hits built and texts read only when used)
  batch+ids    the same, then every hit's ``id`` and ``score`` read (Hit objects built)
  batch+text   the same, then every hit's ``text`` read (JSON of each document parsed)
  run          ``retriever.run(queries, k)`` (what evaluation uses)
  bm25s        bm25s tokenize + retrieve (the peer)
Repeats alternate between systems; each row is the best of ``--repeats``. Prints a table and writes JSON.

    python benchmarks/api_overhead.py [--data ../shared/data] [--repeats 7]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def cpu_flags() -> list[str]:
    """The SIMD flags that matter for speed rows (AVX2, AVX-512 parts, AMX)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return []
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
    return [f for f in wanted if f in flags.split()]


def systems(retriever, bm25s_model, stemmer, queries: list[str], qmap: dict[str, str], k: int) -> dict:
    import bm25s

    def core():
        retriever.searcher.search(queries, k)

    def batch():
        retriever.retrieve_batch(queries, k)

    def batch_ids():
        for hits in retriever.retrieve_batch(queries, k):
            for h in hits:
                h.id, h.score

    def batch_text():
        for hits in retriever.retrieve_batch(queries, k):
            for h in hits:
                h.text

    def run():
        retriever.run(qmap, k)

    def peer():
        tokens = bm25s.tokenize(queries, stopwords="en", stemmer=stemmer, show_progress=False)
        bm25s_model.retrieve(tokens, k=k, show_progress=False, n_threads=os.cpu_count() or 1)

    return {"core": core, "batch": batch, "batch+ids": batch_ids, "batch+text": batch_text, "run": run,
            "bm25s": peer}


def main() -> None:
    from retrieval.argtypes import at_least
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("RETRIEVEKIT_DATA",
                    REPO.parent / "shared" / "data")))
    ap.add_argument("--repeats", type=at_least(1), default=7)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "api_overhead.json")
    args = ap.parse_args()

    import bm25s
    import Stemmer

    from retrieval import Retriever, load_beir

    data = load_beir(args.data / "beir" / "scifact", "test")
    docs = list(data.corpus())
    qmap = dict(data.queries)
    queries = list(qmap.values())
    folder = REPO / "benchmarks" / "out" / "api_overhead_index"
    Retriever.from_documents(docs, show_progress=False).save(folder)
    retriever = Retriever.load(folder)  # texts memory-mapped, as a user's saved index
    stemmer = Stemmer.Stemmer("english")
    model = bm25s.BM25()
    model.index(bm25s.tokenize([d.full_text for d in docs], stopwords="en", stemmer=stemmer, show_progress=False),
                show_progress=False)
    rows = []
    for k in (10, 100):
        fns = systems(retriever, model, stemmer, queries, qmap, k)
        best = {name: float("inf") for name in fns}
        for _ in range(args.repeats):
            for name, fn in fns.items():
                t = time.perf_counter()
                fn()
                best[name] = min(best[name], time.perf_counter() - t)
        for name, seconds in best.items():
            qps = len(queries) / seconds
            rows.append({"k": k, "system": name, "qps": qps, "of_core": best["core"] / seconds,
                         "over_bm25s": best["bm25s"] / seconds})
    flags = cpu_flags()
    print(f"SciFact test, {len(queries)} queries, {len(docs)} docs, {os.cpu_count()} cores, flags: {' '.join(flags)}")
    print(f"{'k':>4} {'system':<11} {'q/s':>9} {'of core':>8} {'x bm25s':>8}")
    for r in rows:
        print(f"{r['k']:>4} {r['system']:<11} {r['qps']:>9.0f} {r['of_core']:>8.2f} {r['over_bm25s']:>8.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "api_overhead", "cpu_flags": flags, "cores": os.cpu_count(),
                                    "cpu": platform.processor() or platform.machine(), "repeats": args.repeats,
                                    "date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
