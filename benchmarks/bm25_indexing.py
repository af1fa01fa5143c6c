"""BM25 indexing throughput (documents/s): retrievekit in 1 and N tokenizer processes against bm25s, same run.

    python benchmarks/bm25_indexing.py [--data ../shared/data] [--copies 10] [--workers 2] [--repeats 3]

The collection is BEIR SciFact's corpus repeated ``--copies`` times (each copy's ids suffixed; 5,183 documents
a copy), so the vocabulary stays realistic while the size grows. Every system indexes from the same list of
texts in memory, tokenisation included: bm25s is ``bm25s.tokenize(texts, stopwords="en", stemmer=english)`` then
``BM25().index(...)`` (its recommended recipe, whose tokens ours equal); retrievekit is
``BM25Searcher.build(docs, index_workers=W)``. Systems alternate within each repeat (machine load hits them alike);
the best of ``--repeats`` is reported. The two retrievekit builds are checked to give identical matrices.
Writes ``benchmarks/out/bm25_indexing.json`` with the CPU flags and load average.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from retrieval.data import iter_documents  # noqa: E402
from retrieval.datasets import data_dir  # noqa: E402
from retrieval.dense.cpu import cpu_flags  # noqa: E402
from retrieval.sparse.searcher import BM25Searcher  # noqa: E402
from retrieval.types import Document  # noqa: E402
from retrieval.argtypes import at_least  # noqa: E402

FLAGS = {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(data_dir(default=REPO.parent / "shared" / "data")))
    ap.add_argument("--copies", type=at_least(1), default=10)
    ap.add_argument("--workers", type=at_least(1), default=os.cpu_count() or 1)
    ap.add_argument("--repeats", type=at_least(1), default=3)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "bm25_indexing.json"))
    return ap.parse_args(argv)


def collection(data: str, copies: int) -> list[Document]:
    base = list(iter_documents(Path(data) / "beir" / "scifact"))
    return [Document(id=f"{d.id}#{c}", text=d.text, title=d.title) for c in range(copies) for d in base]


def timed(fn):
    tic = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - tic


def build_bm25s(texts: list[str]):
    import bm25s
    import Stemmer

    tokens = bm25s.tokenize(texts, stopwords="en", stemmer=Stemmer.Stemmer("english"), show_progress=False)
    model = bm25s.BM25()
    model.index(tokens, show_progress=False)
    return model


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    docs = collection(args.data, args.copies)
    texts = [d.full_text for d in docs]
    def ours(workers: int) -> BM25Searcher:   # weights computed too, as bm25s's index() computes its scores
        searcher = BM25Searcher.build(docs, show_progress=False, index_workers=workers)
        searcher.index.prepare()
        return searcher

    systems = {"retrievekit 1 process": lambda: ours(1),
               f"retrievekit {args.workers} processes": lambda: ours(args.workers),
               "bm25s": lambda: build_bm25s(texts)}
    seconds: dict[str, list[float]] = {name: [] for name in systems}
    built = {}
    for r in range(args.repeats):
        names = list(systems)
        for name in names[r % len(names):] + names[:r % len(names)]:
            built[name], s = timed(systems[name])
            seconds[name].append(s)
            print(f"repeat {r}: {name}: {s:.2f} s", flush=True)
    one, many = built["retrievekit 1 process"].index, built[f"retrievekit {args.workers} processes"].index
    identical = (one.vocab == many.vocab and list(one.vocab) == list(many.vocab)
                 and (one.tf != many.tf).nnz == 0 and one.tf.shape == many.tf.shape)
    best = {name: min(v) for name, v in seconds.items()}
    result = {
        "documents": len(docs), "copies": args.copies, "workers": args.workers, "identical_index": bool(identical),
        "seconds_best": {k: round(v, 3) for k, v in best.items()},
        "docs_per_s": {k: round(len(docs) / v) for k, v in best.items()},
        "ratio_vs_bm25s": {k: round(best["bm25s"] / v, 2) for k, v in best.items()},
        "seconds_all": seconds, "cpu_flags": sorted(cpu_flags() & FLAGS), "cpu_count": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(), "load_average_end": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python benchmarks/bm25_indexing.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"{'system':<26}{'best s':>10}{'docs/s':>10}{'x bm25s':>9}")
    for name in systems:
        print(f"{name:<26}{best[name]:>10.2f}{result['docs_per_s'][name]:>10}{result['ratio_vs_bm25s'][name]:>9}")
    print(f"identical index: {identical}; CPU flags {result['cpu_flags']}; load {result['load_average_end']}")
    return result


if __name__ == "__main__":
    main()
