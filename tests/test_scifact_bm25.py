"""Real-data check: BM25 on BEIR SciFact reproduces bm25s's published set-up (nDCG@10 0.6863)."""
from __future__ import annotations

import pytest

from retrieval import Retriever, evaluate, load_beir


@pytest.mark.slow
def test_scifact_bm25_ndcg(scifact_dir) -> None:
    data = load_beir(scifact_dir, "test")
    r = Retriever.from_documents(data.corpus(), show_progress=False)
    metrics = evaluate(data.qrels, r.run(data.queries, k=100))
    assert len(r) == 5183 and len(data.queries) == 300
    assert metrics["nDCG@10"] == pytest.approx(0.6863, abs=5e-4)
    assert metrics["Recall@100"] == pytest.approx(0.9127, abs=5e-4)


@pytest.mark.slow
def test_scifact_rank_bm25_reference_setup(scifact_dir) -> None:
    """rank-bm25's Okapi with lowercase \\w+ tokens: 0.6519 nDCG@10 (shared/data README)."""
    data = load_beir(scifact_dir, "test")
    r = Retriever.from_documents(data.corpus(), show_progress=False, tokenizer="plain", variant="okapi")
    metrics = evaluate(data.qrels, r.run(data.queries, k=100))
    assert metrics["nDCG@10"] == pytest.approx(0.6519, abs=2e-3)
