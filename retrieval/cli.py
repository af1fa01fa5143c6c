"""The ``retrieval`` command: index, search, eval, demo (and train / benchmark when installed).

Only this module prints; library code logs. Bad input exits with status 2 and a one-line message.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from retrieval.data import DataError, load_beir
from retrieval.errors import IndexFormatError, MissingDependency
from retrieval.eval.metrics import evaluate, format_metrics, write_json_run, write_trec_run
from retrieval.retriever import METHODS, Retriever
from retrieval.types import Hit

USER_ERRORS = (DataError, IndexFormatError, MissingDependency, OSError, KeyError, ValueError)
# Extra sub-commands living next to the code they drive: (module, function adding the sub-parser).
PLUGINS = (("training.cli", "add_train_command"), ("retrieval.bench.report", "add_benchmark_command"))


def _build_options(args: argparse.Namespace) -> dict[str, Any]:
    """First-stage build options from the flags that were given (unset flags keep library defaults)."""
    names = ["tokenizer", "variant", "k1", "b", "model", "index", "batch_size", "max_seq_length", "nprobe",
             "ef_search", "backend", "fusion", "weight", "rrf_k", "depth"]
    opts = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    for flag in ("int8", "bf16"):
        if getattr(args, flag, False):
            opts[flag] = True
    if args.method == "bm25":
        opts = {k: v for k, v in opts.items() if k in ("tokenizer", "variant", "k1", "b")}
    elif args.method == "dense":
        hybrid_only = ("tokenizer", "variant", "k1", "b", "fusion", "weight", "rrf_k", "depth")
        opts = {k: v for k, v in opts.items() if k not in hybrid_only}
    return opts


def _add_build_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", choices=sorted(METHODS), default="bm25", help="first stage (default: bm25)")
    g = p.add_argument_group("BM25")
    g.add_argument("--tokenizer", choices=["default", "plain", "nostem"], help="tokenizer preset")
    g.add_argument("--variant", choices=["lucene", "okapi", "robertson", "atire"], help="BM25 variant")
    g.add_argument("--k1", type=float)
    g.add_argument("--b", type=float)
    g = p.add_argument_group("dense / hybrid")
    g.add_argument("--model", help="bi-encoder: alias (minilm), local folder or hub name")
    g.add_argument("--index", help="FAISS index: flat, hnsw, ivf, ivfpq, auto or a factory string")
    g.add_argument("--int8", action="store_true", help="int8 CPU fast path for encoding")
    g.add_argument("--backend", "--int8-backend", dest="backend", choices=["torch", "onnx"],
                   help="encoder runtime: torch (default) or onnx (ONNX Runtime, CPU; fp32, or int8 with --int8)")
    g.add_argument("--bf16", action="store_true",
                   help="bfloat16 autocast for encoding (fast on CPUs with AMX/AVX512-BF16, and on GPUs)")
    g.add_argument("--batch-size", dest="batch_size", type=int)
    g.add_argument("--max-seq-length", dest="max_seq_length", type=int)
    g.add_argument("--nprobe", type=int, help="IVF lists probed per query")
    g.add_argument("--ef-search", dest="ef_search", type=int, help="HNSW search breadth")
    g.add_argument("--fusion", choices=["rrf", "linear"], help="hybrid fusion (default rrf)")
    g.add_argument("--weight", type=float, help="hybrid linear fusion: weight of the dense score (default 0.5)")
    g.add_argument("--rrf-k", dest="rrf_k", type=float, help="hybrid RRF constant (default 60)")
    g.add_argument("--depth", type=int, help="hybrid: candidates per first stage before fusion (default 1000)")


def _add_rerank_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rerank", metavar="SPEC", help="cross-encoder:FOLDER | llm-yesno[:MODEL] | llm-rating[:MODEL] | "
                   "llm-listwise[:MODEL]; MODEL: smollm2 (bundled), a folder, or http://HOST:PORT/v1#NAME")
    p.add_argument("--rerank-depth", type=int, default=100, help="first-stage candidates passed to the reranker")
    p.add_argument("--rerank-option", action="append", default=[], metavar="KEY=VALUE",
                   help="reranker option, repeatable (window=20, timeout=30, batch_size=16)")


def _reranker(args: argparse.Namespace):
    if not getattr(args, "rerank", None):
        return None
    from retrieval.rerank import load_reranker, parse_option

    return load_reranker(args.rerank, **dict(parse_option(o) for o in args.rerank_option))


def _print_hits(hits: list[Hit], width: int = 90) -> None:
    print(f"{'rank':>4}  {'score':>9}  {'id':<14}  text")
    for h in hits:
        text = " ".join(f"{h.title} {h.text}".split())
        text = text if len(text) <= width else text[: width - 1] + "…"
        print(f"{h.rank:>4}  {h.score:>9.4f}  {h.id:<14}  {text}")


def cmd_index(args: argparse.Namespace) -> int:
    from retrieval.data import iter_documents

    start = time.perf_counter()
    docs = iter_documents(args.docs, format=args.format, id_field=args.id_field,
                          text_field=args.text_field, title_field=args.title_field or None)
    retriever = Retriever.from_documents(docs, method=args.method, show_progress=not args.quiet,
                                         **_build_options(args))
    retriever.save(args.out)
    print(f"indexed {len(retriever)} documents with {args.method} in {time.perf_counter() - start:.1f}s -> {args.out}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    retriever = Retriever.load(args.index_dir, reranker=_reranker(args), rerank_depth=args.rerank_depth)
    hits = retriever.retrieve(args.query, k=args.k)
    if args.json:
        print(json.dumps([h.to_dict() for h in hits], ensure_ascii=False, indent=2))
    else:
        _print_hits(hits)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    data = load_beir(args.beir_dir, args.split)
    start = time.perf_counter()
    if args.index_dir:
        retriever = Retriever.load(args.index_dir, reranker=_reranker(args), rerank_depth=args.rerank_depth)
    else:
        retriever = Retriever.from_documents(data.corpus(), method=args.method, reranker=_reranker(args),
                                             rerank_depth=args.rerank_depth, show_progress=not args.quiet,
                                             **_build_options(args))
    built = time.perf_counter()
    run = retriever.run(data.queries, k=args.k)
    searched = time.perf_counter()
    metrics = evaluate(data.qrels, run, k_values=sorted({1, 10, args.k}), ignore_identical_ids=args.ignore_identical_ids)
    if args.run_out:
        (write_json_run if str(args.run_out).endswith(".json") else write_trec_run)(run, args.run_out)
    summary = {"dataset": str(args.beir_dir), "split": args.split, "method": retriever.method,
               "queries": len(data.queries), "build_s": round(built - start, 3),
               "search_s": round(searched - built, 3), "metrics": metrics}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        names = ("nDCG@10", "MAP@10", f"Recall@{args.k}", "MRR@10")
        print(f"{Path(args.beir_dir).name} [{args.split}, {len(data.queries)} queries] {retriever.method}: "
              f"{format_metrics(metrics, names)}  (search {summary['search_s']:.2f}s)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from retrieval.sample import sample_dir

    data = load_beir(sample_dir(), "test")
    methods = args.methods.split(",")
    print(f"Bundled sample: {sum(1 for _ in data.corpus())} documents, {len(data.queries)} queries\n")
    query = next(iter(data.queries.values()))
    built: dict[str, Retriever] = {}
    for method in methods:
        start = time.perf_counter()
        if method == "hybrid" and {"bm25", "dense"} <= built.keys():
            from retrieval.hybrid.searcher import HybridSearcher  # reuse both stages instead of encoding the corpus again

            searcher = HybridSearcher(built["bm25"].searcher, built["dense"].searcher)
            retriever = Retriever(searcher, built["dense"].docs)
        else:
            retriever = Retriever.from_documents(data.corpus(), method=method, show_progress=False)
        built[method] = retriever
        run = retriever.run(data.queries, k=100)
        metrics = evaluate(data.qrels, run)
        print(f"[{method}] built+searched in {time.perf_counter() - start:.1f}s   {format_metrics(metrics)}")
        print(f"  query: {query!r}")
        _print_hits(retriever.retrieve(query, k=3))
        print()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="retrieval", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("index", help="index documents and save the index folder")
    p.add_argument("docs", help="BEIR folder or JSONL/CSV/TSV file (.gz allowed)")
    p.add_argument("--out", required=True, help="index folder to write (replaced atomically)")
    p.add_argument("--format", choices=["jsonl", "csv", "tsv"], help="file format (default: from the name)")
    p.add_argument("--id-field", help="id field (default: _id, id, docid or doc_id)")
    p.add_argument("--text-field", default="text")
    p.add_argument("--title-field", default="title", help="title field ('' for none)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_build_flags(p)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="search a saved index")
    p.add_argument("index_dir")
    p.add_argument("query")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _add_rerank_flags(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("eval", help="evaluate on a BEIR folder (nDCG@10, MAP@10, Recall@k, MRR@10)")
    p.add_argument("--beir-dir", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--index-dir", help="evaluate a saved index instead of building one")
    p.add_argument("-k", type=int, default=100, help="retrieval depth (Recall@k)")
    p.add_argument("--ignore-identical-ids", action="store_true", help="drop a query's own id (ArguAna, Quora)")
    p.add_argument("--run-out", help="write the run (TREC format, or JSON if the name ends in .json)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true")
    _add_build_flags(p)
    _add_rerank_flags(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("demo", help="index the bundled sample and answer its queries (works offline)")
    p.add_argument("--methods", default="bm25,dense,hybrid", help="comma-separated methods")
    p.set_defaults(func=cmd_demo)

    for module, func in PLUGINS:
        try:
            getattr(importlib.import_module(module), func)(sub)
        except ImportError as exc:
            logging.getLogger(__name__).debug("sub-command from %s unavailable: %s", module, exc)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"retrieval {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
