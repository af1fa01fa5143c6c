"""IR metrics computed with pytrec_eval, so the numbers equal BEIR's and trec_eval's.

``evaluate`` takes BEIR-style dicts (``qrels[qid][docid] = grade``, ``run[qid][docid] = score``) and
returns ``{"nDCG@10": ..., "MAP@10": ..., "Recall@100": ..., "P@10": ..., "MRR@10": ...}``.

Averaging follows BEIR's ``EvaluateRetrieval.evaluate`` exactly: nDCG, MAP, Recall and P are means over
the queries pytrec_eval scores (judged queries that appear in the run, even with no hits); MRR@k is
BEIR's ``custom_metrics.mrr`` (first relevant document, grade > 0, in the top k sorted by score) summed
over the run and divided by the number of judged queries, with ties ordered as trec_eval orders them (BEIR
leaves them in dict order), so MRR@k equals pytrec_eval's ``recip_rank`` on the same top k. BEIR rounds to
5 digits; we do not.
"""
from __future__ import annotations

import json
import logging
import math
import numbers
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.data import GRADE_RANGE, check_id, iter_lines
from retrieval.errors import DataError, MissingDependency
from retrieval.persistence import atomic_file
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


def _check_k(k_values: Iterable[int] | int) -> list[int]:
    """The cut-offs, sorted and unique: one int or a list of ints >= 1 (1.5, "10" and True are refused, not cut
    to 1, 10 and 1)."""
    values = [k_values] if isinstance(k_values, (int, np.integer)) else k_values
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ValueError(f"k_values must be a positive integer or a list of them, got {k_values!r}")
    values = list(values)
    if not values or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in values):
        raise ValueError(f"k_values must be positive integers, got {values!r}")
    return sorted(set(int(k) for k in values))


def _clean_grade(grade: Any, where: str) -> int:
    ok = isinstance(grade, numbers.Real) and not isinstance(grade, bool) and math.isfinite(grade)
    if not ok or int(grade) != grade:
        raise ValueError(f"{where}: relevance grade {grade!r} is not an integer")
    if not GRADE_RANGE[0] <= int(grade) <= GRADE_RANGE[1]:
        raise ValueError(f"{where}: relevance grade {grade!r} is out of range (pytrec_eval uses 32-bit ints)")
    return int(grade)


def _clean_qrels(qrels: Qrels) -> Qrels:
    """pytrec_eval needs int grades; reject anything else early with the query and document named."""
    if not isinstance(qrels, Mapping):
        raise ValueError(f"qrels must be {{qid: {{docid: grade}}}}, got {type(qrels).__name__}")
    rows = []
    for qid, docs in qrels.items():
        if not isinstance(docs, Mapping):
            raise ValueError(f"qrels[{qid!r}]: expected {{docid: grade}}, got {type(docs).__name__}")
        row = _text_keys(((did, _clean_grade(grade, f"qrels[{qid!r}][{did!r}]")) for did, grade in docs.items()),
                         f"qrels[{qid!r}]", "docid")
        rows.append((qid, row))
    return _text_keys(rows, "qrels", "qid")


def _text_keys(items: Iterable[tuple[Any, Any]], where: str, field: str) -> dict[str, Any]:
    """``{str(key): value}``, each key a usable id; two keys with the same text (``1`` and ``"1"``) are an error,
    since one of them would silently be lost."""
    out: dict[str, Any] = {}
    keys: dict[str, Any] = {}
    for key, value in items:
        text = check_id(str(key), where, field)
        if text in out:
            raise DataError(f"{where}: {field}s {keys[text]!r} and {key!r} are the same id as text ({text!r}); "
                             "one would be lost")
        out[text], keys[text] = value, key
    return out


def _clean_score(score: Any, where: str) -> float:
    try:
        value = float(score)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{where}: score {score!r} is not a number") from None
    if math.isnan(value):
        raise ValueError(f"{where}: score is NaN")
    return value


def _clean_run(run: Run) -> Run:
    """pytrec_eval needs float scores; NaN would silently corrupt the ranking, so it is an error."""
    if not isinstance(run, Mapping):
        raise ValueError(f"a run must be {{qid: {{docid: score}}}}, got {type(run).__name__}")
    rows = []
    for qid, docs in run.items():
        if not isinstance(docs, Mapping):
            raise ValueError(f"run[{qid!r}]: expected {{docid: score}}, got {type(docs).__name__}")
        row = _text_keys(((did, _clean_score(score, f"run[{qid!r}][{did!r}]")) for did, score in docs.items()),
                         f"run[{qid!r}]", "docid")
        rows.append((qid, row))
    return _text_keys(rows, "run", "qid")


def drop_self_hits(run: Run) -> Run:
    """Remove a query's own id from its results (BEIR does this for ArguAna and Quora); input untouched."""
    return {qid: {d: s for d, s in docs.items() if d != qid} for qid, docs in run.items()}


def mrr_at_k(qrels: Qrels, run: Run, k: int) -> dict[str, float]:
    """Per judged query: reciprocal rank of the first relevant (grade > 0) document in the top k (0 if none).

    Ties are ordered as trec_eval orders them (score, then document id, both descending), so MRR ranks the
    documents exactly as the nDCG, MAP and P that pytrec_eval computes beside it (BEIR's dict order did not).
    """
    out = {}
    for qid, rels in qrels.items():
        ranked = sorted(run.get(qid, {}).items(), key=lambda x: (x[1], x[0]), reverse=True)[:k]
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


def _trec_token(value: Any, what: str, where: str) -> str:
    """An id or tag as written in a TREC file: one non-empty word of valid Unicode, or a DataError naming it."""
    text = str(value)
    if text.split() != [text]:
        raise DataError(f"{where}: {what} {text!r} is empty or contains whitespace; TREC run files are "
                        "whitespace-separated, so it cannot be written (rename it, or write a .json run)")
    return check_id(text, where, what)


def _scores(docs: Any, where: str) -> list[tuple[Any, float]]:
    """A query's ``(docid, score)`` pairs in the given order, every score a number (NaN refused) for writing."""
    if not isinstance(docs, Mapping):
        raise DataError(f"{where}: expected {{docid: score}}, got {type(docs).__name__}")
    try:
        return [(did, _clean_score(score, f"{where}, document {did!r}")) for did, score in docs.items()]
    except ValueError as exc:
        raise DataError(str(exc)) from None


def write_trec_run(run: Run, path: str | Path, tag: str = "retrievekit") -> None:
    """Write a run in TREC format: ``qid Q0 docid rank score tag``, best first (atomically).

    Ids and the tag must be single words (TREC files are whitespace-separated): anything else is a
    :class:`DataError` naming the id, and no file is written.
    """
    path = Path(path)
    tag = _trec_token(tag, "tag", str(path))
    clean = _text_run(run, path)
    for qid, docs in clean.items():
        _trec_token(qid, "query id", str(path))
        for did in docs:
            _trec_token(did, "document id", f"{path}: query {qid!r}")
    with atomic_file(path) as fh:
        for qid, docs in clean.items():
            ranked = sorted(docs.items(), key=lambda x: x[1], reverse=True)
            for rank, (did, score) in enumerate(ranked, start=1):
                fh.write(f"{qid} Q0 {did} {rank} {score!r} {tag}\n")


def _trec_score(text: str, path: Path, n: int) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{path}, line {n}, field 'score': {text[:40]!r} is not a number") from None
    if math.isnan(value):
        raise DataError(f"{path}, line {n}, field 'score': score is NaN")
    return value


def read_trec_run(path: str | Path) -> Run:
    """Read a TREC-format run file (``qid Q0 docid rank score tag``).

    A document listed twice for a query is an error naming the line if the scores differ, and is
    kept once (counted in a warning) if they are equal.
    """
    path = Path(path)
    run: Run = {}
    repeats = 0
    for n, line in iter_lines(path):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 6:
            raise DataError(f"{path}, line {n}: expected 'qid Q0 docid rank score tag', got {len(parts)} fields")
        qid = check_id(parts[0], f"{path}, line {n}", "qid")
        did, score = check_id(parts[2], f"{path}, line {n}", "docid"), _trec_score(parts[4], path, n)
        row = run.setdefault(qid, {})
        if did in row and row[did] != score:
            raise DataError(f"{path}, line {n}: document {did!r} is listed again for query {qid!r} "
                            f"with another score ({score!r}, before {row[did]!r})")
        repeats += did in row
        row[did] = score
    if repeats:
        logger.warning("%s: %d repeated lines (same query, document and score) were kept once", path, repeats)
    return run


def write_json_run(run: Run, path: str | Path) -> None:
    """Write a run as one JSON object ``{qid: {docid: score}}`` (atomically; NaN scores are refused)."""
    clean = _text_run(run, Path(path))
    with atomic_file(Path(path)) as fh:
        fh.write(json.dumps(clean))


def _text_run(run: Run, path: Path) -> dict[str, dict[str, float]]:
    """The run to write, ids as text (two ids that write alike are an error) and every score a number."""
    if not isinstance(run, Mapping):
        raise DataError(f"{path}: a run is {{qid: {{docid: score}}}}, got {type(run).__name__}")
    rows = ((qid, _text_keys(_scores(docs, f"{path}: query {qid!r}"), f"{path}: query {qid!r}", "docid"))
            for qid, docs in run.items())
    return _text_keys(rows, str(path), "query id")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` for json.loads: a key repeated in one object (a query or document listed twice) is an error."""
    out = dict(pairs)
    if len(out) != len(pairs):
        keys = [k for k, _ in pairs]
        twice = next(k for i, k in enumerate(keys) if k in keys[:i])
        raise DataError(f"key {twice!r} appears twice in one object")
    return out


def _json_score(score: Any, path: Path, qid: str, did: str) -> float:
    where = f"{path}, query {qid!r}, document {did!r}"
    if isinstance(score, bool) or not isinstance(score, (int, float)):
        raise DataError(f"{where}: score must be a number, got {type(score).__name__}")
    try:
        value = float(score)
    except OverflowError:
        raise DataError(f"{where}: score is out of range") from None
    if math.isnan(value):
        raise DataError(f"{where}: score is NaN")
    return value


def _load_json(path: Path) -> Any:
    """Parse a JSON file, naming the file (and line) for every problem, including damaged ``.gz`` data."""
    text = "".join(line for _, line in iter_lines(path))
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}, line {exc.lineno}: malformed JSON ({exc.msg})") from None
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None
    except (ValueError, RecursionError) as exc:  # a >4300-digit integer, nesting too deep
        raise DataError(f"{path}: unreadable JSON ({type(exc).__name__}: {str(exc)[:80]})") from None


def read_json_run(path: str | Path) -> Run:
    """Read a JSON run ``{qid: {docid: score}}``, checking its shape (a key repeated in one object is an error)."""
    path = Path(path)
    obj = _load_json(path)
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a JSON object {{qid: {{docid: score}}}}")
    run: Run = {}
    for qid, docs in obj.items():
        if not isinstance(docs, dict):
            raise DataError(f"{path}, query {qid!r}: expected {{docid: number}}, got {type(docs).__name__}")
        where = f"{path}, query {qid!r}"
        run[check_id(qid, str(path), "qid")] = {check_id(did, where, "docid"): _json_score(s, path, qid, did)
                                               for did, s in docs.items()}
    return run


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
