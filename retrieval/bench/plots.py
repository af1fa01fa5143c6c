"""PNG plots for the benchmark report (matplotlib, drawn off-screen with Agg, imported only when plotting)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from retrieval.errors import MissingDependency


def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:
        raise MissingDependency("plots need matplotlib: pip install 'retrievekit[report]'") from exc
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def grouped_bars(values: dict[tuple[str, str], float], path: Path, ylabel: str, title: str) -> Path:
    """Bars of ``values[(group, series)]``: one group per dataset, one bar colour per system."""
    plt = _pyplot()
    groups = list(dict.fromkeys(g for g, _ in values))
    series = list(dict.fromkeys(s for _, s in values))
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(groups) * len(series) + 2), 4.0))
    for i, name in enumerate(series):
        xs = [g + i * width for g in range(len(groups))]
        bars = ax.bar(xs, [values.get((g, name), 0.0) for g in groups], width, label=name)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks([g + width * (len(series) - 1) / 2 for g in range(len(groups))], groups)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=min(len(series), 4), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_ndcg(rows: list[dict[str, Any]], path: Path, metric: str = "nDCG@10") -> Path:
    """``metric`` per dataset (groups) per system (bars)."""
    values = {(r["dataset"], r["system"]): r["metrics"][metric] for r in rows}
    return grouped_bars(values, path, metric, f"{metric} per dataset and system")


def plot_mteb(rows: list[dict[str, Any]], path: Path) -> Path:
    """Main score of each MTEB-style task (groups) per embedder (bars)."""
    values = {(r["task"], r["embedder"]): r["main_score"] for r in rows}
    return grouped_bars(values, path, "main score", "MTEB-style tasks (main score)")


def plot_quality_latency(rows: list[dict[str, Any]], path: Path, metric: str = "nDCG@10") -> Path:
    """Scatter: mean query latency (ms, log scale) against ``metric``, one point per system and dataset."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for r in rows:
        ax.scatter(max(r["latency_ms"], 1e-3), r["metrics"][metric])
        ax.annotate(f"{r['system']} ({r['dataset']})", (max(r["latency_ms"], 1e-3), r["metrics"][metric]),
                    fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("ms per query (batch retrieval, incl. query encoding)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs latency")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_all(results: dict[str, Any], out: Path) -> dict[str, Path]:
    """Every plot the report links: ``{name: path}``."""
    plots: dict[str, Path] = {}
    rows = results.get("retrieval", [])
    if rows:
        plots["nDCG@10 per dataset"] = plot_ndcg(rows, out / "ndcg_at_10.png")
        plots["quality vs latency"] = plot_quality_latency(rows, out / "quality_vs_latency.png")
    if results.get("mteb"):
        plots["MTEB-style tasks"] = plot_mteb(results["mteb"], out / "mteb_tasks.png")
    return plots
