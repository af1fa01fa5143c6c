"""Small bundled BEIR-style sample collection (80 docs, 24 queries) for offline demos and tests."""

from pathlib import Path

__all__ = ["sample_dir"]


def sample_dir() -> Path:
    """Return the folder holding the sample ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/test.tsv``."""
    return Path(__file__).parent
