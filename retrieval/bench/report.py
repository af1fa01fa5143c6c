"""``retrieval benchmark``: every configured system on every available dataset, in one command.

Writes ``results.json`` (all metrics, per-query nDCG@10, timings, config), ``results.md`` (tables, with
published numbers and their sources next to ours) and PNG plots into ``--out``. Retrieval systems are scored on
BEIR folders through :func:`retrieval.eval.pipeline.evaluate_retriever`; embedders are scored on MTEB-style task
folders (see :mod:`retrieval.eval.mteb_tasks`). Corpus embeddings are cached under ``OUT/cache``
(:class:`retrieval.dense.cache.CachedEncoder`) and shared by every system using the same encoder, so a
corpus is encoded once per model and a second benchmark does not encode it again. The data folder is ``--data`` or
``$RETRIEVEKIT_DATA`` (:func:`retrieval.datasets.data_dir`).

    retrieval benchmark --suite quick --out bench/ --data ../shared/data   # SciFact + STS: BM25 / MiniLM / hybrid
    retrieval benchmark --suite full --out bench/ --model path/to/adapted-model
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from retrieval.argtypes import at_least
from retrieval.data import DataError, load_beir
from retrieval.datasets import DATA_ENV, data_dir
from retrieval.dense.cache import CachedEncoder
from retrieval.dense.encoders import ENCODER_OPTIONS  # the EncoderConfig fields: keys of the encoder pool
from retrieval.eval.pipeline import evaluate_retriever
from retrieval.models import DEFAULT_EMBEDDER, DEFAULT_LLM
from retrieval.persistence import atomic_write_text
from retrieval.bench.markdown import MTEB_NAMES, REFERENCES, markdown_report

logger = logging.getLogger(__name__)

SUITES = ("quick", "full")
# Rough per-item costs on a 2-core CPU, used only for the up-front time estimate.
SECONDS_PER = {"bm25_doc": 0.002, "encode_doc": 0.06, "encode_text": 0.004, "query": 0.005}


@dataclass
class SystemSpec:
    """One retrieval system: first stage ``method`` with build ``options``, optionally a reranker."""

    name: str
    method: str = "bm25"
    options: dict[str, Any] = field(default_factory=dict)
    reranker: str | None = None
    rerank_depth: int = 100

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "_", self.name).strip("_").lower()


@dataclass
class EmbedderSpec:
    """One embedder for the MTEB-style tasks: a model alias or folder, optionally the int8 fast path."""

    name: str
    model: str = DEFAULT_EMBEDDER
    int8: bool = False


@dataclass
class BenchmarkConfig:
    """What to benchmark; serialises to JSON (stored in results.json)."""

    suite: str = "quick"
    systems: list[SystemSpec] = field(default_factory=list)
    embedders: list[EmbedderSpec] = field(default_factory=list)
    beir: list[str] = field(default_factory=list)
    mteb: list[str] = field(default_factory=list)
    split: str = "test"
    k: int = 100
    max_queries: int | None = None
    mteb_limit: int | None = None
    cache: bool = True
    plots: bool = True
    show_progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BenchmarkConfig":
        d = dict(d)
        d["systems"] = [SystemSpec(**s) for s in d.get("systems", [])]
        d["embedders"] = [EmbedderSpec(**e) for e in d.get("embedders", [])]
        return cls(**d)


def suite_systems(suite: str, models: list[str] = (), rerankers: list[str] = ()
                  ) -> tuple[list[SystemSpec], list[EmbedderSpec]]:
    """The systems and embedders of a suite; ``models`` adds adapted sentence-transformers folders and
    ``rerankers`` adds BM25 + each reranker spec (e.g. ``cross-encoder:DIR``)."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; choose one of {SUITES}")
    systems = [SystemSpec("BM25", "bm25"),
               SystemSpec("MiniLM", "dense", {"model": DEFAULT_EMBEDDER, "index": "flat"}),
               SystemSpec("Hybrid RRF", "hybrid", {"model": DEFAULT_EMBEDDER, "fusion": "rrf"})]
    embedders = [EmbedderSpec("MiniLM", DEFAULT_EMBEDDER)]
    if suite == "full":
        systems += [SystemSpec("Hybrid linear", "hybrid", {"model": DEFAULT_EMBEDDER, "fusion": "linear"}),
                    SystemSpec("MiniLM HNSW", "dense", {"model": DEFAULT_EMBEDDER, "index": "hnsw"}),
                    SystemSpec("MiniLM IVF-PQ", "dense", {"model": DEFAULT_EMBEDDER, "index": "ivfpq"}),
                    SystemSpec("MiniLM int8", "dense", {"model": DEFAULT_EMBEDDER, "index": "flat", "int8": True}),
                    SystemSpec("BM25 + LLM yes/no", "bm25", reranker=f"llm-yesno:{DEFAULT_LLM}", rerank_depth=20)]
        embedders.append(EmbedderSpec("MiniLM int8", DEFAULT_EMBEDDER, int8=True))
    for folder in models:
        label = Path(folder).name
        systems.append(SystemSpec(f"{label}", "dense", {"model": folder, "index": "flat"}))
        embedders.append(EmbedderSpec(label, folder))
    for spec in rerankers:
        systems.append(SystemSpec(f"BM25 + {spec}", "bm25", reranker=spec, rerank_depth=100))
    return systems, embedders


def suite_datasets(suite: str, data: Path) -> tuple[list[str], list[str]]:
    """(BEIR folders, MTEB folders) of a suite under ``data``. Quick: SciFact + STSBenchmark + SICK-R;
    full: every BEIR and MTEB folder there. Missing ones are skipped with a warning."""
    if suite == "quick":
        beir = [data / "beir" / "scifact"]
        mteb = [data / "mteb" / "stsbenchmark", data / "mteb" / "sickr"]
    else:
        beir = sorted(p for p in (data / "beir").glob("*") if (p / "corpus.jsonl").exists())
        mteb = sorted(p for p in (data / "mteb").glob("*") if p.is_dir())
    missing = [str(p) for p in beir + mteb if not p.exists()]
    if missing:
        logger.warning("skipping datasets not found: %s", missing)
    return [str(p) for p in beir if p.exists()], [str(p) for p in mteb if p.exists()]


def suite_config(suite: str = "quick", data: str | Path | None = None, models: list[str] = (),
                 rerankers: list[str] = (), **overrides: Any) -> BenchmarkConfig:
    """A suite's systems, embedders and datasets; ``data`` defaults to ``$RETRIEVEKIT_DATA`` (else an error)."""
    systems, embedders = suite_systems(suite, list(models), list(rerankers))
    beir, mteb = suite_datasets(suite, data_dir(data))
    return BenchmarkConfig(suite=suite, systems=systems, embedders=embedders, beir=beir, mteb=mteb, **overrides)


def _count_lines(path: Path) -> int:
    with path.open("rb") as fh:
        return sum(1 for _ in fh)


def _encoder_key(options: dict[str, Any]) -> str:
    opts = {k: options[k] for k in ENCODER_OPTIONS if options.get(k) not in (None, False)}
    opts.setdefault("model", DEFAULT_EMBEDDER)
    return json.dumps(opts, sort_keys=True)


def estimate_seconds(config: BenchmarkConfig) -> dict[str, float]:
    """A rough cost per step (seconds on 2 cores, ignoring caches), so the user knows what they started."""
    steps: dict[str, float] = {}
    for folder in map(Path, config.beir):
        n_docs = _count_lines(folder / "corpus.jsonl")
        n_q = config.max_queries or _count_lines(folder / "qrels" / f"{config.split}.tsv")
        encoded: set[str] = set()
        for s in config.systems:
            cost = n_docs * SECONDS_PER["bm25_doc"] + n_q * SECONDS_PER["query"]
            if s.method in ("dense", "hybrid") and _encoder_key(s.options) not in encoded:
                encoded.add(_encoder_key(s.options))
                cost += n_docs * SECONDS_PER["encode_doc"]
            steps[f"{folder.name}/{s.name}"] = cost + (n_q * s.rerank_depth * 0.05 if s.reranker else 0.0)
    for folder in map(Path, config.mteb):
        from retrieval.eval.mteb_tasks import load_task

        splits = (config.split, "train") if load_task(folder).type == "classification" else (config.split,)
        n = sum(_count_lines(folder / f"{s}.jsonl") for s in splits if (folder / f"{s}.jsonl").exists())
        n = min(n, config.mteb_limit or n)
        for e in config.embedders:
            steps[f"{folder.name}/{e.name}"] = 2 * n * SECONDS_PER["encode_text"]
    return steps


class EncoderPool:
    """Loads each (model, int8, ...) encoder once per benchmark and shares it between systems and tasks."""

    def __init__(self, cache: Path | None, show_progress: bool,
                 factory: Callable[[dict[str, Any]], Any] | None = None) -> None:
        self.cache, self.show_progress, self.factory = cache, show_progress, factory
        self._encoders: dict[str, Any] = {}

    def get(self, options: dict[str, Any]) -> Any:
        key = _encoder_key(options)
        opts = json.loads(key)
        if key not in self._encoders:
            if self.factory is not None:
                encoder = self.factory(opts)
            else:
                from retrieval.dense.encoders import load_encoder

                encoder = load_encoder(opts.pop("model"), show_progress=self.show_progress, **opts)
            self._encoders[key] = CachedEncoder(encoder, self.cache) if self.cache is not None else encoder
        return self._encoders[key]

    def cache_hits(self) -> int:
        return sum(getattr(e, "hits", 0) for e in self._encoders.values())


def _retriever(system: SystemSpec, data: Any, show_progress: bool, pool: EncoderPool) -> Any:
    from retrieval.retriever import Retriever

    reranker = None
    if system.reranker:
        from retrieval.rerank import load_reranker

        reranker = load_reranker(system.reranker)
    options = dict(system.options)
    if system.method in ("dense", "hybrid"):
        options = {k: v for k, v in options.items() if k not in ENCODER_OPTIONS}
        options["encoder"] = pool.get(system.options)
    return Retriever.from_documents(data.corpus(), system.method, reranker=reranker,
                                    rerank_depth=system.rerank_depth, show_progress=show_progress, **options)


def evaluate_system(system: SystemSpec, folder: Path, config: BenchmarkConfig, out: Path,
                    pool: EncoderPool) -> dict[str, Any]:
    """Build one system on one BEIR folder and score it (its run goes to ``OUT/runs``); times both steps."""
    data = load_beir(folder, config.split)
    hits_before = pool.cache_hits()
    start = time.perf_counter()
    retriever = _retriever(system, data, config.show_progress, pool)
    build_s = time.perf_counter() - start
    result = evaluate_retriever(retriever, data, k=config.k, max_queries=config.max_queries,
                                run_out=out / "runs" / f"{folder.name}__{system.slug}.trec", run_tag=system.slug)
    return {"dataset": folder.name, "system": system.name, "method": system.method, "metrics": result.metrics,
            "per_query_ndcg@10": result.per_query("nDCG@10"), "n_queries": result.n_queries,
            "n_docs": len(retriever), "build_s": build_s,
            "embeddings_cached": pool.cache_hits() > hits_before, "search_s": result.search_s,
            "latency_ms": 1000 * result.search_s / max(result.n_queries, 1)}


def evaluate_embedder(encoder: Any, spec: EmbedderSpec, folder: Path, config: BenchmarkConfig) -> dict[str, Any]:
    """One embedder on one MTEB-style task folder."""
    from retrieval.eval.mteb_tasks import run_task

    result = run_task(encoder, folder, split=config.split, limit=config.mteb_limit)
    out = result.to_dict()
    out.update(embedder=spec.name, dataset=folder.name, task=MTEB_NAMES.get(folder.name, result.task))
    return out


def _significance(rows: list[dict[str, Any]]) -> None:
    """Per dataset, test each system's nDCG@10 against the first system's (paired randomisation test)."""
    from retrieval.eval.significance import randomization_test

    for ds in {r["dataset"] for r in rows}:
        group = [r for r in rows if r["dataset"] == ds]
        base = group[0]
        for r in group[1:]:
            res = randomization_test(r["per_query_ndcg@10"], base["per_query_ndcg@10"], n_resamples=10_000, seed=0)
            r["vs_baseline"] = {"baseline": base["system"], "metric": "nDCG@10", **res.to_dict()}


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpus": os.cpu_count()}
    try:
        info["cpus_available"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    return info


def run_benchmark(config: BenchmarkConfig, out: str | Path,
                  encoder_factory: Callable[[dict[str, Any]], Any] | None = None) -> dict[str, Any]:
    """Benchmark the whole suite and write results.json, results.md and plots into ``out``; returns the results.

    ``encoder_factory(options)`` replaces ``load_encoder`` (tests pass tiny fake encoders).
    """
    from retrieval.version import __version__

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    steps = estimate_seconds(config)
    logger.info("benchmark: %d steps, estimated %.1f min", len(steps), sum(steps.values()) / 60)
    started = time.time()
    results: dict[str, Any] = {"suite": config.suite, "version": __version__, "machine": machine_info(),
                               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                               "config": config.to_dict(), "estimated_s": sum(steps.values()),
                               "retrieval": [], "mteb": [], "references": [asdict(r) for r in REFERENCES]}
    pool = EncoderPool(out / "cache" / "embeddings" if config.cache else None, config.show_progress, encoder_factory)
    bar = tqdm(total=round(sum(steps.values())) or 1, unit="est-s", desc="benchmark",
               disable=not config.show_progress)
    for folder in map(Path, config.beir):
        for system in config.systems:
            bar.set_postfix_str(f"{folder.name}/{system.name}")
            results["retrieval"].append(evaluate_system(system, folder, config, out, pool))
            bar.update(round(steps[f"{folder.name}/{system.name}"]))
    for spec in config.embedders if config.mteb else []:
        encoder = pool.get({"model": spec.model, "int8": spec.int8 or None})
        for folder in map(Path, config.mteb):
            bar.set_postfix_str(f"{folder.name}/{spec.name}")
            results["mteb"].append(evaluate_embedder(encoder, spec, folder, config))
            bar.update(round(steps[f"{folder.name}/{spec.name}"]))
    bar.close()
    _significance(results["retrieval"])
    results["elapsed_s"] = time.time() - started
    write_outputs(results, out)
    return results


def write_outputs(results: dict[str, Any], out: Path) -> dict[str, Path]:
    """results.json, results.md and (when matplotlib is there and plots are on) the PNGs."""
    paths = {"json": out / "results.json", "markdown": out / "results.md"}
    plots: dict[str, str] = {}
    if results["config"].get("plots", True):
        from retrieval.bench.plots import plot_all

        try:
            for name, path in plot_all(results, out).items():
                plots[name] = path.name
                paths[name] = path
        except ImportError as exc:
            logger.warning("no plots: %s", exc)
    atomic_write_text(paths["json"], json.dumps(results, indent=1))
    atomic_write_text(paths["markdown"], markdown_report(results, plots))
    return paths


def _systems_file(path: str) -> list[SystemSpec]:
    """The ``--systems`` JSON list; a bad entry names the file and the entry."""
    try:
        items = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}, line {exc.lineno}: malformed JSON ({exc.msg})") from None
    if not isinstance(items, list):
        raise DataError(f"{path}: expected a JSON list of systems")
    systems = []
    for i, item in enumerate(items):
        try:
            systems.append(SystemSpec(**item))
        except TypeError as exc:
            raise DataError(f"{path}, system {i}: {exc} (fields: name, method, options, reranker, rerank_depth)") from None
    return systems


def config_from_args(args: argparse.Namespace) -> BenchmarkConfig:
    """The benchmark the flags describe; the data folder is only needed for datasets not given by flag."""
    systems, embedders = suite_systems(args.suite, args.model or [], args.rerank or [])
    if args.systems:
        systems = _systems_file(args.systems)
    beir, mteb = args.beir, args.mteb
    if beir is None or mteb is None:
        found = suite_datasets(args.suite, data_dir(args.data))
        beir, mteb = found[0] if beir is None else beir, found[1] if mteb is None else mteb
    if not beir and not mteb:
        raise DataError(f"no datasets found in {data_dir(args.data)}; pass --data DIR (with beir/ and mteb/) "
                        "or --beir DIR")
    return BenchmarkConfig(suite=args.suite, systems=systems, embedders=embedders, beir=list(beir), mteb=list(mteb),
                           max_queries=args.max_queries, mteb_limit=args.mteb_limit, cache=not args.no_cache,
                           plots=not args.no_plots, show_progress=not args.no_progress)


def cmd_benchmark(args: argparse.Namespace) -> int:
    """CLI entry point: build the config from flags, benchmark, print the Markdown table."""
    config = config_from_args(args)
    steps = estimate_seconds(config)
    print(f"benchmark {config.suite}: {len(config.systems)} systems x {len(config.beir)} BEIR sets, "
          f"{len(config.embedders)} embedders x {len(config.mteb)} MTEB sets; "
          f"estimated {sum(steps.values()) / 60:.1f} min on 2 cores")
    results = run_benchmark(config, args.out)
    print(markdown_report(results))
    print(f"wrote {Path(args.out) / 'results.json'}, results.md and plots in {args.out}")
    return 0


def add_benchmark_command(subparsers: Any) -> None:
    """Register ``retrieval benchmark`` on the CLI's sub-parsers."""
    p = subparsers.add_parser("benchmark", help="the quality/latency report (results.json, results.md, PNGs)")
    p.add_argument("--suite", choices=SUITES, default="quick")
    p.add_argument("--out", required=True, help="output folder (also caches corpus embeddings in OUT/cache)")
    p.add_argument("--data", help=f"data folder with beir/ and mteb/ (default: ${DATA_ENV})")
    p.add_argument("--beir", nargs="+", metavar="DIR", help="BEIR folders to use instead of the suite's")
    p.add_argument("--mteb", nargs="*", metavar="DIR", help="MTEB-style task folders instead of the suite's")
    p.add_argument("--model", action="append", metavar="FOLDER", help="add an adapted sentence-transformers model")
    p.add_argument("--rerank", action="append", metavar="SPEC",
                   help="add BM25 + this reranker (top 100), e.g. cross-encoder:DIR or llm-yesno:smollm2")
    p.add_argument("--systems", metavar="JSON", help="JSON list of systems (name, method, options, reranker)")
    p.add_argument("--max-queries", type=at_least(1), help="evaluate only the first N queries (smoke tests)")
    p.add_argument("--mteb-limit", type=at_least(1), help="use only the first N records of each MTEB split")
    p.add_argument("--no-cache", action="store_true", help="re-encode corpora even if cached in OUT/cache")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_benchmark)
