"""Before/after retrieval quality of an embedding model on a BEIR split (exact cosine search, nDCG@10 etc.)."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
from sentence_transformers import SentenceTransformer

from retrieval.data import load_beir
from retrieval.encoders import BiEncoder
from retrieval.evaluation import evaluate
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
                     cache: str | Path | None = None, show_progress: bool = True) -> dict[str, float]:
    """nDCG@10, Recall@100, ... of ``model`` on ``beir_dir``'s ``split`` (title + text, exact search).

    Encoding goes through :class:`retrieval.encoders.BiEncoder`, so prefixes and normalisation are the
    ones ``Retriever(method="dense")`` will use with the saved model.

    ``cache`` (a path without suffix) stores the corpus vectors; use it only for a model that does not change.
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
    metrics = evaluate(data.qrels, exact_search(query_vectors, doc_vectors, ids, query_ids, k))
    metrics["eval_seconds"] = seconds
    logger.info("%s/%s: nDCG@10 %.4f (%.0f s)", Path(beir_dir).name, split, metrics["nDCG@10"], seconds)
    return metrics
