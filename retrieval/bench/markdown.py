"""The Markdown side of the benchmark report, and the published numbers printed next to ours.

Every published number carries its source; a number is only shown in a row whose dataset, system name
and metric match it exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from retrieval.eval.mteb_tasks import MAIN_SCORE


@dataclass(frozen=True)
class Reference:
    """A published number printed next to ours, with where it comes from."""

    dataset: str
    system: str
    metric: str
    value: float
    source: str


MTEB_RESULTS = ("MTEB results (embeddings-benchmark/results, sentence-transformers__all-MiniLM-L6-v2/"
                "8b3219a92973c328a8e22fadcfa821b5dc75636a/{task}.json, mteb 1.12.75)")
REFERENCES = (
    Reference("scifact", "BM25", "nDCG@10", 0.665, "BEIR paper (Thakur et al. 2021), Table 2, BM25 (Elasticsearch)"),
    Reference("scifact", "BM25", "nDCG@10", 0.6863, "../shared/data/README.md: bm25s, stopwords + Snowball stemming"),
    Reference("scifact", "MiniLM", "nDCG@10", 0.6451, "MTEB leaderboard, all-MiniLM-L6-v2 SciFact (64.51)"),
    Reference("scifact", "Hybrid RRF", "nDCG@10", 0.7182, "../shared/data/README.md: RRF (k=60) of bm25s and MiniLM"),
    Reference("scifact", "Hybrid linear", "nDCG@10", 0.7269, "../shared/data/README.md: min-max fusion 0.5/0.5"),
    Reference("STSBenchmark", "MiniLM", "cosine_spearman", 0.8203, MTEB_RESULTS.format(task="STSBenchmark")),
    Reference("SICK-R", "MiniLM", "cosine_spearman", 0.7758, MTEB_RESULTS.format(task="SICK-R")),
    Reference("Banking77Classification", "MiniLM", "accuracy", 0.8004,
              MTEB_RESULTS.format(task="Banking77Classification")),
)
# Our local folder names -> MTEB task names used in REFERENCES.
MTEB_NAMES = {"stsbenchmark": "STSBenchmark", "sickr": "SICK-R", "banking77": "Banking77Classification"}


def _refs(dataset: str, system: str, metric: str) -> list[tuple[int, Reference]]:
    return [(i + 1, r) for i, r in enumerate(REFERENCES)
            if r.dataset.lower() == dataset.lower() and r.system == system and r.metric == metric]


def _ref_cell(dataset: str, system: str, metric: str, used: set[int]) -> str:
    refs = _refs(dataset, system, metric)
    used.update(i for i, _ in refs)
    return "; ".join(f"{r.value:.4f} [{i}]" for i, r in refs) or "–"


def markdown_report(results: dict[str, Any], plots: dict[str, str] | None = None) -> str:
    """The Markdown tables of a results dict (published numbers cited by footnote number)."""
    used: set[int] = set()
    lines = [f"# Benchmark report — suite `{results['suite']}`", "",
             f"retrievekit {results['version']}, {results['date']}, {results['machine']['platform']}, "
             f"{results['machine'].get('cpus_available', results['machine']['cpus'])} CPU cores; "
             f"wall time {results.get('elapsed_s', 0) / 60:.1f} min.", ""]
    if results["retrieval"]:
        lines += ["## Retrieval (BEIR)", "",
                  "| dataset | system | nDCG@10 | MAP@10 | Recall@100 | MRR@10 | ms/query | index build s "
                  "| p vs first (nDCG@10) | published nDCG@10 |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in results["retrieval"]:
            m = r["metrics"]
            p = r.get("vs_baseline", {}).get("p_value")
            build = f"{r['build_s']:.1f}" + (" (cached emb.)" if r["embeddings_cached"] else "")
            lines.append(f"| {r['dataset']} | {r['system']} | {m['nDCG@10']:.4f} | {m['MAP@10']:.4f} | "
                         f"{m.get('Recall@100', float('nan')):.4f} | {m['MRR@10']:.4f} | {r['latency_ms']:.1f} | "
                         f"{build} | {'–' if p is None else f'{p:.4f}'} | "
                         f"{_ref_cell(r['dataset'], r['system'], 'nDCG@10', used)} |")
        lines.append("")
    if results["mteb"]:
        lines += ["## MTEB-style tasks", "", "| task | type | embedder | metric | ours | published | n | s |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in results["mteb"]:
            metric = MAIN_SCORE[r["type"]]
            lines.append(f"| {r['task']} | {r['type']} | {r['embedder']} | {metric} | {r['main_score']:.4f} | "
                         f"{_ref_cell(r['task'], r['embedder'], metric, used)} | {r['n']} | {r['seconds']:.1f} |")
        lines.append("")
    if results["retrieval"]:
        lines += ["p: two-sided paired randomisation test (10,000 resamples, seed 0) on per-query nDCG@10 "
                  "against the first system of the dataset; ms/query: batch retrieval incl. query encoding; "
                  "index build s includes corpus encoding unless the embeddings came from the cache.", ""]
    if used:
        lines += ["Published numbers:", ""]
        lines += [f"{i + 1}. {r.value} — {r.source}" for i, r in enumerate(REFERENCES) if i + 1 in used]
    if plots:
        lines += ["", "Plots: " + ", ".join(f"[{name}]({path})" for name, path in plots.items())]
    return "\n".join(lines) + "\n"
