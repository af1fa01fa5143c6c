"""Small pieces every local LLM backend shares: answer-token ids and a stable log-softmax."""
from __future__ import annotations

from typing import Any

import numpy as np


def choice_token_ids(tokenizer: Any, choice: str) -> list[int]:
    """Token ids a model may start its answer with for ``choice``: each single-token spelling among
    ``Yes``, `` Yes``, ``yes``, `` yes`` (else the first token of ``choice``). Unknown-token ids never count."""
    unk = getattr(tokenizer, "unk_token_id", None)
    ids: list[int] = []
    for variant in dict.fromkeys((choice, " " + choice, choice.lower(), " " + choice.lower())):
        tokens = tokenizer.encode(variant, add_special_tokens=False)
        if len(tokens) == 1 and tokens[0] != unk and tokens[0] not in ids:
            ids.append(tokens[0])
    if not ids:
        tokens = tokenizer.encode(choice, add_special_tokens=False)
        if not tokens or tokens[0] == unk:
            raise ValueError(f"the tokenizer has no token for choice {choice!r}")
        ids.append(tokens[0])
    return ids


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """``log(softmax(logits))`` over the last axis, in float64 (no overflow for large logits)."""
    values = np.asarray(logits, dtype=np.float64)
    shifted = values - values.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
