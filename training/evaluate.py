"""Before/after retrieval quality of an embedding model on a BEIR split (exact cosine search, nDCG@10 etc.)."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from sentence_transformers import SentenceTransformer

from retrieval.data import load_beir
from retrieval.dense.encoders import BiEncoder
from retrieval.eval.metrics import evaluate, write_trec_run
from retrieval.persistence import atomic_write_text
from retrieval.types import Document, Run

logger = logging.getLogger(__name__)


def exact_search(queries: np.ndarray, docs: np.ndarray, doc_ids: list[str], query_ids: list[str], k: int) -> Run:
    """Top-``k`` documents per query by dot product (cosine for unit vectors)."""
    run: Run = {}
    k = min(k, len(doc_ids))
    for start in range(0, len(query_ids), 256):
        scores = queries[start:start + 256] @ docs.T  # (q, n)
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        for row, qid in enumerate(query_ids[start:start + 256]):
            run[qid] = {doc_ids[j]: float(scores[row, j]) for j in top[row]}
    return run


def _suffixed(cache: Path, suffix: str) -> Path:
    """``cache`` + ``suffix``; not ``with_suffix``, which would cut a name with dots in it (python3.11, -256)."""
    return cache.parent / (cache.name + suffix)


def _cached_corpus(cache: Path | None, ids: list[str]) -> np.ndarray | None:
    if cache is None or not _suffixed(cache, ".npy").exists() or not _suffixed(cache, ".json").exists():
        return None
    meta = json.loads(_suffixed(cache, ".json").read_text(encoding="utf-8"))
    if meta.get("ids") != ids:
        logger.warning("%s: cached embeddings are for other documents; re-encoding", cache)
        return None
    return np.load(_suffixed(cache, ".npy"), allow_pickle=False)


def _store_corpus(cache: Path, ids: list[str], vectors: np.ndarray) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = _suffixed(cache, ".tmp.npy")
    np.save(tmp, vectors, allow_pickle=False)
    tmp.replace(_suffixed(cache, ".npy"))
    atomic_write_text(_suffixed(cache, ".json"), json.dumps({"ids": ids}))


def evaluate_on_beir(model: SentenceTransformer, beir_dir: str | Path, split: str = "test",
                     max_seq_length: int = 256, batch_size: int = 32, k: int = 100,
                     cache: str | Path | None = None, show_progress: bool = True,
                     run_path: str | Path | None = None) -> dict[str, float]:
    """nDCG@10, Recall@100, ... of ``model`` on ``beir_dir``'s ``split`` (title + text, exact search).

    Encoding goes through :class:`retrieval.dense.encoders.BiEncoder`, so prefixes and normalisation are the
    ones ``Retriever(method="dense")`` will use with the saved model.

    ``cache`` (a path without suffix) stores the corpus vectors; use it only for a model that does not change.
    ``run_path`` keeps the run (TREC format, written atomically) for per-query comparisons.
    """
    data = load_beir(beir_dir, split)
    docs: list[Document] = list(data.corpus())
    ids = [d.id for d in docs]
    old_length = model.max_seq_length
    was_training = model.training
    model.eval()
    try:
        encoder = BiEncoder.from_model(model, max_seq_length=max_seq_length, batch_size=batch_size,
                                       show_progress=show_progress)
        started = time.perf_counter()
        cache_path = Path(cache) if cache is not None else None
        doc_vectors = _cached_corpus(cache_path, ids)
        if doc_vectors is None:
            doc_vectors = encoder.encode_documents(docs)
            if cache_path is not None:
                _store_corpus(cache_path, ids, doc_vectors)
        query_ids = list(data.queries)
        query_vectors = encoder.encode_queries([data.queries[q] for q in query_ids])
        seconds = time.perf_counter() - started
    finally:
        model.max_seq_length = old_length
        model.train(was_training)
    run = exact_search(query_vectors, doc_vectors, ids, query_ids, k)
    if run_path is not None:
        run_path = Path(run_path)
        run_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = run_path.parent / (run_path.name + ".tmp")
        write_trec_run(run, tmp)
        tmp.replace(run_path)
    metrics = evaluate(data.qrels, run)
    metrics["eval_seconds"] = seconds
    logger.info("%s/%s: nDCG@10 %.4f (%.0f s)", Path(beir_dir).name, split, metrics["nDCG@10"], seconds)
    return metrics


def compare_with_before(beir_dir: str | Path, split: str, before_run: str | Path, after_run: str | Path,
                        metric: str = "nDCG@10") -> dict[str, Any]:
    """Paired randomisation test of the after-training run against the before run, per query on ``metric``."""
    from retrieval.eval.metrics import read_trec_run
    from retrieval.eval.significance import compare_runs

    qrels = load_beir(beir_dir, split).qrels
    result = compare_runs(qrels, read_trec_run(after_run), read_trec_run(before_run), metric=metric)
    return {"metric": metric, **result.to_dict()}
