"""IR metrics computed with pytrec_eval, so the numbers equal BEIR's and trec_eval's.

``evaluate`` takes BEIR-style dicts (``qrels[qid][docid] = grade``, ``run[qid][docid] = score``) and
returns ``{"nDCG@10": ..., "MAP@10": ..., "Recall@100": ..., "P@10": ..., "MRR@10": ...}``.
MRR@k follows BEIR's own definition (first relevant document in the top k sorted by score).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

from .errors import MissingDependency
from .types import Qrels, Run

logger = logging.getLogger(__name__)

MEASURES = ("nDCG", "MAP", "Recall", "P", "MRR")
DEFAULT_K = (1, 10, 100)


def _pytrec_eval():
    try:
        import pytrec_eval
    except ImportError as exc:
        raise MissingDependency("evaluation needs pytrec_eval: pip install pytrec-eval-terrier") from exc
    return pytrec_eval


def drop_self_hits(run: Run) -> Run:
    """Remove a query's own id from its results (BEIR does this for ArguAna and Quora)."""
    return {qid: {d: s for d, s in docs.items() if d != qid} for qid, docs in run.items()}


def mrr_at_k(qrels: Qrels, run: Run, k: int) -> dict[str, float]:
    """Per-query reciprocal rank of the first relevant (grade > 0) document in the top k, as BEIR computes it."""
    out = {}
    for qid, rels in qrels.items():
        ranked = sorted(run.get(qid, {}).items(), key=lambda x: x[1], reverse=True)[:k]
        out[qid] = next((1.0 / (i + 1) for i, (d, _) in enumerate(ranked) if rels.get(d, 0) > 0), 0.0)
    return out


def per_query(qrels: Qrels, run: Run, k_values: Iterable[int] = DEFAULT_K,
              ignore_identical_ids: bool = False) -> dict[str, dict[str, float]]:
    """Per-query scores: ``{"nDCG@10": {qid: value}, ...}`` over the judged queries (missing runs score 0)."""
    k_values = sorted(set(int(k) for k in k_values))
    if not k_values or k_values[0] < 1:
        raise ValueError(f"k_values must be positive integers, got {k_values}")
    if ignore_identical_ids:
        run = drop_self_hits(run)
    pytrec_eval = _pytrec_eval()
    ks = ",".join(map(str, k_values))
    measures = {f"ndcg_cut.{ks}", f"map_cut.{ks}", f"recall.{ks}", f"P.{ks}"}
    # pytrec_eval drops queries with no run; BEIR averages over the evaluated ones only. We keep
    # BEIR's behaviour for queries present in the run and give the absent ones zero, logged.
    clean_run = {qid: {d: float(s) for d, s in docs.items()} for qid, docs in run.items()}
    scores = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(clean_run)
    missing = [q for q in qrels if q not in scores]
    if missing:
        logger.warning("%d judged queries have no results; they score 0", len(missing))
    names = {"ndcg_cut": "nDCG", "map_cut": "MAP", "recall": "Recall", "P": "P"}
    out: dict[str, dict[str, float]] = {}
    for k in k_values:
        for trec, ours in names.items():
            out[f"{ours}@{k}"] = {q: scores.get(q, {}).get(f"{trec}_{k}", 0.0) for q in qrels}
        out[f"MRR@{k}"] = mrr_at_k(qrels, clean_run, k)
    return out


def evaluate(qrels: Qrels, run: Run, k_values: Iterable[int] = DEFAULT_K,
             ignore_identical_ids: bool = False) -> dict[str, float]:
    """Mean of each metric over the judged queries that have results (BEIR's convention)."""
    table = per_query(qrels, run, k_values, ignore_identical_ids)
    evaluated = [q for q in qrels if q in run]
    if not evaluated:
        raise ValueError("no judged query has results in the run")
    return {name: sum(vals[q] for q in evaluated) / len(evaluated) for name, vals in table.items()}


def write_trec_run(run: Run, path: str | Path, tag: str = "retrievekit") -> None:
    """Write a run in TREC format: ``qid Q0 docid rank score tag``."""
    path = Path(path)
    with path.open("w", encoding="utf-8") as fh:
        for qid, docs in run.items():
            ranked = sorted(docs.items(), key=lambda x: x[1], reverse=True)
            for rank, (did, score) in enumerate(ranked, start=1):
                fh.write(f"{qid} Q0 {did} {rank} {score:.6f} {tag}\n")


def read_trec_run(path: str | Path) -> Run:
    """Read a TREC-format run file."""
    from .data import DataError, iter_lines

    path = Path(path)
    run: Run = {}
    for n, line in iter_lines(path):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 6:
            raise DataError(f"{path}, line {n}: expected 'qid Q0 docid rank score tag'")
        try:
            run.setdefault(parts[0], {})[parts[2]] = float(parts[4])
        except ValueError:
            raise DataError(f"{path}, line {n}, field 'score': {parts[4]!r} is not a number") from None
    return run


def write_json_run(run: Run, path: str | Path) -> None:
    Path(path).write_text(json.dumps(run), encoding="utf-8")


def format_metrics(metrics: Mapping[str, float], names: Iterable[str] = ("nDCG@10", "MAP@10", "Recall@100", "MRR@10")) -> str:
    """One line like ``nDCG@10 0.6863  MAP@10 0.6412 ...`` for logs and the CLI."""
    return "  ".join(f"{n} {metrics[n]:.4f}" for n in names if n in metrics)
