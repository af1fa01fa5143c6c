"""Cost against collection size: BM25 (ours vs bm25s) and FAISS indexes (ours vs plain FAISS), 10k to 1M docs.

    python benchmarks/scale_curves.py [--sizes 10000,100000,1000000] [--queries 200] [--dim 384]

Every (system, size) runs in its own child process, so its peak RSS is its own. Collections are synthetic:

* BM25: documents of pseudo-words (``w<base-36 id>``) drawn from a Zipf law (s=1.07) over a 2M-word
  vocabulary, lengths log-normal around SciFact's (median ~120 words); queries are 2-6 words drawn the same
  way from the top 200k words. Both systems index the same texts from memory, tokenisation included
  (ours: ``BM25Searcher.build``; bm25s: ``bm25s.tokenize`` + ``BM25().index``, its recipe).
* FAISS: random unit vectors (dimension ``--dim``); queries are other random unit vectors. Ours goes through
  ``DenseSearcher.from_embeddings`` / ``search_vectors``; the peer builds the same factory string with plain
  ``faiss``. Recall@10 of HNSW and IVF-PQ is against exact (Flat) search, at several search settings.

Per row: build seconds, peak RSS, bytes per document of the saved index (``--no-save`` skips it), batch
queries/s (k=10) and one-query p50/p99 latency. Writes ``benchmarks/out/scale_curves.json`` and a log-log
``benchmarks/out/scale_curves.png`` (build time, RSS and queries/s against size).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

FLAGS = {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8"}
BM25_SYSTEMS = ("bm25-retrievekit", "bm25-bm25s")
FAISS_SYSTEMS = ("flat-retrievekit", "flat-faiss", "hnsw-retrievekit", "hnsw-faiss", "ivfpq-retrievekit",
                 "ivfpq-faiss")
HNSW_EF = (16, 64, 128)
IVF_NPROBE = (8, 32, 128)


def _zipf_ids(rng: np.random.Generator, n: int, vocab: int, s: float = 1.07) -> np.ndarray:
    ranks = np.arange(1, vocab + 1, dtype=np.float64)
    cdf = np.cumsum(ranks ** -s)
    return np.searchsorted(cdf, rng.random(n) * cdf[-1]).astype(np.int64)


def _word(i: int) -> str:
    return "w" + np.base_repr(int(i), 36).lower()


def bm25_texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(mean=4.8, sigma=0.45, size=n), 5, 1000).astype(np.int64)
    ids = _zipf_ids(rng, int(lengths.sum()), 2_000_000)
    words = {}
    out, start = [], 0
    for length in lengths:
        chunk = ids[start:start + length]
        start += length
        out.append(" ".join(words.get(i) or words.setdefault(i, _word(i)) for i in chunk.tolist()))
    return out


def bm25_queries(n: int, seed: int = 1) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(_word(i) for i in _zipf_ids(rng, int(rng.integers(2, 7)), 200_000)) for _ in range(n)]


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _latency(one, queries) -> tuple[float, float]:
    one(queries[0])
    times = []
    for q in queries:
        tic = time.perf_counter()
        one(q)
        times.append((time.perf_counter() - tic) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def _dir_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def measure_bm25(system: str, n: int, n_queries: int, save: bool) -> dict:
    texts, queries = bm25_texts(n), bm25_queries(n_queries)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if system == "bm25-retrievekit":
        from retrieval.sparse.searcher import BM25Searcher
        from retrieval.types import Document

        docs = [Document(id=str(i), text=t) for i, t in enumerate(texts)]
        tic = time.perf_counter()
        index = BM25Searcher.build(docs, show_progress=False)
        index.index.prepare()   # every weight computed, as bm25s does at indexing
        build = time.perf_counter() - tic
        batch = lambda qs: index.search(qs, 10)  # noqa: E731
        one = lambda q: index.search([q], 10)  # noqa: E731
        saver = lambda folder: index.save(folder)  # noqa: E731
    else:
        import bm25s
        import Stemmer

        stemmer = Stemmer.Stemmer("english")
        tic = time.perf_counter()
        tokens = bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=False)
        index = bm25s.BM25()
        index.index(tokens, show_progress=False)
        build = time.perf_counter() - tic

        def batch(qs):
            q = bm25s.tokenize(qs, stopwords="en", stemmer=stemmer, show_progress=False)
            return index.retrieve(q, k=10, show_progress=False, n_threads=os.cpu_count() or 1)

        one = lambda q: batch([q])  # noqa: E731
        saver = lambda folder: index.save(str(folder))  # noqa: E731
    batch(queries[:20])   # warm-up, as for FAISS
    tic = time.perf_counter()
    batch(queries)
    qps = len(queries) / (time.perf_counter() - tic)
    p50, p99 = _latency(one, queries[:100])
    row = {"build_s": build, "queries_per_s": qps, "p50_ms": p50, "p99_ms": p99}
    if save:
        folder = Path(tempfile.mkdtemp(prefix="scale-"))
        try:
            saver(folder / "index")
            row["bytes_per_doc"] = _dir_bytes(folder) / n
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    row["rss_growth_mib"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    return row


FACTORIES = {"flat": lambda n, dim: "Flat", "hnsw": lambda n, dim: "HNSW32,Flat",
             "ivfpq": lambda n, dim: f"IVF{max(1, int(4 * np.sqrt(n)))},PQ{dim // 8}x8np"}
# "np" skips PQ's polysemous training (minutes of annealing that only Hamming-filtered search uses), as the
# library's own index="ivfpq" does; both sides build the same factory string.


def measure_faiss(system: str, n: int, n_queries: int, dim: int, save: bool) -> dict:
    import faiss

    kind, who = system.split("-")
    vectors, queries = unit_vectors(n, dim, seed=0), unit_vectors(n_queries, dim, seed=1)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    factory = FACTORIES[kind](n, dim)
    tic = time.perf_counter()
    if who == "retrievekit":
        from retrieval.dense.index import IndexConfig
        from retrieval.dense.searcher import DenseSearcher

        class _Dim:   # search_vectors needs no encoder; from_embeddings reads only .dim
            dim = vectors.shape[1]

        config = IndexConfig(name=kind, factory=factory, ef_construction=40 if kind == "hnsw" else None)
        searcher = DenseSearcher.from_embeddings([str(i) for i in range(n)], vectors, _Dim(), index=config)
        index = searcher.index

        def search(q: np.ndarray, k: int):
            return searcher.search_vectors(q, k)
    else:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        if kind == "hnsw":
            index.hnsw.efConstruction = 40
        if not index.is_trained:
            index.train(vectors)     # all vectors, as ours does (FAISS samples 256 per list itself)
        index.add(vectors)

        def search(q: np.ndarray, k: int):
            return index.search(q, k)
    build = time.perf_counter() - tic
    row: dict = {"factory": factory, "build_s": build}
    settings = {"hnsw": HNSW_EF, "ivfpq": IVF_NPROBE}.get(kind, (None,))
    exact = None
    if kind != "flat":
        flat = faiss.IndexFlatIP(dim)
        flat.add(vectors)
        exact = flat.search(queries, 10)[1]
    for setting in settings:
        if setting is not None and who == "retrievekit":
            from dataclasses import replace

            from retrieval.dense.index import set_search_params

            knob = {"ef_search": setting} if kind == "hnsw" else {"nprobe": setting}
            searcher.config = replace(searcher.config, **knob)
            set_search_params(searcher.index, searcher.config)
        elif kind == "hnsw":
            faiss.downcast_index(index).hnsw.efSearch = setting
        elif kind == "ivfpq":
            faiss.extract_index_ivf(index).nprobe = setting
        search(queries[:20], 10)      # warm-up: the first calls after a setting changes pay one-off costs
        tic = time.perf_counter()
        result = search(queries, 10)
        qps = len(queries) / (time.perf_counter() - tic)
        p50, p99 = _latency(lambda q: search(q[None, :], 10), queries[:100])
        key = "" if setting is None else f"@{'ef' if kind == 'hnsw' else 'nprobe'}{setting}"
        row[f"queries_per_s{key}"], row[f"p50_ms{key}"], row[f"p99_ms{key}"] = qps, p50, p99
        if exact is not None:
            ids = [rows for rows, _ in result] if who == "retrievekit" else result[1]
            row[f"recall@10{key}"] = float(np.mean([len(set(np.asarray(a)[:10].tolist()) & set(b.tolist())) / 10
                                                    for a, b in zip(ids, exact)]))
    if save:
        with tempfile.NamedTemporaryFile(suffix=".faiss") as tmp:
            faiss.write_index(faiss.downcast_index(index) if who == "faiss" else index, tmp.name)
            row["bytes_per_doc"] = os.path.getsize(tmp.name) / n
    row["rss_growth_mib"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    return row


def child(args: argparse.Namespace) -> None:
    system, n = args.one.split(":")
    n = int(n)
    if system in BM25_SYSTEMS:
        row = measure_bm25(system, n, args.queries, not args.no_save)
    else:
        row = measure_faiss(system, n, args.queries, args.dim, not args.no_save)
    row["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(row), flush=True)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(20, 4.5))
    for (metric, title), ax in zip((("build_s", "build seconds"), ("peak_rss_mib", "peak RSS (MiB)"),
                                    ("queries_per_s", "queries/s (batch, k=10)"),
                                    ("p50_ms", "one-query p50 latency (ms)")), axes):
        for system in dict.fromkeys(r["system"] for r in rows):
            points = sorted((r["docs"], r.get(metric) or r.get(f"{metric}@ef64") or r.get(f"{metric}@nprobe32"))
                            for r in rows if r["system"] == system)
            points = [(x, y) for x, y in points if y]
            if points:
                ax.plot(*zip(*points), marker="o", label=system)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("documents")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> dict | None:
    from retrieval.argtypes import at_least
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--systems", default=",".join(BM25_SYSTEMS + FAISS_SYSTEMS))
    ap.add_argument("--queries", type=at_least(1), default=200)
    ap.add_argument("--dim", type=at_least(1), default=384)
    ap.add_argument("--no-save", action="store_true", help="skip bytes per document (saving the index)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "scale_curves.json"))
    ap.add_argument("--plot-from", nargs="+", type=Path, default=None,
                    help="only draw the PNG (next to --out) from the rows of these result files, e.g. one per size")
    ap.add_argument("--one", help=argparse.SUPPRESS)   # SYSTEM:SIZE, run in a child process
    args = ap.parse_args(argv)
    if args.one:
        child(args)
        return None
    if args.plot_from:
        rows = [row for path in args.plot_from for row in json.loads(path.read_text(encoding="utf-8"))["rows"]]
        plot(rows, Path(args.out).with_suffix(".png"))
        return None
    from retrieval.dense.cpu import cpu_flags

    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        for system in args.systems.split(","):
            cmd = [sys.executable, __file__, "--one", f"{system}:{n}", "--queries", str(args.queries),
                   "--dim", str(args.dim)] + (["--no-save"] if args.no_save else [])
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                raise SystemExit(f"{system} at {n:,} docs failed:\n{proc.stderr[-3000:]}")
            row = {"system": system, "docs": n, **json.loads(line[len("RESULT "):]),
                   "load_average_1min": round(os.getloadavg()[0], 2)}   # other work on the machine, per row
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {"rows": rows, "cpu_flags": sorted(cpu_flags() & FLAGS), "cpu_count": os.cpu_count(),
              "load_average_end": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "command": "python benchmarks/scale_curves.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    plot(rows, out.with_suffix(".png"))
    return result


if __name__ == "__main__":
    main()
