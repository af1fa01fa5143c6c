"""IR metrics computed with pytrec_eval, so the numbers equal BEIR's and trec_eval's.

``evaluate`` takes BEIR-style dicts (``qrels[qid][docid] = grade``, ``run[qid][docid] = score``) and
returns ``{"nDCG@10": ..., "MAP@10": ..., "Recall@100": ..., "P@10": ..., "MRR@10": ...}``.

Averaging follows BEIR's ``EvaluateRetrieval.evaluate`` exactly: nDCG, MAP, Recall and P are means over
the queries pytrec_eval scores (judged queries that appear in the run, even with no hits); MRR@k is
BEIR's ``custom_metrics.mrr`` (first relevant document, grade > 0, in the top k sorted by score) summed
over the run and divided by the number of judged queries. BEIR rounds to 5 digits; we do not.
"""
from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

from retrieval.errors import MissingDependency
from retrieval.types import Qrels, Run

logger = logging.getLogger(__name__)

MEASURES = ("nDCG", "MAP", "Recall", "P", "MRR")
DEFAULT_K = (1, 10, 100)
_TREC_NAMES = {"ndcg_cut": "nDCG", "map_cut": "MAP", "recall": "Recall", "P": "P"}


def _pytrec_eval():
    try:
        import pytrec_eval
    except ImportError as exc:
        raise MissingDependency("evaluation needs pytrec_eval: pip install pytrec-eval-terrier") from exc
    return pytrec_eval


def _check_k(k_values: Iterable[int]) -> list[int]:
    ks = sorted(set(int(k) for k in k_values))
    if not ks or ks[0] < 1:
        raise ValueError(f"k_values must be positive integers, got {ks}")
    return ks


def _clean_qrels(qrels: Qrels) -> Qrels:
    """pytrec_eval needs int grades; reject anything else early with the query and document named."""
    out: Qrels = {}
    for qid, docs in qrels.items():
        row = {}
        for did, grade in docs.items():
            if isinstance(grade, bool) or not isinstance(grade, (int, float)) or int(grade) != grade:
                raise ValueError(f"qrels[{qid!r}][{did!r}]: relevance grade {grade!r} is not an integer")
            row[str(did)] = int(grade)
        out[str(qid)] = row
    return out


def _clean_run(run: Run) -> Run:
    """pytrec_eval needs float scores; NaN would silently corrupt the ranking, so it is an error."""
    out: Run = {}
    for qid, docs in run.items():
        row = {}
        for did, score in docs.items():
            value = float(score)
            if math.isnan(value):
                raise ValueError(f"run[{qid!r}][{did!r}]: score is NaN")
            row[str(did)] = value
        out[str(qid)] = row
    return out


def drop_self_hits(run: Run) -> Run:
    """Remove a query's own id from its results (BEIR does this for ArguAna and Quora); input untouched."""
    return {qid: {d: s for d, s in docs.items() if d != qid} for qid, docs in run.items()}


def mrr_at_k(qrels: Qrels, run: Run, k: int) -> dict[str, float]:
    """Per judged query: reciprocal rank of the first relevant (grade > 0) document in the top k (0 if none)."""
    out = {}
    for qid, rels in qrels.items():
        ranked = sorted(run.get(qid, {}).items(), key=lambda x: x[1], reverse=True)[:k]
        out[qid] = next((1.0 / (i + 1) for i, (d, _) in enumerate(ranked) if rels.get(d, 0) > 0), 0.0)
    return out


def per_query(qrels: Qrels, run: Run, k_values: Iterable[int] = DEFAULT_K,
              ignore_identical_ids: bool = False) -> dict[str, dict[str, float]]:
    """Per-query scores: ``{"nDCG@10": {qid: value}, ...}`` over all judged queries (missing runs score 0)."""
    ks = _check_k(k_values)
    qrels = _clean_qrels(qrels)
    run = _clean_run(run)
    if ignore_identical_ids:
        run = drop_self_hits(run)
    joined = ",".join(map(str, ks))
    measures = {f"{name}.{joined}" for name in _TREC_NAMES}
    scores = _pytrec_eval().RelevanceEvaluator(qrels, measures).evaluate(run)
    missing = [q for q in qrels if q not in scores]
    if missing:
        logger.warning("%d of %d judged queries have no results; they score 0 per query", len(missing), len(qrels))
    out: dict[str, dict[str, float]] = {}
    for k in ks:
        for trec, ours in _TREC_NAMES.items():
            out[f"{ours}@{k}"] = {q: scores[q][f"{trec}_{k}"] if q in scores else 0.0 for q in qrels}
        out[f"MRR@{k}"] = mrr_at_k(qrels, run, k)
    return out


def evaluate(qrels: Qrels, run: Run, k_values: Iterable[int] = DEFAULT_K,
             ignore_identical_ids: bool = False) -> dict[str, float]:
    """Mean metrics as BEIR reports them (see the module docstring for which queries each mean covers)."""
    table = per_query(qrels, run, k_values, ignore_identical_ids)
    in_run = {str(q) for q in run}
    evaluated = [q for q in map(str, qrels) if q in in_run]
    if not evaluated:
        raise ValueError("no judged query has results in the run (check that query ids match the qrels)")
    out = {}
    for name, values in table.items():
        if name.startswith("MRR@"):
            out[name] = sum(values.values()) / len(values)
        else:
            out[name] = sum(values[q] for q in evaluated) / len(evaluated)
    return out


def write_trec_run(run: Run, path: str | Path, tag: str = "retrievekit") -> None:
    """Write a run in TREC format: ``qid Q0 docid rank score tag``, best first."""
    path = Path(path)
    with path.open("w", encoding="utf-8") as fh:
        for qid, docs in run.items():
            ranked = sorted(docs.items(), key=lambda x: x[1], reverse=True)
            for rank, (did, score) in enumerate(ranked, start=1):
                fh.write(f"{qid} Q0 {did} {rank} {float(score)!r} {tag}\n")


def read_trec_run(path: str | Path) -> Run:
    """Read a TREC-format run file (``qid Q0 docid rank score tag``)."""
    from retrieval.data import DataError, iter_lines

    path = Path(path)
    run: Run = {}
    for n, line in iter_lines(path):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 6:
            raise DataError(f"{path}, line {n}: expected 'qid Q0 docid rank score tag', got {len(parts)} fields")
        try:
            run.setdefault(parts[0], {})[parts[2]] = float(parts[4])
        except ValueError:
            raise DataError(f"{path}, line {n}, field 'score': {parts[4]!r} is not a number") from None
    return run


def write_json_run(run: Run, path: str | Path) -> None:
    """Write a run as one JSON object ``{qid: {docid: score}}``."""
    Path(path).write_text(json.dumps(run), encoding="utf-8")


def read_json_run(path: str | Path) -> Run:
    """Read a JSON run ``{qid: {docid: score}}``, checking its shape."""
    from retrieval.data import DataError

    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}, line {exc.lineno}: malformed JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a JSON object {{qid: {{docid: score}}}}")
    for qid, docs in obj.items():
        if not isinstance(docs, dict) or not all(isinstance(s, (int, float)) for s in docs.values()):
            raise DataError(f"{path}, query {qid!r}: expected {{docid: number}}")
    return {str(q): {str(d): float(s) for d, s in docs.items()} for q, docs in obj.items()}


def read_run(path: str | Path) -> Run:
    """Read a run file: ``.json`` as JSON, anything else as TREC format."""
    return read_json_run(path) if str(path).lower().endswith(".json") else read_trec_run(path)


def write_run(run: Run, path: str | Path, tag: str = "retrievekit") -> None:
    """Write a run file: ``.json`` as JSON, anything else as TREC format."""
    if str(path).lower().endswith(".json"):
        write_json_run(run, path)
    else:
        write_trec_run(run, path, tag=tag)


def format_metrics(metrics: Mapping[str, float], names: Iterable[str] = ("nDCG@10", "MAP@10", "Recall@100", "MRR@10")) -> str:
    """One line like ``nDCG@10 0.6863  MAP@10 0.6412 ...`` for logs and the CLI."""
    return "  ".join(f"{n} {metrics[n]:.4f}" for n in names if n in metrics)
