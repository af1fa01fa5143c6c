"""Shared fixtures: the real data folder (../shared/data or $RETRIEVEKIT_DATA) and small corpora."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("RETRIEVEKIT_DATA", REPO.parent / "shared" / "data"))
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
