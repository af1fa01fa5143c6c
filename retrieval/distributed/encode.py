"""Encoding documents on a Ray actor pool: each actor loads the bi-encoder once and embeds one batch per call.

Used as ``dataset.map_batches(EncodeBatch, concurrency=n, ...)``: Ray Data restarts an actor that dies and
retries its batch, and a batch's output is kept once, so every document is embedded exactly once in the
finished dataset. Every fast path of :func:`~retrieval.dense.encoders.load_encoder` (``int8``, ``bf16``,
``backend="onnx"``/``"openvino"``) runs inside the actors as it does in one process.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from retrieval.dense.encoders import EncoderConfig
from retrieval.types import Document

logger = logging.getLogger(__name__)


class EncodeProgress:
    """A small Ray actor the encoding actors report to: documents embedded, per worker process id.

    The driver reads it for its progress bar; a retried batch is counted again (progress, not the index).
    """

    def __init__(self) -> None:
        self.done: dict[int, int] = {}

    def report(self, pid: int, n_docs: int) -> None:
        self.done[pid] = self.done.get(pid, 0) + n_docs

    def workers(self) -> dict[int, int]:
        """Documents embedded so far by each worker process (its pid), retried batches included."""
        return dict(self.done)

    def total(self) -> int:
        return sum(self.done.values())


class EncodeBatch:
    """A Ray Data actor: loads the encoder once, then adds an ``embedding`` column to each batch of documents."""

    def __init__(self, config: EncoderConfig, progress: Any = None) -> None:
        from retrieval.dense.encoders import load_encoder

        self.encoder = load_encoder(config.with_options(show_progress=False))
        self.progress = progress
        logger.info("encoding actor %d loaded %s", os.getpid(), config.model)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        docs = [Document(id=str(i), title=str(t), text=str(x))
                for i, t, x in zip(batch["_id"], batch["title"], batch["text"])]
        emb = self.encoder.encode_documents(docs, show_progress=False)
        if self.progress is not None:
            self.progress.report.remote(os.getpid(), len(docs))
        return {**batch, "embedding": np.ascontiguousarray(emb, dtype=np.float32)}


def encode_dataset(dataset: Any, config: EncoderConfig, *, actors: int, batch_size: int, num_cpus: float,
                   num_gpus: float, progress: Any = None) -> Any:
    """``dataset`` with an ``embedding`` column, computed by ``actors`` :class:`EncodeBatch` actors."""
    from retrieval.distributed.cluster import ray_module

    resources: dict[str, Any] = {"num_cpus": num_cpus}
    if num_gpus:
        resources["num_gpus"] = num_gpus
    pool = ray_module().data.ActorPoolStrategy(size=actors)
    return dataset.map_batches(EncodeBatch, fn_constructor_kwargs={"config": config, "progress": progress},
                               batch_size=batch_size, compute=pool, batch_format="numpy", **resources)
