"""One evaluation path: a BEIR split -> a retriever's run -> BEIR-exact metrics (-> a run file).

The CLI's ``eval`` and ``demo``, the benchmark report and training's before/after evaluation all call
:func:`evaluate_retriever`, so they score the same queries at the same cut-offs and write run files the same
way. A *run* is the ranked result ``{query_id: {doc_id: score}}`` (or a file holding one).
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from retrieval.data import BeirDataset, load_beir
from retrieval.eval.metrics import DEFAULT_K, evaluate, per_query, write_run
from retrieval.types import Qrels, Run

# BEIR drops a query's own id from its results on these datasets (their queries are documents too).
IGNORE_IDENTICAL_IDS = frozenset({"arguana", "quora"})


class RunsQueries(Protocol):
    """Anything that answers a batch of queries with a run, such as :class:`retrieval.Retriever`."""

    def run(self, queries: Mapping[str, str], k: int = 100) -> Run: ...


@dataclass(frozen=True)
class Evaluation:
    """What :func:`evaluate_retriever` measured: mean metrics, the run, the judgments it was scored on, timing."""

    dataset: str
    split: str
    metrics: dict[str, float]
    run: Run
    qrels: Qrels
    search_s: float
    ignore_identical_ids: bool

    @property
    def n_queries(self) -> int:
        return len(self.qrels)

    def per_query(self, metric: str = "nDCG@10") -> dict[str, float]:
        """One metric (``nDCG@10``, ``Recall@100``...) per judged query, for significance tests."""
        name, _, cut = metric.partition("@")
        if not cut.isdigit():
            raise ValueError(f"metric must look like 'nDCG@10', got {metric!r}")
        return per_query(self.qrels, self.run, (int(cut),), self.ignore_identical_ids)[metric]


def ignores_identical_ids(dataset: str | Path) -> bool:
    """True for the BEIR datasets whose official scores drop a query's own id from its results."""
    return Path(dataset).name.lower() in IGNORE_IDENTICAL_IDS


def write_run_file(run: Run, path: str | Path, tag: str = "retrievekit") -> Path:
    """Write a run file atomically: TREC format, or JSON when the name ends in ``.json``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_run(run, path, tag=tag)
    return path


def evaluate_retriever(retriever: RunsQueries, dataset: BeirDataset | str | Path, *, split: str = "test",
                       k: int = 100, k_values: Iterable[int] = DEFAULT_K, max_queries: int | None = None,
                       ignore_identical_ids: bool | None = None, run_out: str | Path | None = None,
                       run_tag: str = "retrievekit") -> Evaluation:
    """Retrieve the top ``k`` for every judged query of a BEIR split and score the run.

    ``dataset`` is a loaded :class:`~retrieval.data.BeirDataset` or a BEIR folder (then ``split`` is read).
    Metrics are computed at ``k_values`` and ``k``; ``max_queries`` keeps the first N judged queries (smoke
    runs); ``ignore_identical_ids`` None follows BEIR (on for ArguAna and Quora). ``run_out`` keeps the run.
    """
    data = dataset if isinstance(dataset, BeirDataset) else load_beir(dataset, split)
    if max_queries is not None and max_queries < 1:
        raise ValueError(f"max_queries must be >= 1, got {max_queries}")
    qids = list(data.queries)[:max_queries]
    ignore = ignores_identical_ids(data.path) if ignore_identical_ids is None else ignore_identical_ids
    started = time.perf_counter()
    run = retriever.run({q: data.queries[q] for q in qids}, k=k)
    search_s = time.perf_counter() - started
    qrels = {q: data.qrels[q] for q in qids}
    metrics = evaluate(qrels, run, sorted({*k_values, k}), ignore_identical_ids=ignore)
    if run_out is not None:
        write_run_file(run, run_out, tag=run_tag)
    return Evaluation(dataset=data.path.resolve().name, split=data.split, metrics=metrics, run=run, qrels=qrels,
                      search_s=search_s, ignore_identical_ids=ignore)
