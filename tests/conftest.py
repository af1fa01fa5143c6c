"""Shared fixtures: the real data folder (../shared/data or $RETRIEVEKIT_DATA) and small corpora."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from retrieval.datasets import data_dir

REPO = Path(__file__).resolve().parent.parent
DATA = data_dir(default=REPO.parent / "shared" / "data")   # $RETRIEVEKIT_DATA wins, as in the library
SCIFACT = DATA / "beir" / "scifact"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never reach the network: the Hugging Face hub is switched off."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def scifact_dir() -> Path:
    if not (SCIFACT / "corpus.jsonl").exists():
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the real-data checks, but {SCIFACT} is missing")
        pytest.skip(f"real data not found at {SCIFACT} (set RETRIEVEKIT_DATA)")
    return SCIFACT


@pytest.fixture(scope="session")
def scifact_docs(scifact_dir: Path):
    """The first 500 real SciFact documents."""
    from retrieval.data import iter_documents

    docs = []
    for doc in iter_documents(scifact_dir):
        docs.append(doc)
        if len(docs) == 500:
            break
    return docs


@pytest.fixture(scope="session")
def tiny_model_folder(tmp_path_factory) -> Path:
    """A tiny random sentence-transformers bi-encoder folder (2-layer BERT, hidden 32), written once per session."""
    pytest.importorskip("sentence_transformers")
    from helpers.tiny_encoder import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-bi-encoder") / "m")


@pytest.fixture(scope="session")
def tiny_bi_encoder(tiny_model_folder: Path):
    """That folder loaded once as a BiEncoder; tests must not change it."""
    from retrieval.dense.encoders import load_encoder

    return load_encoder(str(tiny_model_folder), show_progress=False)
