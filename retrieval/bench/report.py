"""``retrieval benchmark``: every configured system on every available dataset, in one command.

Writes ``results.json`` (all metrics, per-query nDCG@10, timings, config), ``results.md`` (tables, with
published numbers and their sources next to ours) and PNG plots into ``--out``. Retrieval systems run on
BEIR folders; embedders run on MTEB-style task folders (see :mod:`retrieval.eval.mteb_tasks`). Corpus
embeddings are cached under ``OUT/cache`` and shared by every system using the same encoder, so a corpus
is encoded once per model and a re-run does not re-encode it.

    retrieval benchmark --suite quick --out bench/      # SciFact + STS with BM25 / MiniLM / hybrid
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

from retrieval.data import DataError, load_beir
from retrieval.eval.metrics import evaluate, per_query, write_trec_run
from retrieval.persistence import atomic_write_text
from retrieval.bench.markdown import MTEB_NAMES, REFERENCES, markdown_report

logger = logging.getLogger(__name__)

SUITES = ("quick", "full")
K_VALUES = (1, 10, 100)
IGNORE_IDENTICAL_IDS = {"arguana", "quora"}  # BEIR drops a query's own id from its results on these
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
    model: str = "minilm"
    int8: bool = False


@dataclass
class BenchmarkConfig:
    """What to run; serialises to JSON (stored in results.json)."""

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


def default_data_dir() -> Path:
    """``$RETRIEVEKIT_DATA``, else ``../shared/data`` next to the repository root."""
    env = os.environ.get("RETRIEVEKIT_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def suite_systems(suite: str, models: list[str] = (), rerankers: list[str] = ()
                  ) -> tuple[list[SystemSpec], list[EmbedderSpec]]:
    """The systems and embedders of a suite; ``models`` adds adapted sentence-transformers folders and
    ``rerankers`` adds BM25 + each reranker spec (e.g. ``cross-encoder:DIR``)."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; choose one of {SUITES}")
    systems = [SystemSpec("BM25", "bm25"),
               SystemSpec("MiniLM", "dense", {"model": "minilm", "index": "flat"}),
               SystemSpec("Hybrid RRF", "hybrid", {"model": "minilm", "fusion": "rrf"})]
    embedders = [EmbedderSpec("MiniLM", "minilm")]
    if suite == "full":
        systems += [SystemSpec("Hybrid linear", "hybrid", {"model": "minilm", "fusion": "linear"}),
                    SystemSpec("MiniLM HNSW", "dense", {"model": "minilm", "index": "hnsw"}),
                    SystemSpec("MiniLM IVF-PQ", "dense", {"model": "minilm", "index": "ivfpq"}),
                    SystemSpec("MiniLM int8", "dense", {"model": "minilm", "index": "flat", "int8": True}),
                    SystemSpec("BM25 + LLM yes/no", "bm25", reranker="llm-yesno:smollm2", rerank_depth=20)]
        embedders.append(EmbedderSpec("MiniLM int8", "minilm", int8=True))
    for folder in models:
        label = Path(folder).name
        systems.append(SystemSpec(f"{label}", "dense", {"model": folder, "index": "flat"}))
        embedders.append(EmbedderSpec(label, folder))
    for spec in rerankers:
        systems.append(SystemSpec(f"BM25 + {spec}", "bm25", reranker=spec, rerank_depth=100))
    return systems, embedders


def suite_config(suite: str = "quick", data_dir: str | Path | None = None, models: list[str] = (),
                 rerankers: list[str] = (), **overrides: Any) -> BenchmarkConfig:
    """Quick: SciFact + STSBenchmark + SICK-R. Full: every BEIR and MTEB folder under ``data_dir``."""
    data = Path(data_dir) if data_dir else default_data_dir()
    systems, embedders = suite_systems(suite, list(models), list(rerankers))
    if suite == "quick":
        beir = [data / "beir" / "scifact"]
        mteb = [data / "mteb" / "stsbenchmark", data / "mteb" / "sickr"]
    else:
        beir = sorted(p for p in (data / "beir").glob("*") if (p / "corpus.jsonl").exists())
        mteb = sorted(p for p in (data / "mteb").glob("*") if p.is_dir())
    missing = [str(p) for p in beir + mteb if not p.exists()]
    if missing:
        logger.warning("skipping datasets not found: %s", missing)
    return BenchmarkConfig(suite=suite, systems=systems, embedders=embedders,
                           beir=[str(p) for p in beir if p.exists()], mteb=[str(p) for p in mteb if p.exists()],
                           **overrides)


def _count_lines(path: Path) -> int:
    with path.open("rb") as fh:
        return sum(1 for _ in fh)


def _encoder_key(options: dict[str, Any]) -> str:
    opts = {k: options[k] for k in ENCODER_OPTIONS if options.get(k) not in (None, False)}
    opts.setdefault("model", "minilm")
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


class CachedEncoder:
    """A BiEncoder whose document embeddings are kept in ``folder`` (.npy keyed by model + texts).

    Every dense/hybrid system over the same model and corpus then encodes that corpus once, and re-runs not at all.
    """

    def __init__(self, encoder: Any, folder: Path) -> None:
        self.encoder = encoder
        self.folder = Path(folder)
        self.hits = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.encoder, name)

    def encode_documents(self, docs: Any, show_progress: bool | None = None) -> Any:
        import hashlib

        import numpy as np

        from retrieval.types import Document

        texts = [d.full_text if isinstance(d, Document) else str(d) for d in docs]
        digest = hashlib.sha256(json.dumps([self.encoder.describe(), texts]).encode("utf-8")).hexdigest()[:20]
        path = self.folder / f"docs-{digest}.npy"
        if path.exists():
            logger.info("document embeddings from cache %s", path)
            self.hits += 1
            return np.load(path, allow_pickle=False)
        emb = self.encoder.encode_documents(docs, show_progress=show_progress)
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, emb, allow_pickle=False)
        tmp.replace(path)
        return emb


ENCODER_OPTIONS = ("model", "int8", "max_seq_length", "batch_size", "query_prefix", "doc_prefix")


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


def run_retrieval(system: SystemSpec, folder: Path, config: BenchmarkConfig, out: Path,
                  pool: EncoderPool) -> dict[str, Any]:
    """Build (or load) one system on one BEIR folder, run its queries, evaluate and time it."""
    data = load_beir(folder, config.split)
    qids = list(data.queries)[: config.max_queries]
    qrels = {q: data.qrels[q] for q in qids}
    hits_before = pool.cache_hits()
    start = time.perf_counter()
    retriever = _retriever(system, data, config.show_progress, pool)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    run = retriever.run({q: data.queries[q] for q in qids}, k=config.k)
    search_s = time.perf_counter() - start
    ignore = folder.name.lower() in IGNORE_IDENTICAL_IDS
    ks = sorted(set(K_VALUES) | {config.k})
    metrics = evaluate(qrels, run, ks, ignore_identical_ids=ignore)
    runs_dir = out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    write_trec_run(run, runs_dir / f"{folder.name}__{system.slug}.trec", tag=system.slug)
    return {"dataset": folder.name, "system": system.name, "method": system.method, "metrics": metrics,
            "per_query_ndcg@10": per_query(qrels, run, (10,), ignore)["nDCG@10"], "n_queries": len(qids),
            "n_docs": len(retriever), "build_s": build_s,
            "embeddings_cached": pool.cache_hits() > hits_before, "search_s": search_s,
            "latency_ms": 1000 * search_s / max(len(qids), 1)}


def run_mteb(encoder: Any, spec: EmbedderSpec, folder: Path, config: BenchmarkConfig) -> dict[str, Any]:
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
    """Run the whole suite and write results.json, results.md and plots into ``out``; returns the results.

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
            results["retrieval"].append(run_retrieval(system, folder, config, out, pool))
            bar.update(round(steps[f"{folder.name}/{system.name}"]))
    for spec in config.embedders if config.mteb else []:
        encoder = pool.get({"model": spec.model, "int8": spec.int8 or None})
        for folder in map(Path, config.mteb):
            bar.set_postfix_str(f"{folder.name}/{spec.name}")
            results["mteb"].append(run_mteb(encoder, spec, folder, config))
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


def cmd_benchmark(args: argparse.Namespace) -> int:
    """CLI entry point: build the config from flags, run, print the Markdown table."""
    overrides = {"max_queries": args.max_queries, "mteb_limit": args.mteb_limit, "cache": not args.no_cache,
                 "plots": not args.no_plots, "show_progress": not args.no_progress}
    config = suite_config(args.suite, args.data, args.model or [], args.rerank or [], **overrides)
    if args.systems:
        config.systems = [SystemSpec(**s) for s in json.loads(Path(args.systems).read_text(encoding="utf-8"))]
    if args.beir:
        config.beir = list(args.beir)
    if args.mteb is not None:
        config.mteb = list(args.mteb)
    if not config.beir and not config.mteb:
        raise DataError(f"no datasets found (data dir {args.data or default_data_dir()}); pass --data or --beir")
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
    p = subparsers.add_parser("benchmark", help="run the quality/latency report (results.json, results.md, PNGs)")
    p.add_argument("--suite", choices=SUITES, default="quick")
    p.add_argument("--out", required=True, help="output folder (also caches corpus embeddings in OUT/cache)")
    p.add_argument("--data", help="data folder with beir/ and mteb/ (default: $RETRIEVEKIT_DATA or ../shared/data)")
    p.add_argument("--beir", nargs="+", metavar="DIR", help="BEIR folders to use instead of the suite's")
    p.add_argument("--mteb", nargs="*", metavar="DIR", help="MTEB-style task folders instead of the suite's")
    p.add_argument("--model", action="append", metavar="FOLDER", help="add an adapted sentence-transformers model")
    p.add_argument("--rerank", action="append", metavar="SPEC",
                   help="add BM25 + this reranker (top 100), e.g. cross-encoder:DIR or llm-yesno:smollm2")
    p.add_argument("--systems", metavar="JSON", help="JSON list of systems (name, method, options, reranker)")
    p.add_argument("--max-queries", type=int, help="evaluate only the first N queries (smoke runs)")
    p.add_argument("--mteb-limit", type=int, help="use only the first N records of each MTEB split")
    p.add_argument("--no-cache", action="store_true", help="re-encode corpora even if cached in OUT/cache")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_benchmark)
