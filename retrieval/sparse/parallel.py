"""Tokenise and count documents on several cores: the same term-count matrix and vocabulary as one process.

Tokenising is most of BM25 indexing on large collections (bm25s's profile on NQ: 150 of 262 s), and it is pure
Python (regex, stopwords, PyStemmer), so threads do not help: the GIL holds them to one core. Here worker
processes each tokenise a block of texts and count its terms against a block-local vocabulary. The parent
remaps each block's local term ids to global ones, taking blocks in document order, so a term's id is the
order of its first appearance in the collection, exactly as :func:`~retrieval.sparse.scoring.count_matrix`
gives it in one process. The matrices are equal, so scores are equal (tested).
"""
from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from retrieval.sparse.scoring import count_matrix
from retrieval.sparse.tokenize import Tokenizer, TokenizerConfig

logger = logging.getLogger(__name__)

PARALLEL_MIN_DOCS = 20_000   # below this, starting processes costs more than it saves (about 0.3 s each)
BLOCK_DOCS = 2_000           # texts per task: large enough to amortise pickling, small enough to balance

_worker_tokenizer: Tokenizer | None = None


def default_workers(n_docs: int) -> int:
    """Processes for ``n_docs`` documents when the caller does not say: every core for large collections."""
    return (os.cpu_count() or 1) if n_docs >= PARALLEL_MIN_DOCS else 1


def _init_worker(config: dict[str, Any], allow_custom_pattern: bool) -> None:
    global _worker_tokenizer
    _worker_tokenizer = Tokenizer(TokenizerConfig.from_dict(config), allow_custom_pattern=allow_custom_pattern)


def _count_block(texts: list[str]) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """One block: ``(local terms in first-appearance order, indptr, local term ids, counts)``."""
    assert _worker_tokenizer is not None
    local: dict[str, int] = {}
    mat = count_matrix([_worker_tokenizer(t) for t in texts], local, grow=True)
    return list(local), mat.indptr, mat.indices, mat.data


def _blocks(texts: Sequence[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(texts), size):
        yield list(texts[start:start + size])


def count_texts(texts: Sequence[str], tokenizer: Tokenizer, workers: int | None = None,
                show_progress: bool = False, block_docs: int = BLOCK_DOCS) -> tuple[sp.csr_matrix, dict[str, int]]:
    """Term counts of ``texts`` (one row each) and the vocabulary; ``workers`` processes (default: by size)."""
    workers = default_workers(len(texts)) if workers is None else workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    vocab: dict[str, int] = {}
    if workers == 1 or len(texts) <= block_docs:
        token_lists = (tokenizer(t) for t in tqdm(texts, desc="Tokenizing", unit="doc", disable=not show_progress))
        return count_matrix(list(token_lists), vocab, grow=True), vocab
    indptrs, indices, counts = [np.zeros(1, dtype=np.int64)], [], []
    offset = 0
    # spawn, not fork: the parent may hold threads (torch, FAISS, tqdm's monitor) that fork would copy mid-lock
    context = multiprocessing.get_context("spawn")
    bar = tqdm(total=len(texts), desc=f"Tokenizing ({workers} processes)", unit="doc", disable=not show_progress)
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker,
                             initargs=(tokenizer.config.to_dict(), tokenizer.config.custom_pattern)) as pool:
        for terms, indptr, local_ids, data in pool.map(_count_block, _blocks(texts, block_docs)):
            remap = np.fromiter((vocab.setdefault(t, len(vocab)) for t in terms), dtype=np.int64, count=len(terms))
            indices.append(remap[local_ids])
            counts.append(data)
            indptrs.append(indptr[1:].astype(np.int64) + offset)
            offset += int(indptr[-1])
            bar.update(len(indptr) - 1)
    bar.close()
    tf = sp.csr_matrix((np.concatenate(counts).astype(np.int32), np.concatenate(indices), np.concatenate(indptrs)),
                       shape=(len(texts), len(vocab)))
    tf.sort_indices()
    return tf, vocab
