"""MTEB-style evaluation of an embedder on local folders, without the Hugging Face hub.

Each task is a folder of JSONL files, one per split (``test.jsonl``, ``train.jsonl`` ...). The task type
comes from an optional ``task.json`` (``{"type": "sts", "name": "STSBenchmark"}``) or else from the
fields of the first record:

* ``sts``: ``sentence1``, ``sentence2``, ``score`` (any scale) -> main score ``cosine_spearman``
* ``pair_classification``: ``sentence1``, ``sentence2``, ``label`` (0/1) -> ``max_ap``
* ``reranking``: ``query``, ``positive`` (list of str), ``negative`` (list of str) -> ``map``
* ``classification``: ``text``, ``label`` in ``test.jsonl`` and ``train.jsonl`` -> ``accuracy``

The computations follow MTEB's evaluators: STS is the Spearman correlation of cosine similarity with the
gold scores; pair classification is the best average precision over cosine, dot, Euclidean and Manhattan
scores (``max_ap``); reranking is mean AP and MRR@10 of the cosine ranking of each candidate list (MTEB
1.x ``RerankingEvaluator``); classification trains ``LogisticRegression(max_iter=100)`` on
``samples_per_label`` examples per label, ``n_experiments`` times, and reports mean test accuracy (same
undersampling and seed as MTEB). Identical texts are encoded once, as MTEB does.
"""
from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.data import DataError, iter_jsonl
from retrieval.errors import MissingDependency

logger = logging.getLogger(__name__)

TASK_TYPES = ("sts", "pair_classification", "reranking", "classification")
MAIN_SCORE = {"sts": "cosine_spearman", "pair_classification": "max_ap", "reranking": "map",
              "classification": "accuracy"}
_FIELDS = {  # task type -> fields every record must have
    "sts": ("sentence1", "sentence2", "score"),
    "pair_classification": ("sentence1", "sentence2", "label"),
    "reranking": ("query", "positive", "negative"),
    "classification": ("text", "label"),
}


@dataclass
class TaskResult:
    """Scores of one embedder on one task split."""

    task: str
    type: str
    split: str
    main_score: float
    metrics: dict[str, float]
    n: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sklearn():
    try:
        import sklearn  # noqa: F401
    except ImportError as exc:
        raise MissingDependency("MTEB-style tasks need scikit-learn: pip install scikit-learn") from exc


def encode_texts(encoder: Any, texts: Sequence[str], role: str = "query") -> np.ndarray:
    """Embed texts with our BiEncoder (``encode_queries``/``encode_documents``) or any ``encode(list)`` model.

    Each distinct text is encoded once; rows come back in the input order, float32.
    """
    unique = list(dict.fromkeys(texts))
    if hasattr(encoder, "encode_queries"):
        fn = encoder.encode_documents if role == "document" and hasattr(encoder, "encode_documents") \
            else encoder.encode_queries
        emb = fn(unique)
    elif hasattr(encoder, "encode"):
        emb = encoder.encode(unique)
    else:
        raise TypeError(f"{type(encoder).__name__} has neither encode_queries() nor encode()")
    emb = np.asarray(emb, dtype=np.float32)
    if emb.ndim != 2 or len(emb) != len(unique):
        raise ValueError(f"encoder returned shape {emb.shape} for {len(unique)} texts")
    pos = {t: i for i, t in enumerate(unique)}
    return emb[[pos[t] for t in texts]]


def _normalize(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1.0, norms)


def pair_scores(e1: np.ndarray, e2: np.ndarray) -> dict[str, tuple[np.ndarray, bool]]:
    """Similarity of each row pair: name -> (scores, higher_is_more_similar)."""
    cos = np.sum(_normalize(e1) * _normalize(e2), axis=1)
    diff = e1.astype(np.float64) - e2.astype(np.float64)
    return {"cosine": (cos, True), "dot": (np.sum(e1.astype(np.float64) * e2, axis=1), True),
            "euclidean": (np.linalg.norm(diff, axis=1), False), "manhattan": (np.abs(diff).sum(axis=1), False)}


def evaluate_sts(encoder: Any, sentences1: Sequence[str], sentences2: Sequence[str],
                 gold: Sequence[float]) -> dict[str, float]:
    """Spearman and Pearson correlation of cosine (and distance) similarity with the gold scores."""
    from scipy.stats import pearsonr, spearmanr

    e1, e2 = encode_texts(encoder, sentences1), encode_texts(encoder, sentences2)
    gold_arr = np.asarray(gold, dtype=np.float64)
    out = {}
    for name, (scores, higher) in pair_scores(e1, e2).items():
        signed = scores if higher else -scores
        out[f"{name}_spearman"] = float(spearmanr(gold_arr, signed).statistic)
        out[f"{name}_pearson"] = float(pearsonr(gold_arr, signed).statistic)
    return out


def evaluate_pair_classification(encoder: Any, sentences1: Sequence[str], sentences2: Sequence[str],
                                 labels: Sequence[int]) -> dict[str, float]:
    """Average precision of each similarity at telling positive pairs from negative ones; ``max_ap`` is the best."""
    _sklearn()
    from sklearn.metrics import average_precision_score

    y = np.asarray(labels, dtype=np.int64)
    if set(np.unique(y).tolist()) - {0, 1}:
        raise ValueError(f"pair classification labels must be 0/1, got {sorted(set(y.tolist()))[:5]}")
    e1, e2 = encode_texts(encoder, sentences1), encode_texts(encoder, sentences2)
    out = {f"{name}_ap": float(average_precision_score(y, s if higher else -s))
           for name, (s, higher) in pair_scores(e1, e2).items()}
    out["max_ap"] = max(out.values())
    return out


def evaluate_reranking(encoder: Any, samples: Sequence[dict[str, Any]], mrr_k: int = 10) -> dict[str, float]:
    """Mean AP and MRR@k of ranking each sample's positives above its negatives by cosine to the query."""
    _sklearn()
    from sklearn.metrics import average_precision_score

    usable = [s for s in samples if s["positive"] and s["negative"]]
    if not usable:
        raise ValueError("no reranking sample has both positives and negatives")
    queries = encode_texts(encoder, [s["query"] for s in usable])
    docs = encode_texts(encoder, [d for s in usable for d in s["positive"] + s["negative"]], role="document")
    aps, rrs, start = [], [], 0
    for q, s in zip(_normalize(queries), usable):
        n_pos, n = len(s["positive"]), len(s["positive"]) + len(s["negative"])
        sims = _normalize(docs[start:start + n]) @ q
        start += n
        relevant = np.arange(n) < n_pos
        aps.append(average_precision_score(relevant, sims))
        top = np.argsort(-sims, kind="stable")[:mrr_k]
        rrs.append(next((1.0 / (r + 1) for r, i in enumerate(top) if relevant[i]), 0.0))
    return {"map": float(np.mean(aps)), f"mrr@{mrr_k}": float(np.mean(rrs))}


def undersample(labels: Sequence[Any], samples_per_label: int, n_experiments: int, seed: int = 42) -> list[list[int]]:
    """MTEB's training subsets: each experiment reshuffles the index list with ``RandomState(seed)``."""
    idxs = list(range(len(labels)))
    subsets = []
    for _ in range(n_experiments):
        np.random.RandomState(seed).shuffle(idxs)
        counts: dict[Any, int] = defaultdict(int)
        chosen = []
        for i in idxs:
            if counts[labels[i]] < samples_per_label:
                chosen.append(i)
                counts[labels[i]] += 1
        subsets.append(chosen)
    return subsets


def evaluate_classification(encoder: Any, train_texts: Sequence[str], train_labels: Sequence[Any],
                            test_texts: Sequence[str], test_labels: Sequence[Any], samples_per_label: int = 8,
                            n_experiments: int = 10, seed: int = 42) -> dict[str, float]:
    """Logistic regression on embeddings of few examples per label; mean accuracy and macro-F1 on the test set."""
    _sklearn()
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    subsets = undersample(list(train_labels), samples_per_label, n_experiments, seed)
    needed = sorted(set().union(*subsets))
    train_emb = encode_texts(encoder, [train_texts[i] for i in needed])
    row = {orig: pos for pos, orig in enumerate(needed)}
    test_emb = encode_texts(encoder, test_texts)
    accs, f1s = [], []
    for subset in subsets:
        clf = LogisticRegression(max_iter=100)
        clf.fit(train_emb[[row[i] for i in subset]], [train_labels[i] for i in subset])
        pred = clf.predict(test_emb)
        accs.append(accuracy_score(test_labels, pred))
        f1s.append(f1_score(test_labels, pred, average="macro"))
    return {"accuracy": float(np.mean(accs)), "f1": float(np.mean(f1s)), "accuracy_std": float(np.std(accs))}


@dataclass
class LocalTask:
    """A task folder: its name, type and the splits found on disk."""

    name: str
    type: str
    path: Path
    splits: list[str]

    def records(self, split: str) -> list[dict[str, Any]]:
        """All records of a split, each checked for the fields its task type needs."""
        path = self.path / f"{split}.jsonl"
        if not path.exists():
            raise DataError(f"{path}: no such split; available: {self.splits}")
        out = []
        for n, rec in iter_jsonl(path):
            for f in _FIELDS[self.type]:
                if f not in rec:
                    raise DataError(f"{path}, line {n}, field {f!r}: missing (needed by {self.type} tasks)")
            out.append(rec)
        return out


def load_task(folder: str | Path) -> LocalTask:
    """Describe a task folder; the type comes from ``task.json`` or the first record's fields."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    splits = sorted(p.name[: -len(".jsonl")] for p in folder.glob("*.jsonl"))
    if not splits:
        raise DataError(f"{folder}: no <split>.jsonl files")
    meta: dict[str, Any] = {}
    if (folder / "task.json").exists():
        meta = json.loads((folder / "task.json").read_text(encoding="utf-8"))
    task_type = meta.get("type") or _guess_type(folder / f"{'test' if 'test' in splits else splits[0]}.jsonl")
    if task_type not in TASK_TYPES:
        raise DataError(f"{folder / 'task.json'}, field 'type': {task_type!r} is not one of {TASK_TYPES}")
    return LocalTask(name=meta.get("name", folder.name), type=task_type, path=folder, splits=splits)


def _guess_type(path: Path) -> str:
    _, first = next(iter_jsonl(path))
    keys = set(first)
    if {"sentence1", "sentence2", "score"} <= keys:
        return "sts"
    if {"sentence1", "sentence2", "label"} <= keys:
        return "pair_classification"
    if {"query", "positive", "negative"} <= keys:
        return "reranking"
    if {"text", "label"} <= keys:
        return "classification"
    raise DataError(f"{path}, line 1: cannot tell the task type from fields {sorted(keys)}; add a task.json")


def run_task(encoder: Any, folder: str | Path | LocalTask, split: str = "test", limit: int | None = None,
             **options: Any) -> TaskResult:
    """Evaluate ``encoder`` on one split of a task folder (``limit`` keeps the first n records, for smoke tests)."""
    task = folder if isinstance(folder, LocalTask) else load_task(folder)
    recs = task.records(split)[:limit]
    start = time.perf_counter()
    if task.type == "sts":
        metrics = evaluate_sts(encoder, [r["sentence1"] for r in recs], [r["sentence2"] for r in recs],
                               [float(r["score"]) for r in recs])
    elif task.type == "pair_classification":
        metrics = evaluate_pair_classification(encoder, [r["sentence1"] for r in recs],
                                               [r["sentence2"] for r in recs], [int(r["label"]) for r in recs])
    elif task.type == "reranking":
        metrics = evaluate_reranking(encoder, recs, **options)
    else:
        train = task.records(options.pop("train_split", "train"))[:limit]
        metrics = evaluate_classification(encoder, [r["text"] for r in train], [r["label"] for r in train],
                                          [r["text"] for r in recs], [r["label"] for r in recs], **options)
    seconds = time.perf_counter() - start
    main = MAIN_SCORE[task.type]
    logger.info("%s (%s, %s): %s %.4f in %.1fs", task.name, task.type, split, main, metrics[main], seconds)
    return TaskResult(task.name, task.type, split, metrics[main], metrics, len(recs), seconds)
