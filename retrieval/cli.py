"""The ``retrieval`` command: index, search, eval, demo, benchmark and train.

Only this module prints; library code logs. The command sets are composed here, explicitly: the library's
own commands, ``benchmark`` (:mod:`retrieval.bench.report`) and ``train`` (:mod:`training.cli`; when its
optional dependencies are missing, ``train`` still exists and says what to install).

Bad input (a file, an index folder, a flag, an LLM server) is one line ``retrieval CMD: error: ...`` that
names the thing, and exit status 2. Anything else is a bug: one line and exit status 1, or, with ``-v``,
the traceback.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import json
import logging
import re
import struct
import sys
import time
import traceback
import zlib
from collections.abc import Callable
from pathlib import Path

from retrieval.argtypes import at_least, non_negative
from retrieval.bench.report import add_benchmark_command
from retrieval.data import load_beir
from retrieval.distributed.errors import ShardError
from retrieval.errors import DataError, IndexFormatError, LLMError, MissingDependency
from retrieval.eval.metrics import format_metrics
from retrieval.eval.pipeline import evaluate_retriever
from retrieval.options import add_build_flags, options_from_args
from retrieval.retriever import Retriever
from retrieval.types import Hit

logger = logging.getLogger(__name__)

# Optional packages -> the extra of retrievekit that installs them (for the hint when one is missing).
EXTRAS = {"torch": "dense", "sentence_transformers": "dense", "faiss": "dense", "transformers": "llm",
          "accelerate": "llm", "gguf": "llm", "onnxruntime": "onnx", "onnx": "onnx", "matplotlib": "report",
          "sklearn": "report", "mteb": "mteb", "rank_bm25": "reference", "datasets": "train",
          "ray": "ray"}
# What reading a damaged file raises from the standard library, which names no file: what each means.
READ_ERRORS = {EOFError: "truncated file", gzip.BadGzipFile: "not a valid gzip file", zlib.error: "damaged compressed data",
               csv.Error: "unreadable CSV/TSV", struct.error: "damaged binary data", UnicodeError: "bad text encoding"}
# What loading a damaged index raises from FAISS, numpy and json besides our own IndexFormatError.
INDEX_LOAD_ERRORS = (RuntimeError, ValueError, KeyError, *READ_ERRORS)


class UsageError(ValueError):
    """A command line that parses but does not make sense (printed like argparse's own errors, exit 2)."""


# --- errors -------------------------------------------------------------------------------------

def _first_line(exc: BaseException) -> str:
    """The first line of an error's message, without the C++ location FAISS puts in front of its own."""
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
    lines = str(text).strip().splitlines()
    line = lines[0] if lines else type(exc).__name__
    return re.sub(r"^Error in .*? at \S+:\d+: ", "", line)


def _naming(subject: str | None, message: str) -> str:
    """``message``, prefixed by ``subject`` (the file or folder read) unless it already names it."""
    return message if not subject or subject in message else f"{subject}: {message}"


def install_hint(exc: ImportError, extra: str | None = None) -> str | None:
    """'X is not installed: pip install ...' for a missing optional package; None for any other ImportError."""
    name = (getattr(exc, "name", None) or "").split(".")[0]
    if not isinstance(exc, ModuleNotFoundError) or name not in EXTRAS:
        return None
    return f"{name} is not installed: pip install 'retrievekit[{extra or EXTRAS[name]}]'"


def user_error_message(exc: BaseException, subject: str | None = None, extra: str | None = None) -> str | None:
    """The one-line message for an error caused by the input, or None when ``exc`` is a bug."""
    if isinstance(exc, (DataError, IndexFormatError, MissingDependency, LLMError, UsageError, ShardError)):
        return _first_line(exc)
    if isinstance(exc, re.error):
        where = f" at position {exc.pos}" if exc.pos is not None else ""
        return f"bad regular expression {exc.pattern!r}: {exc.msg}{where}"
    if isinstance(exc, ModuleNotFoundError):
        return install_hint(exc, extra)
    meaning = next((text for kind, text in READ_ERRORS.items() if isinstance(exc, kind)), None)
    if meaning is not None:
        return _naming(subject, f"{meaning} ({type(exc).__name__}: {_first_line(exc)})")
    if isinstance(exc, (OSError, ValueError)):   # OSError names its file; ValueError: a bad value given by a flag
        return _first_line(exc)
    return None


def _subject(args: argparse.Namespace) -> str | None:
    """The file or folder a command reads, to name in messages from errors that name none."""
    for name in ("docs", "corpus", "data_dir", "data", "index_dir"):
        if getattr(args, name, None):
            return str(getattr(args, name))
    return None


def report_error(exc: BaseException, args: argparse.Namespace) -> int:
    """Print one line for ``exc`` (plus the traceback with -v for a bug or a converted foreign error); the exit status."""
    prefix = f"retrieval {args.command}: error:"
    message = user_error_message(exc, _subject(args), getattr(args, "extra", None))
    if args.verbose and (message is None or exc.__cause__ is not None):
        traceback.print_exception(exc, file=sys.stderr)
    if message is not None:
        print(f"{prefix} {message}", file=sys.stderr)
        return 2
    if not args.verbose:
        print(f"{prefix} unexpected {type(exc).__name__}: {_first_line(exc)} (a bug; run with -v for the traceback)",
              file=sys.stderr)
    return 1


# --- commands -----------------------------------------------------------------------------------

def _add_rerank_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rerank", metavar="SPEC", help="cross-encoder:FOLDER | llm-yesno[:MODEL] | llm-rating[:MODEL] | "
                   "llm-listwise[:MODEL] | llm-ql[:MODEL]; MODEL: smollm2 (bundled), gemma3-270m, a folder, "
                   "a .gguf file, or http://HOST:PORT/v1#NAME")
    p.add_argument("--rerank-depth", type=at_least(1), default=100,
                   help="first-stage candidates passed to the reranker")
    p.add_argument("--rerank-option", action="append", default=[], metavar="KEY=VALUE",
                   help="reranker option, repeatable (window=20, timeout=30, batch_size=16)")


def _reranker(args: argparse.Namespace):
    if not getattr(args, "rerank", None):
        return None
    from retrieval.rerank import load_reranker, parse_option

    return load_reranker(args.rerank, **dict(parse_option(o) for o in args.rerank_option))


def open_index(path: str | Path, args: argparse.Namespace) -> Retriever:
    """``Retriever.load``; errors FAISS, numpy or json raise on a damaged file become an IndexFormatError naming it.

    A sharded index (built with ``index --ray``) opens as a ``ShardedRetriever``: here, or on ``--ray ADDRESS``.
    """
    reranker = _reranker(args)   # loaded first: its errors are about --rerank, not the index
    try:
        if _is_sharded(path):
            if reranker is not None:
                raise UsageError("--rerank does not apply to a sharded index")
            from retrieval.distributed.search import ShardedRetriever

            return ShardedRetriever.load(path, cluster=getattr(args, "ray", None))
        return Retriever.load(path, reranker=reranker, rerank_depth=args.rerank_depth)
    except (IndexFormatError, DataError, MissingDependency):
        raise
    except INDEX_LOAD_ERRORS as exc:
        raise IndexFormatError(f"{path}: damaged index ({type(exc).__name__}: {_first_line(exc)})") from exc


def _is_sharded(path: str | Path) -> bool:
    """True for a folder whose manifest says it is a sharded index."""
    try:
        return json.loads((Path(path) / "manifest.json").read_text(encoding="utf-8")).get("kind") == "sharded"
    except (OSError, ValueError, AttributeError):
        return False


def _print_hits(hits: list[Hit], width: int = 90) -> None:
    print(f"{'rank':>4}  {'score':>9}  {'id':<14}  text")
    for h in hits:
        text = " ".join(f"{h.title} {h.text}".split())
        text = text if len(text) <= width else text[: width - 1] + "…"
        print(f"{h.rank:>4}  {h.score:>9.4f}  {h.id:<14}  {text}")


def cmd_index(args: argparse.Namespace) -> int:
    from retrieval.data import iter_documents
    from retrieval.persistence import check_index_target

    if args.ray is not None:
        return _index_on_ray(args)
    check_index_target(args.out)   # refuse a folder that is not an index before spending time building
    start = time.perf_counter()
    docs = iter_documents(args.docs, format=args.format, id_field=args.id_field,
                          text_field=args.text_field, title_field=args.title_field or None)
    retriever = Retriever.from_documents(docs, method=args.method, show_progress=not args.quiet,
                                         **options_from_args(args))
    retriever.save(args.out)
    print(f"indexed {len(retriever)} documents with {args.method} in {time.perf_counter() - start:.1f}s -> {args.out}")
    return 0


def _index_on_ray(args: argparse.Namespace) -> int:
    """``index --ray [ADDRESS] --shards N``: a sharded build on Ray (the file is read there, in blocks)."""
    from retrieval.distributed.build import write_sharded
    from retrieval.distributed.cluster import cluster_config
    from retrieval.distributed.layout import read_layout

    start = time.perf_counter()
    cluster = cluster_config(args.ray, shards=args.shards, encode_actors=args.encode_actors,
                             encode_gpus=args.encode_gpus)
    write_sharded(args.docs, args.method, args.out, cluster=cluster, show_progress=not args.quiet,
                  format=args.format, id_field=args.id_field, text_field=args.text_field,
                  title_field=args.title_field or None, **options_from_args(args))
    layout = read_layout(args.out, verify=False)
    print(f"indexed {layout.n_docs} documents with {args.method} in {len(layout.shards)} shards on Ray in "
          f"{time.perf_counter() - start:.1f}s -> {args.out}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    hits = open_index(args.index_dir, args).retrieve(args.query, k=args.k)
    if args.json:
        print(json.dumps([h.to_dict() for h in hits], ensure_ascii=False, indent=2))
    else:
        _print_hits(hits)
    return 0


def _eval_paths(args: argparse.Namespace) -> None:
    """DATA_DIR [INDEX_DIR], or the deprecated --beir-dir/--index-dir, into ``args.data_dir``/``args.index_dir``."""
    for old, name, flag in (("beir_dir", "data_dir", "--beir-dir"), ("index_dir_flag", "index_dir", "--index-dir")):
        value = getattr(args, old)
        if value is None:
            continue
        if getattr(args, name) is not None:
            raise UsageError(f"{name.upper()} given twice (as an argument and as {flag})")
        logger.warning("%s is deprecated: retrieval eval DATA_DIR [INDEX_DIR]", flag)
        setattr(args, name, value)
    if args.data_dir is None:
        raise UsageError("DATA_DIR is required: retrieval eval DATA_DIR [INDEX_DIR]")


def cmd_eval(args: argparse.Namespace) -> int:
    _eval_paths(args)
    if args.run_out and Path(args.run_out).is_dir():   # found now, not after the whole evaluation
        raise UsageError(f"--run-out {args.run_out}: is a folder; give a file path (.trec or .json)")
    data = load_beir(args.data_dir, args.split)
    start = time.perf_counter()
    if args.index_dir:
        retriever = open_index(args.index_dir, args)
    else:
        retriever = Retriever.from_documents(data.corpus(), method=args.method, reranker=_reranker(args),
                                             rerank_depth=args.rerank_depth, show_progress=not args.quiet,
                                             **options_from_args(args))
    build_s = time.perf_counter() - start
    result = evaluate_retriever(retriever, data, k=args.k, run_out=args.run_out,
                                ignore_identical_ids=True if args.ignore_identical_ids else None)
    summary = {"dataset": str(args.data_dir), "index": args.index_dir, "split": args.split, "method": retriever.method,
               "queries": result.n_queries, "build_s": round(build_s, 3), "search_s": round(result.search_s, 3),
               "metrics": result.metrics}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        names = ("nDCG@10", "MAP@10", f"Recall@{args.k}", "MRR@10")
        print(f"{result.dataset} [{args.split}, {result.n_queries} queries] {retriever.method}: "
              f"{format_metrics(result.metrics, names)}  (search {result.search_s:.2f}s)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from retrieval.sample import sample_dir

    data = load_beir(sample_dir(), "test")
    print(f"Bundled sample: {sum(1 for _ in data.corpus())} documents, {len(data.queries)} queries\n")
    query = next(iter(data.queries.values()))
    built: dict[str, Retriever] = {}
    for method in args.methods.split(","):
        start = time.perf_counter()
        if method == "hybrid" and {"bm25", "dense"} <= built.keys():
            from retrieval.hybrid.searcher import HybridSearcher  # reuse both stages instead of encoding the corpus again

            searcher = HybridSearcher(built["bm25"].searcher, built["dense"].searcher)
            retriever = Retriever(searcher, built["dense"].docs)
        else:
            retriever = Retriever.from_documents(data.corpus(), method=method, show_progress=False)
        built[method] = retriever
        result = evaluate_retriever(retriever, data, k=100)
        print(f"[{method}] built+searched in {time.perf_counter() - start:.1f}s   {format_metrics(result.metrics)}")
        print(f"  query: {query!r}")
        _print_hits(retriever.retrieve(query, k=3))
        print()
    return 0


# --- the parser ---------------------------------------------------------------------------------

def _unavailable(hint: str) -> Callable[[argparse.Namespace], int]:
    def fail(args: argparse.Namespace) -> int:
        raise MissingDependency(f"retrieval {args.command} needs {hint}")
    return fail


def _add_train_command(sub: argparse._SubParsersAction) -> None:
    """``train`` from :mod:`training.cli`; without its optional dependencies, a ``train`` that names them.

    Only a missing optional package (see :data:`EXTRAS`) is survived; any other ImportError is a bug and raised.
    """
    try:
        from training.cli import add_train_command

        add_train_command(sub)
    except ModuleNotFoundError as exc:
        hint = install_hint(exc, "train")
        if hint is None:
            raise
        train = sub.choices.get("train") or sub.add_parser(
            "train", help=f"adapt an embedding model (unavailable: {hint})",
            description=f"Domain adaptation and reranker training; unavailable here: {hint}")
        train.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        train.set_defaults(func=_unavailable(hint))
    sub.choices["train"].set_defaults(extra="train")


def _add_eval_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate on a BEIR folder (nDCG@10, MAP@10, Recall@k, MRR@10)",
                       usage="%(prog)s DATA_DIR [INDEX_DIR] [options]",
                       description="Build an index from DATA_DIR's corpus (or open INDEX_DIR) and score its run "
                                   "on DATA_DIR's judged queries.")
    p.add_argument("data_dir", nargs="?", metavar="DATA_DIR", help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/)")
    p.add_argument("index_dir", nargs="?", metavar="INDEX_DIR",
                   help="saved index to evaluate (default: build one from DATA_DIR with the build options)")
    p.add_argument("--beir-dir", help=argparse.SUPPRESS)                        # deprecated: DATA_DIR
    p.add_argument("--index-dir", dest="index_dir_flag", help=argparse.SUPPRESS)  # deprecated: INDEX_DIR
    p.add_argument("--split", default="test")
    p.add_argument("-k", type=at_least(1), default=100, help="results per query (and the k of Recall@k)")
    p.add_argument("--ignore-identical-ids", action="store_true",
                   help="drop a query's own id from its results (default: on for ArguAna and Quora, as BEIR does)")
    p.add_argument("--run-out", help="write the run (TREC format, or JSON if the name ends in .json)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true")
    add_build_flags(p)
    _add_rerank_flags(p)
    p.set_defaults(func=cmd_eval)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="retrieval", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details; tracebacks for bugs")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("index", help="index documents and save the index folder")
    p.add_argument("docs", help="BEIR folder or JSONL/CSV/TSV file (.gz allowed)")
    p.add_argument("--out", required=True, help="index folder to write (replaced atomically)")
    p.add_argument("--format", choices=["jsonl", "csv", "tsv"], help="file format (default: from the name)")
    p.add_argument("--id-field", help="id field (default: _id, id, docid or doc_id)")
    p.add_argument("--text-field", default="text")
    p.add_argument("--title-field", default="title", help="title field ('' for none)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="build on Ray as a sharded index ('local' when no address; needs retrievekit[ray])")
    p.add_argument("--shards", type=at_least(1), help="with --ray: shards to cut the collection into (default 2)")
    p.add_argument("--encode-actors", type=at_least(1), help="with --ray: encoding actors (default 1)")
    p.add_argument("--encode-gpus", type=non_negative, help="with --ray: GPUs per encoding actor (default 0)")
    add_build_flags(p)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="search a saved index")
    p.add_argument("index_dir", metavar="INDEX_DIR")
    p.add_argument("query")
    p.add_argument("-k", type=at_least(1), default=10, help="results to show")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--ray", metavar="ADDRESS", help="a sharded index: serve its shards on this Ray cluster")
    _add_rerank_flags(p)
    p.set_defaults(func=cmd_search)

    _add_eval_command(sub)
    p = sub.add_parser("demo", help="index the bundled sample and answer its queries (works offline)")
    p.add_argument("--methods", default="bm25,dense,hybrid", help="comma-separated methods")
    p.set_defaults(func=cmd_demo)

    add_benchmark_command(sub)
    _add_train_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"retrieval {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - every error ends here as one line (or a traceback with -v)
        return report_error(exc, args)


if __name__ == "__main__":
    sys.exit(main())
