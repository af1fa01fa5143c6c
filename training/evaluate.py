"""Before/after retrieval quality of an embedding model on a BEIR split (exact search, nDCG@10 etc.).

The model is wrapped as the dense :class:`~retrieval.Retriever` it will become (same prefixes and
normalisation, FAISS flat index: exact inner product) and scored by :func:`retrieval.eval.pipeline.evaluate_retriever`,
the path ``retrieval eval`` and the benchmark report use.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from retrieval.data import load_beir
from retrieval.dense.cache import CachedEncoder
from retrieval.dense.encoders import BiEncoder
from retrieval.eval.pipeline import evaluate_retriever
from retrieval.retriever import Retriever

logger = logging.getLogger(__name__)


def evaluate_on_beir(model: Any, beir_dir: str | Path, split: str = "test", max_seq_length: int = 256,
                     batch_size: int = 32, k: int = 100, cache: str | Path | None = None, show_progress: bool = True,
                     run_path: str | Path | None = None) -> dict[str, float]:
    """nDCG@10, Recall@100, ... of a ``SentenceTransformer`` on ``beir_dir``'s ``split`` (title + text, exact search).

    ``cache`` is a folder of corpus embeddings (:class:`~retrieval.dense.cache.CachedEncoder`: keyed by the
    model's weights, the encoding settings and the corpus, so a changed model never reads stale vectors).
    ``run_path`` keeps the run (TREC format, written atomically) for per-query comparisons.
    ``eval_seconds`` in the result is the time to encode and search.
    """
    data = load_beir(beir_dir, split)
    old_length = model.max_seq_length
    was_training = model.training
    model.eval()
    try:
        encoder: Any = BiEncoder.from_model(model, max_seq_length=max_seq_length, batch_size=batch_size,
                                            show_progress=show_progress)
        if cache is not None:
            encoder = CachedEncoder(encoder, cache)
        started = time.perf_counter()
        retriever = Retriever.from_documents(data.corpus(), "dense", encoder=encoder, index="flat",
                                             show_progress=show_progress)
        result = evaluate_retriever(retriever, data, k=k, run_out=run_path)
        seconds = time.perf_counter() - started
    finally:
        model.max_seq_length = old_length
        model.train(was_training)
    metrics = {**result.metrics, "eval_seconds": seconds}
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
