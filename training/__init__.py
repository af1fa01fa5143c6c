"""Domain adaptation of embedding models from unlabeled text: TSDAE, SimCSE, Contrastive Tension, corpus pairs.

``run(TrainConfig(objective="tsdae", corpus="docs.jsonl", base="minilm", out="runs/x"))`` trains,
checkpoints, optionally evaluates before/after on a BEIR split, and returns a sentence-transformers folder.
Names are imported lazily, so ``import training`` (and the CLI) stay cheap until torch is needed.
"""
from __future__ import annotations

import importlib
import logging
from typing import Any

logging.getLogger(__name__).addHandler(logging.NullHandler())

_EXPORTS = {
    "TrainConfig": "config", "OBJECTIVE_NAMES": "config", "OBJECTIVE_DEFAULTS": "config",
    "run": "trainer", "load_base": "trainer", "build_objective": "trainer",
    "TSDAE": "tsdae", "TSDAELoss": "tsdae", "build_decoder": "tsdae",
    "SimCSE": "simcse",
    "Pairs": "pairs", "corpus_documents": "pairs", "make_pair": "pairs",
    "ContrastiveTension": "contrastive_tension", "ct_pairs": "contrastive_tension",
    "NoiseConfig": "noise", "noisy_text": "noise", "split_words": "noise",
    "Batch": "objective", "Objective": "objective",
    "SentenceOptions": "sentences", "corpus_sentences": "sentences", "split_sentences": "sentences",
    "evaluate_on_beir": "evaluate",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'training' has no attribute {name!r}")
