"""Rerankers on BEIR SciFact: nDCG@10 of BM25 before/after reranking its top-N, and queries/s.

    python benchmarks/rerank.py --reranker cross-encoder:models/ce-scifact --depth 100
    python benchmarks/rerank.py --reranker llm-yesno:smollm2 --depth 20 --time-budget 600

With ``--time-budget`` (or ``--max-queries``) only a seeded random subset of queries is reranked; BM25 is
then scored on the same subset so the comparison stays fair. Each reranked run (and each interpolation) gets a
paired randomisation test of its per-query nDCG@10 against BM25's. ``--sub-depth 20`` with ``--depth 100`` also
scores BM25's top-20 from the same pass (exact for rerankers that score each passage on its own). Writes ``benchmarks/out/<name>.json`` and the
runs (TREC format) to ``benchmarks/out/<name>-runs/``.

Long runs survive a kill and spread over cores: each reranked query is appended (flushed, fsynced) to a journal in
``<name>-runs/``. ``--resume`` continues from the journals of the same ``--name`` (the settings must match), and
``--shard I/N`` reranks every N-th query only, so N processes can share the work::

    python benchmarks/rerank.py ... --name NAME --shard 0/2 &  python benchmarks/rerank.py ... --name NAME --shard 1/2
    python benchmarks/rerank.py ... --name NAME --resume        # merges both journals, reranks what is left, scores

A run that reranks every query writes the JSON and TREC files and deletes the journals; a run stopped by
``--time-budget`` keeps them. Without ``--resume`` a leftover journal is refused rather than overwritten.
``--score-only`` scores what the journals hold so far (a progress report while shards run): it loads no model,
reranks nothing, and BM25 is scored on the same queries.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from retrieval.data import load_beir  # noqa: E402
from retrieval.datasets import beir_folder, data_dir, seeded_order  # noqa: E402
from retrieval.eval.metrics import evaluate, write_trec_run  # noqa: E402
from retrieval.rerank import describe, interpolate_first_stage, load_reranker, parse_option  # noqa: E402
from retrieval.argtypes import at_least, positive_seconds, weight  # noqa: E402
from retrieval.rerank.llm.listwise import ListwiseStats  # noqa: E402
from retrieval.rerank.llm.pointwise import PointwiseStats  # noqa: E402
from retrieval.rerank.llm.query_likelihood import QueryLikelihoodStats  # noqa: E402
from retrieval.rerank.registry import reranker_class  # noqa: E402
from retrieval.retriever import Retriever  # noqa: E402
from retrieval.eval.significance import compare_runs  # noqa: E402
from retrieval.dense.cpu import cpu_flags  # noqa: E402
from retrieval.types import Hit  # noqa: E402

METRICS = ("nDCG@10", "Recall@10", "MRR@10")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(data_dir(default=REPO.parent / "shared" / "data")), help="data root or a BEIR folder")
    parser.add_argument("--dataset", default="beir/scifact")
    parser.add_argument("--split", default="test")
    parser.add_argument("--reranker", required=True, help="a load_reranker spec, e.g. cross-encoder:FOLDER")
    parser.add_argument("--option", action="append", default=[], help="reranker option KEY=VALUE (repeatable)")
    parser.add_argument("--depth", type=at_least(1), default=100, help="rerank BM25's top-N")
    parser.add_argument("--max-queries", type=at_least(1), default=None)
    parser.add_argument("--time-budget", type=positive_seconds, default=None,
                        help="stop reranking after this many seconds")
    parser.add_argument("--seed", type=int, default=0, help="order in which queries are reranked")
    parser.add_argument("--name", default=None, help="output name (default: from the reranker kind and depth)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "out"), help="output folder")
    parser.add_argument("--sub-depth", type=at_least(1), action="append", default=[],
                        help="also report BM25's top-N (N < --depth) from the same pass, for rerankers whose score of "
                             "a passage does not depend on the others (cross-encoder, pointwise, query likelihood)")
    parser.add_argument("--interpolate", type=weight, action="append", default=[],
                        help="also score W*minmax(reranker)+(1-W)*minmax(BM25) from the same pass (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue from this --name's journals")
    parser.add_argument("--score-only", action="store_true",
                        help="score the queries this --name's journals hold, rerank nothing (no model is loaded)")
    parser.add_argument("--shard", type=shard_of, default=None, metavar="I/N",
                        help="rerank only queries I, I+N, I+2N, ... of the seeded order into a journal of its own, "
                             "for another process to merge with --resume")
    return parser.parse_args(argv)


def shard_of(text: str) -> tuple[int, int]:
    """``"I/N"`` as ``(I, N)`` with ``0 <= I < N``."""
    i, _, n = text.partition("/")
    try:
        index, count = int(i), int(n)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N such as 0/2, got {text!r}") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"shard {text!r}: need 0 <= I < N")
    return index, count


JOURNAL_VERSION = 1
JOURNAL_CONFIG = ("dataset", "split", "reranker", "option", "depth", "max_queries", "seed")


def journal_config(args: argparse.Namespace) -> dict:
    """What must match for journals to be merged: the settings that decide the reranked lists."""
    return {key: getattr(args, key) for key in JOURNAL_CONFIG}


def journal_paths(folder: Path) -> list[Path]:
    """The journals in a run folder: ``journal.jsonl`` and the shards' ``journal.shard-I-of-N.jsonl``."""
    return sorted(folder.glob("journal*.jsonl"))


def read_journal(path: Path, config: dict) -> tuple[dict, dict[str, dict]]:
    """A journal's header and its rows by query id. A torn last line (a kill mid-write) is dropped; anything else
    malformed, or settings that differ from ``config``, stops with the file, line and field."""
    lines = path.read_bytes().split(b"\n")
    complete = lines[:-1]   # the part after the last newline is empty, or a line torn by a kill
    rows: dict[str, dict] = {}
    header: dict = {}       # stays empty for a journal killed before its header was whole (it holds no query)
    for n, raw in enumerate(complete, start=1):
        try:
            row = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SystemExit(f"{path}, line {n}: not JSON ({exc}); delete the journal to rerun its queries") from None
        if n == 1:
            if not isinstance(row, dict) or row.get("journal") != JOURNAL_VERSION or not isinstance(row.get("config"), dict):
                raise SystemExit(f"{path}, line 1: not a version-{JOURNAL_VERSION} rerank journal header")
            theirs = row["config"]
            differ = [f"{k} {theirs.get(k)!r} there, {config.get(k)!r} here"
                      for k in sorted(set(theirs) | set(config)) if theirs.get(k) != config.get(k)]
            if differ:
                raise SystemExit(f"{path}: written with other settings ({'; '.join(differ)}); "
                                 "use another --name, or the same settings")
            header = row
            continue
        hits = row.get("hits") if isinstance(row, dict) else None
        if not (isinstance(row, dict) and isinstance(row.get("qid"), str) and isinstance(row.get("seconds"), (int, float))
                and isinstance(hits, list) and all(isinstance(h, list) and len(h) == 4 and isinstance(h[0], str)
                                                   and all(isinstance(x, (int, float)) for x in h[1:3])
                                                   and isinstance(h[3], bool) for h in hits)):
            raise SystemExit(f"{path}, line {n}: expected {{qid, seconds, hits: [[id, score, first_stage_score, "
                             "reranked], ...]}}; delete the journal to rerun its queries")
        if "replies" in row:
            try:
                REPLY_STATS[row["replies"]["kind"]].from_state(row["replies"])
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise SystemExit(f"{path}, line {n}: unreadable reply counts 'replies' ({type(exc).__name__}: {exc}); "
                                 "delete the journal to rerun its queries") from None
        rows[row["qid"]] = row
    return header, rows


class Journal:
    """Appends one JSON line per reranked query, flushed and fsynced, so a kill loses at most the query in flight."""

    def __init__(self, path: Path, header: dict) -> None:
        if path.exists():   # cut a line torn by a kill before appending after it
            data = path.read_bytes()
            with open(path, "r+b") as fh:
                fh.truncate(data.rfind(b"\n") + 1)
        self.fh = open(path, "a", encoding="utf-8")
        if self.fh.tell() == 0:
            self.write(header)

    def write(self, row: dict) -> None:
        self.fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        self.fh.close()


def journal_row(qid: str, seconds: float, out: list) -> dict:
    """One query's reranked list as a journal line."""
    return {"qid": qid, "seconds": round(seconds, 4),
            "hits": [[h.id, float(h.score), float(h.extra.get("first_stage_score", h.score)),
                      bool(h.extra.get("reranked"))] for h in out]}


REPLY_STATS = {"pointwise": PointwiseStats, "listwise": ListwiseStats, "query-likelihood": QueryLikelihoodStats}


def merged_reply_stats(rows: list[dict]) -> dict | None:
    """The LLM reply counts summed over the journal rows that carry them, whichever process reranked each query;
    ``queries`` says how many did (rows of an older journal carry none). None for rerankers that keep no counts."""
    states = [row["replies"] for row in rows if "replies" in row]
    if not states:
        return None
    total = REPLY_STATS[states[0]["kind"]].from_state(states[0])
    for state in states[1:]:
        total.merge(state)
    return total.to_dict() | {"queries": len(states), "of_queries": len(rows)}


def hits_of(row: dict) -> list:
    """A journal line's reranked list as hits, as the reranker returned them."""
    return [Hit(doc, score, rank=rank, extra={"first_stage_score": first, "reranked": reranked})
            for rank, (doc, score, first, reranked) in enumerate(row["hits"], start=1)]


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
    folder = beir_folder(args.data, args.dataset)
    dataset = load_beir(folder, args.split)
    qids = seeded_order(dataset.queries, args.seed)
    if args.max_queries is not None:
        qids = qids[: args.max_queries]
    options = dict(parse_option(o) for o in args.option)
    if args.interpolate and "interpolate" in options:
        raise SystemExit("--interpolate sweeps need the reranker's raw scores: drop --option interpolate=...")
    if any(not 0 < n < args.depth for n in args.sub_depth):
        raise SystemExit(f"--sub-depth values must lie between 0 and --depth ({args.depth})")

    name = args.name or f"rerank-{args.reranker.split(':')[0]}-top{args.depth}"
    runs_folder = Path(args.out) / f"{name}-runs"
    config = journal_config(args)
    journals = journal_paths(runs_folder)
    own = runs_folder / (f"journal.shard-{args.shard[0]}-of-{args.shard[1]}.jsonl" if args.shard else "journal.jsonl")
    clash = [p for p in journals if p == own or not args.shard]   # other shards' journals may be written meanwhile
    if args.score_only and args.shard:
        raise SystemExit("--score-only scores every journal of --name: drop --shard")
    if clash and not args.resume and not args.score_only:
        raise SystemExit(f"{runs_folder} holds the journal of an unfinished run ({clash[0].name}): pass --resume "
                         "to continue it, or choose another --name")
    headers, rows = [], {}
    for path in journals:
        header, found = read_journal(path, config)
        headers.append(header)
        rows.update(found)
    mine = qids[args.shard[0]::args.shard[1]] if args.shard else qids
    todo = [] if args.score_only else [q for q in mine if q not in rows]
    if args.score_only and not any(q in rows for q in qids):
        raise SystemExit(f"--score-only: no journaled query of this run in {runs_folder}")

    retriever = Retriever.from_documents(dataset.corpus_path, method="bm25", show_progress=False)
    first = dict(zip(qids, retriever.retrieve_batch([dataset.queries[q] for q in qids], k=args.depth)))
    if args.sub_depth and not getattr(reranker_class(args.reranker), "scores_each_passage", False):
        raise SystemExit(f"--sub-depth needs a reranker that scores each passage on its own; {args.reranker!r} "
                         "does not (a listwise window's order depends on all its passages): run each depth")
    settings = next((h["settings"] for h in headers if h), None)
    reranker, load_seconds, seconds = None, 0.0, 0.0
    here: list[str] = []
    if todo:
        start = time.perf_counter()
        reranker = load_reranker(args.reranker, **options)
        load_seconds, settings = time.perf_counter() - start, describe(reranker)
        runs_folder.mkdir(parents=True, exist_ok=True)
        journal = Journal(own, {"journal": JOURNAL_VERSION, "config": config, "settings": settings})
        blank = copy.deepcopy(getattr(reranker, "stats", None))   # reply counts start afresh for each query
        try:
            for qid in todo:
                if args.time_budget is not None and seconds >= args.time_budget:
                    break
                if blank is not None:
                    reranker.stats = copy.deepcopy(blank)
                tic = time.perf_counter()
                out = reranker.rerank(dataset.queries[qid], first[qid])
                took = time.perf_counter() - tic
                seconds += took
                assert sorted(h.id for h in out) == sorted(h.id for h in first[qid]), "reranker lost or duplicated hits"
                rows[qid] = journal_row(qid, took, out)
                if blank is not None:
                    rows[qid]["replies"] = reranker.stats.state()
                journal.write(rows[qid])
                here.append(qid)
        finally:
            journal.close()
    if args.shard:
        left = [q for q in mine if q not in rows]
        print(f"shard {args.shard[0]}/{args.shard[1]}: {len(mine) - len(left)} of its {len(mine)} queries in "
              f"{runs_folder}; merge with --resume and no --shard")
        return {"shard": list(args.shard), "queries": len(mine) - len(left), "of_queries": len(mine)}

    reranked: dict[str, dict] = {}
    fused: dict[float, dict] = {w: {} for w in args.interpolate}
    subs: dict[int, dict[str, dict]] = {n: {"bm25": {}, "reranked": {}, **{f"interpolate-{w}": {}
                                                                          for w in args.interpolate}}
                                         for n in args.sub_depth}
    for qid in (q for q in qids if q in rows):   # the seeded order, whichever process reranked each query
        hits, out = first[qid], hits_of(rows[qid])
        if sorted(h.id for h in out) != sorted(h.id for h in hits):
            raise SystemExit(f"{runs_folder}: the journaled ranking of query {qid!r} is not a reordering of BM25's "
                             f"top-{args.depth} here (another corpus?); delete the journals to rerun")
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
    total_seconds = sum(rows[q]["seconds"] for q in reranked)
    done = list(reranked)
    bm25_run = {q: {h.id: h.score for h in first[q]} for q in done}
    qrels = {q: dataset.qrels[q] for q in done}
    before = evaluate(qrels, bm25_run, k_values=(10, args.depth))
    after = evaluate(qrels, reranked, k_values=(10, args.depth))
    runs = {"bm25": bm25_run, "reranked": reranked, **{f"interpolate-{w}": fused[w] for w in args.interpolate}}
    significance = paired_tests(qrels, runs, paired=len(done) >= 2)
    result = {
        "dataset": args.dataset, "split": args.split, "reranker": args.reranker, "options": options,
        "settings": settings, "depth": args.depth, "queries": len(done), "of_queries": len(dataset.queries),
        # seconds: summed over the queries of every process that wrote a journal (a shard's own core each)
        "seconds": round(total_seconds, 4), "load_seconds": round(load_seconds, 1),
        "queries_per_s": round(len(done) / total_seconds, 4) if total_seconds else None,
        # the median is robust to a query that spans a pause (a process stopped with SIGSTOP counts wall time);
        # seconds and median keep 4 decimals, so a fast reranker's median is not rounded to 0 nor above the sum
        "median_seconds_per_query": round(statistics.median(rows[q]["seconds"] for q in reranked), 4)
        if reranked else None,
        "reranked_here": len(here), "from_journals": len(done) - len(here),
        "bm25": {m: round(before[m], 4) for m in (*METRICS, f"Recall@{args.depth}")},
        "reranked": {m: round(after[m], 4) for m in (*METRICS, f"Recall@{args.depth}")},
        "interpolated": {str(w): metrics_of(qrels, fused[w]) for w in args.interpolate},
        "vs_bm25_nDCG@10": significance,
        "sub_depths": {str(n): score_runs(qrels, runs_n, paired=len(done) >= 2) for n, runs_n in subs.items()},
        # LLM rerankers: how the model answered (listwise: ids named; pointwise: mass on the answer tokens;
        # query likelihood: query tokens and their mean log-prob), summed over the journal rows of every process
        "reply_stats": merged_reply_stats([rows[q] for q in done]),
        "cpu_flags": sorted(cpu_flags() & {"avx2", "avx512f", "avx512_vnni", "amx_int8", "avx512_bf16"}),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "command": "python benchmarks/rerank.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%d"),
    }
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
    if len(done) == len(qids):   # finished: the JSON and TREC files are the record now
        for path in journal_paths(runs_folder):
            path.unlink()
    else:
        print(f"  {len(qids) - len(done)} queries left: rerun with --resume to continue")
    return result


if __name__ == "__main__":
    main()
