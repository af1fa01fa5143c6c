"""Time to add (and remove) 100 documents in a large BM25 index, against rebuilding it, in one run.

    python benchmarks/bm25_updates.py [--docs 1000000] [--batch 100] [--repeats 3]

The collection is synthetic: document lengths from a log-normal fitted to SciFact (median ~200 terms), terms
drawn from a Zipf law (s=1.1) over a 500k-term vocabulary; it is built straight into a term-count matrix
(no text), so only the index work is timed. Per repeat:

* ``add``: ``BM25Searcher.add(100 docs)`` (tokenising included): counts the new rows into a new segment
  (small segments merge with their neighbour);
* ``first search after add``: 100 queries; the statistics moved, so each query term's weights are recomputed
  over its postings (only the terms the queries use);
* ``search (steady)``: the same 100 queries again (against the same search before any update: the cost of
  extra segments and removed rows still held);
* ``remove`` + first search: the same for removing 100 random rows;
* ``rebuild all weights``: what v0.1 did inside every ``add``/``remove`` (and what the previous amortised
  version did at the first search after one): every weight of the collection recomputed.

It also checks that the updated index returns bit for bit what an index built fresh over its live documents
returns (same rows, same scores).
Writes ``benchmarks/out/bm25_updates.json`` with the CPU flags and load average.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from retrieval.dense.cpu import cpu_flags  # noqa: E402
from retrieval.sparse.scoring import BM25Config, BM25Index, term_weights  # noqa: E402
from retrieval.sparse.searcher import BM25Searcher  # noqa: E402
from retrieval.sparse.tokenize import Tokenizer, TokenizerConfig  # noqa: E402
from retrieval.types import Document  # noqa: E402
from retrieval.argtypes import at_least  # noqa: E402

FLAGS = {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8"}


def synthetic_counts(n_docs: int, vocab: int, seed: int) -> sp.csr_matrix:
    """A documents x terms count matrix: log-normal lengths, Zipf(1.1) terms."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(mean=5.2, sigma=0.45, size=n_docs), 8, 2000).astype(np.int64)
    ranks = np.arange(1, vocab + 1, dtype=np.float64)
    p = ranks ** -1.1
    p /= p.sum()
    rows = np.repeat(np.arange(n_docs, dtype=np.int64), lengths)
    terms = rng.choice(vocab, size=int(lengths.sum()), p=p)
    tf = sp.csr_matrix((np.ones(len(terms), dtype=np.int32), (rows, terms)), shape=(n_docs, vocab))
    tf.sum_duplicates()
    return tf


def synthetic_texts(n: int, vocab: int, seed: int) -> list[str]:
    """Short texts over the same term names (``t<id>``), for the documents that are added."""
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, vocab + 1, dtype=np.float64)
    p = ranks ** -1.1
    p /= p.sum()
    return [" ".join(f"t{t}" for t in rng.choice(vocab, size=int(rng.integers(50, 300)), p=p)) for _ in range(n)]


def timed(fn):
    tic = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - tic


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=at_least(1), default=1_000_000)
    ap.add_argument("--vocab", type=at_least(1), default=500_000)
    ap.add_argument("--batch", type=at_least(1), default=100)
    ap.add_argument("--repeats", type=at_least(1), default=3)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "bm25_updates.json"))
    args = ap.parse_args(argv)

    tf, build_s = timed(lambda: synthetic_counts(args.docs, args.vocab, seed=0))
    print(f"synthetic {args.docs:,} docs, {tf.nnz:,} postings in {build_s:.1f} s", flush=True)
    tokenizer = Tokenizer(TokenizerConfig(token_pattern=r"\w+", stopwords=None, stemmer=None),
                          allow_custom_pattern=True)
    vocab = {f"t{i}": i for i in range(args.vocab)}
    config = BM25Config()
    _, fresh_s = timed(lambda: term_weights(tf, config))
    searcher = BM25Searcher(BM25Index(tf, dict(vocab), config), tokenizer)
    queries = [" ".join(q.split()[:6]) for q in synthetic_texts(100, args.vocab, seed=1)]
    _, cold_s = timed(lambda: searcher.search(queries, 10))
    _, steady_fresh_s = timed(lambda: searcher.search(queries, 10))   # one segment, nothing removed
    rng = np.random.default_rng(2)
    rows: dict[str, list[float]] = {k: [] for k in ("add", "first_search_after_add", "search_steady", "remove",
                                                    "first_search_after_remove")}
    for r in range(args.repeats):
        docs = [Document(id=f"new{r}-{i}", text=t) for i, t in enumerate(synthetic_texts(args.batch, args.vocab, 10 + r))]
        rows["add"].append(timed(lambda: searcher.add(docs))[1])
        rows["first_search_after_add"].append(timed(lambda: searcher.search(queries, 10))[1])
        rows["search_steady"].append(timed(lambda: searcher.search(queries, 10))[1])
        drop = sorted(rng.choice(searcher.index.n_docs, size=args.batch, replace=False).tolist())
        rows["remove"].append(timed(lambda: searcher.remove(drop))[1])
        rows["first_search_after_remove"].append(timed(lambda: searcher.search(queries, 10))[1])
        print(f"repeat {r}: " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in rows.items()), flush=True)
    # exactness: the updated index against one built fresh from its live documents' counts
    fresh = BM25Index(searcher.index.tf, dict(searcher.index.vocab), config)
    got = searcher.search(queries, 100)
    want = fresh.search([tokenizer(q) for q in queries], 100)
    identical = all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(got, want))
    best = {k: min(v) for k, v in rows.items()}
    result = {
        "documents": args.docs, "vocab": args.vocab, "postings": int(tf.nnz), "batch": args.batch,
        "rebuild_all_weights_s": round(fresh_s, 3), "first_search_cold_s": round(cold_s, 3),
        "search_steady_before_updates_s": round(steady_fresh_s, 4),
        "segments_end": searcher.index.n_segments, "best_s": {k: round(v, 6) for k, v in best.items()},
        "all_s": rows,
        "rebuild_vs_add_plus_first_search": round(fresh_s / (best["add"] + best["first_search_after_add"]), 1),
        "results_equal_fresh_build": bool(identical),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "cpu_flags": sorted(cpu_flags() & FLAGS), "cpu_count": os.cpu_count(), "load_average_end": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python benchmarks/bm25_updates.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(json.dumps({k: result[k] for k in ("rebuild_all_weights_s", "first_search_cold_s",
                                             "search_steady_before_updates_s", "best_s",
                                             "rebuild_vs_add_plus_first_search", "results_equal_fresh_build",
                                             "segments_end", "peak_rss_gib")}, indent=2))
    return result


if __name__ == "__main__":
    main()
