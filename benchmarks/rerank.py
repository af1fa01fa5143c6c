"""Rerankers on BEIR SciFact: nDCG@10 of BM25 before/after reranking its top-N, and queries/s.

    python benchmarks/rerank.py --reranker cross-encoder:models/ce-scifact --depth 100
    python benchmarks/rerank.py --reranker llm-yesno:smollm2 --depth 20 --time-budget 600

With ``--time-budget`` (or ``--max-queries``) only a seeded random subset of queries is reranked; BM25 is
then scored on the same subset so the comparison stays fair. Each reranked run (and each interpolation) gets a
paired randomisation test of its per-query nDCG@10 against BM25's. ``--sub-depth 20`` with ``--depth 100`` also
scores BM25's top-20 from the same pass (exact for rerankers that score each passage on its own). Writes ``benchmarks/out/<name>.json`` and the
runs (TREC format) to ``benchmarks/out/<name>-runs/``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from retrieval.data import load_beir  # noqa: E402
from retrieval.datasets import data_dir  # noqa: E402
from retrieval.eval.metrics import evaluate, write_trec_run  # noqa: E402
from retrieval.rerank import describe, interpolate_first_stage, load_reranker, parse_option  # noqa: E402
from retrieval.retriever import Retriever  # noqa: E402
from retrieval.eval.significance import compare_runs  # noqa: E402
from retrieval.dense.cpu import cpu_flags  # noqa: E402

METRICS = ("nDCG@10", "Recall@10", "MRR@10")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(data_dir(default=REPO.parent / "shared" / "data")), help="data root or a BEIR folder")
    parser.add_argument("--dataset", default="beir/scifact")
    parser.add_argument("--split", default="test")
    parser.add_argument("--reranker", required=True, help="a load_reranker spec, e.g. cross-encoder:FOLDER")
    parser.add_argument("--option", action="append", default=[], help="reranker option KEY=VALUE (repeatable)")
    parser.add_argument("--depth", type=int, default=100, help="rerank BM25's top-N")
    parser.add_argument("--max-queries", type=int, default=None)
    parser.add_argument("--time-budget", type=float, default=None, help="stop reranking after this many seconds")
    parser.add_argument("--seed", type=int, default=0, help="order in which queries are reranked")
    parser.add_argument("--name", default=None, help="output name (default: from the reranker kind and depth)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "out"), help="output folder")
    parser.add_argument("--sub-depth", type=int, action="append", default=[],
                        help="also report BM25's top-N (N < --depth) from the same pass, for rerankers whose score of "
                             "a passage does not depend on the others (cross-encoder, pointwise, query likelihood)")
    parser.add_argument("--interpolate", type=float, action="append", default=[],
                        help="also score W*minmax(reranker)+(1-W)*minmax(BM25) from the same pass (repeatable)")
    return parser.parse_args(argv)


def metrics_of(qrels: dict, run: dict) -> dict:
    """The METRICS of one run, rounded to 4 decimals."""
    return {m: round(v, 4) for m, v in evaluate(qrels, run, k_values=(10,)).items() if m in METRICS}


def paired_tests(qrels: dict, runs: dict[str, dict], paired: bool) -> dict:
    """Each non-BM25 run's paired randomisation test against ``runs["bm25"]`` (none when ``paired`` is False)."""
    return {name: compare_runs(qrels, run, runs["bm25"]).to_dict()
            for name, run in runs.items() if name != "bm25" and paired}


def score_runs(qrels: dict, runs: dict[str, dict], paired: bool) -> dict:
    """METRICS of each run (``runs["bm25"]`` included) and each non-BM25 run's paired test against BM25."""
    return {name: metrics_of(qrels, run) for name, run in runs.items()} | {
        "vs_bm25_nDCG@10": paired_tests(qrels, runs, paired)}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    folder = Path(args.data) / args.dataset if (Path(args.data) / args.dataset).is_dir() else Path(args.data)
    dataset = load_beir(folder, args.split)
    qids = sorted(dataset.queries)
    random.Random(args.seed).shuffle(qids)
    if args.max_queries is not None:
        qids = qids[: args.max_queries]

    retriever = Retriever.from_documents(dataset.corpus_path, method="bm25", show_progress=False)
    first = retriever.retrieve_batch([dataset.queries[q] for q in qids], k=args.depth)
    options = dict(parse_option(o) for o in args.option)
    start = time.perf_counter()
    reranker = load_reranker(args.reranker, **options)
    load_seconds = time.perf_counter() - start

    if args.interpolate and "interpolate" in options:
        raise SystemExit("--interpolate sweeps need the reranker's raw scores: drop --option interpolate=...")
    if args.sub_depth and not getattr(reranker, "scores_each_passage", False):
        raise SystemExit(f"--sub-depth needs a reranker that scores each passage on its own; {args.reranker!r} "
                         "does not (a listwise window's order depends on all its passages): run each depth")
    if any(not 0 < n < args.depth for n in args.sub_depth):
        raise SystemExit(f"--sub-depth values must lie between 0 and --depth ({args.depth})")
    reranked, seconds = {}, 0.0
    fused: dict[float, dict] = {w: {} for w in args.interpolate}
    subs: dict[int, dict[str, dict]] = {n: {"bm25": {}, "reranked": {}, **{f"interpolate-{w}": {}
                                                                          for w in args.interpolate}}
                                         for n in args.sub_depth}
    for qid, hits in zip(qids, first):
        if args.time_budget is not None and seconds >= args.time_budget:
            break
        tic = time.perf_counter()
        out = reranker.rerank(dataset.queries[qid], hits)
        seconds += time.perf_counter() - tic
        assert sorted(h.id for h in out) == sorted(h.id for h in hits), "reranker lost or duplicated hits"
        reranked[qid] = {h.id: h.score for h in out}
        head = [h for h in out if h.extra.get("reranked")]
        for w in args.interpolate:
            fused[w][qid] = dict(zip((h.id for h in head), interpolate_first_stage([h.score for h in head], head, w)))
        by_id = {h.id: h for h in head}
        for n, runs_n in subs.items():   # the first-stage top-n, scored by the same pass
            if any(h.id not in by_id for h in hits[:n]):
                raise SystemExit(f"--sub-depth {n}: the reranker scored fewer passages (its depth option?)")
            top = [by_id[h.id] for h in hits[:n]]
            runs_n["bm25"][qid] = {h.id: h.score for h in hits[:n]}
            runs_n["reranked"][qid] = {h.id: h.score for h in top}
            for w in args.interpolate:
                runs_n[f"interpolate-{w}"][qid] = dict(zip((h.id for h in top),
                                                           interpolate_first_stage([h.score for h in top], top, w)))
    done = list(reranked)
    bm25_run = {q: {h.id: h.score for h in hits} for q, hits in zip(qids, first) if q in reranked}
    qrels = {q: dataset.qrels[q] for q in done}
    before = evaluate(qrels, bm25_run, k_values=(10, args.depth))
    after = evaluate(qrels, reranked, k_values=(10, args.depth))
    runs = {"bm25": bm25_run, "reranked": reranked, **{f"interpolate-{w}": fused[w] for w in args.interpolate}}
    significance = paired_tests(qrels, runs, paired=len(done) >= 2)
    result = {
        "dataset": args.dataset, "split": args.split, "reranker": args.reranker, "options": options,
        "settings": describe(reranker), "depth": args.depth, "queries": len(done), "of_queries": len(dataset.queries),
        "seconds": round(seconds, 1), "load_seconds": round(load_seconds, 1),
        "queries_per_s": round(len(done) / seconds, 4) if seconds else None,
        "bm25": {m: round(before[m], 4) for m in (*METRICS, f"Recall@{args.depth}")},
        "reranked": {m: round(after[m], 4) for m in (*METRICS, f"Recall@{args.depth}")},
        "interpolated": {str(w): metrics_of(qrels, fused[w]) for w in args.interpolate},
        "vs_bm25_nDCG@10": significance,
        "sub_depths": {str(n): score_runs(qrels, runs_n, paired=len(done) >= 2) for n, runs_n in subs.items()},
        # LLM rerankers: how the model answered (listwise: ids named; pointwise: mass on the answer tokens;
        # query likelihood: query tokens and their mean log-prob)
        "reply_stats": reranker.stats.to_dict() if hasattr(reranker, "stats") else None,
        "cpu_flags": sorted(cpu_flags() & {"avx2", "avx512f", "avx512_vnni", "amx_int8", "avx512_bf16"}),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "command": "python benchmarks/rerank.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%d"),
    }
    name = args.name or f"rerank-{args.reranker.split(':')[0]}-top{args.depth}"
    out = Path(args.out) / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    (out.parent / f"{name}-runs").mkdir(exist_ok=True)
    for run_name, run in runs.items():
        write_trec_run(run, out.parent / f"{name}-runs" / f"{run_name}.trec", tag=run_name)
    for n, runs_n in subs.items():
        for run_name, run in runs_n.items():
            write_trec_run(run, out.parent / f"{name}-runs" / f"top{n}-{run_name}.trec", tag=f"top{n}-{run_name}")
    print(f"{args.reranker} on BM25 top-{args.depth}, {len(done)}/{len(dataset.queries)} queries: "
          f"nDCG@10 {result['bm25']['nDCG@10']:.4f} -> {result['reranked']['nDCG@10']:.4f}, "
          f"{result['queries_per_s']} queries/s  ({out})")
    for w, metrics in result["interpolated"].items():
        print(f"  interpolate={w}: nDCG@10 {metrics['nDCG@10']:.4f}")
    for run_name, test in significance.items():
        print(f"  {run_name} vs BM25: mean diff {test['mean_diff']:+.4f}, randomisation p = {test['p_value']:.4f}")
    for n, block in result["sub_depths"].items():
        print(f"  BM25 top-{n} from the same pass: nDCG@10 {block['bm25']['nDCG@10']:.4f} -> "
              + ", ".join(f"{k} {v['nDCG@10']:.4f} (p {block['vs_bm25_nDCG@10'].get(k, {}).get('p_value', float('nan')):.4f})"
                          for k, v in block.items() if k not in ("bm25", "vs_bm25_nDCG@10")))
    if result["reply_stats"]:
        print(f"  replies: {result['reply_stats']}")
    return result


if __name__ == "__main__":
    main()
