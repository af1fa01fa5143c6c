"""Training: adapt an embedder to a corpus (TSDAE, SimCSE, CT, corpus pairs), fine-tune it on labels (supervised),
adapt it with generated queries and a cross-encoder teacher (GPL), or fine-tune a cross-encoder.

``run(TSDAEConfig(corpus="docs.jsonl", base="minilm", out="runs/x"))`` trains, checkpoints, optionally
evaluates before/after on a BEIR split, and returns the model folder ``runs/x/model``. Each objective has
its own config class (:mod:`training.config`); :data:`OBJECTIVES` names them all. Names are imported
lazily, so ``import training`` (and the CLI) stay cheap until torch is needed.
"""
from __future__ import annotations

import importlib
import logging
from typing import Any

logging.getLogger(__name__).addHandler(logging.NullHandler())

_EXPORTS = {
    "RunConfig": "config", "EmbedderConfig": "config", "CorpusConfig": "config", "TSDAEConfig": "config", "SimCSEConfig": "config",
    "CTConfig": "config", "PairsConfig": "config", "CrossEncoderConfig": "config", "SupervisedConfig": "config",
    "GPLConfig": "config", "MarginMSE": "gpl.margin_mse",
    "OBJECTIVES": "registry", "make_config": "registry", "load_config": "registry", "save_config": "registry",
    "run": "trainer",
    "load_base": "bi_encoder",
    "TSDAE": "tsdae", "TSDAELoss": "tsdae", "build_decoder": "tsdae",
    "SimCSE": "simcse",
    "Pairs": "pairs", "corpus_documents": "pairs", "make_pair": "pairs",
    "ContrastiveTension": "contrastive_tension", "ct_pairs": "contrastive_tension",
    "CrossEncoderObjective": "cross_encoder", "mine_hard_negatives": "negatives", "TrainingGroup": "negatives",
    "Supervised": "supervised",
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
