"""Tokenising in worker processes builds exactly the index one process builds."""
from __future__ import annotations

import numpy as np
import pytest

from retrieval import Retriever
from retrieval.sparse.parallel import count_texts, default_workers
from retrieval.sparse.scoring import count_matrix
from retrieval.sparse.searcher import BM25Searcher
from retrieval.sparse.tokenize import Tokenizer, TokenizerConfig
from retrieval.types import Document

ODD = ["", "the and of", "Ünïcödé wörds naïve café", "x" * 5000, "a b c", "running runs ran runner",
       "数据 检索 数据", "tab\tseparated\nnew line", "  ", "CAPITAL Letters capital letters", "42 4242 424242"]


def _serial(texts, tokenizer):
    vocab: dict[str, int] = {}
    return count_matrix([tokenizer(t) for t in texts], vocab, grow=True), vocab


def _same(a, b) -> None:
    (tf_a, vocab_a), (tf_b, vocab_b) = a, b
    assert list(vocab_a.items()) == list(vocab_b.items())      # same ids, in the same first-appearance order
    assert tf_a.shape == tf_b.shape
    np.testing.assert_array_equal(tf_a.indptr, tf_b.indptr)
    np.testing.assert_array_equal(tf_a.indices, tf_b.indices)
    np.testing.assert_array_equal(tf_a.data, tf_b.data)
    assert tf_a.data.dtype == tf_b.data.dtype


@pytest.mark.parametrize("config", [TokenizerConfig(), TokenizerConfig.preset("plain"),
                                    TokenizerConfig(token_pattern=r"[a-z]+", stemmer=None)])
def test_processes_count_exactly_what_one_process_counts(config) -> None:
    tokenizer = Tokenizer(config, allow_custom_pattern=True)
    texts = ODD * 7 + [f"doc {i} about protein {i % 13} and gene {i % 7}" for i in range(300)]
    _same(count_texts(texts, tokenizer, workers=2, block_docs=16), _serial(texts, tokenizer))


@pytest.mark.slow
def test_parallel_scifact_index_equals_the_serial_one(scifact_docs) -> None:
    serial = BM25Searcher.build(scifact_docs, show_progress=False, index_workers=1)
    parallel = BM25Searcher.build(scifact_docs, show_progress=False, index_workers=2)
    _same((parallel.index.tf, parallel.index.vocab), (serial.index.tf, serial.index.vocab))
    queries = [Tokenizer()(q) for q in ("coffee and cancer risk", "vitamin D deficiency", "p53 mutation")]
    for (rows_a, scores_a), (rows_b, scores_b) in zip(parallel.index.search(queries, 100),
                                                      serial.index.search(queries, 100)):
        np.testing.assert_array_equal(rows_a, rows_b)
        np.testing.assert_array_equal(scores_a, scores_b)


def test_index_workers_is_a_build_option_with_clear_errors() -> None:
    docs = [Document(id=f"d{i}", text=t) for i, t in enumerate(ODD * 3)]
    one = Retriever.from_documents(docs, method="bm25", show_progress=False, index_workers=1)
    two = Retriever.from_documents(docs, method="bm25", show_progress=False, index_workers=2)
    assert [h.id for h in one.retrieve("café words", k=5)] == [h.id for h in two.retrieve("café words", k=5)]
    hybrid_ok = pytest.importorskip("retrieval.hybrid.searcher")
    assert "index_workers" in hybrid_ok.HybridSearcher.build.__code__.co_varnames
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="workers"):
            count_texts(["a b"] * 5000, Tokenizer(), workers=bad)
    assert default_workers(10) == 1
