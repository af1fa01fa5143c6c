"""A prompt prefix run through the model once: the KV cache of the first tokens several prompts share.

Reranking prompts start alike (the system prompt, query-likelihood demonstrations, one query's yes/no prompts).
llama.cpp's backend keeps its KV cache between prompts; :class:`PrefixKV` does the same for a transformers causal
LM, so those tokens cost one forward pass per run instead of one per passage.
"""
from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from typing import Any


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many first tokens ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def shared_length(rows: Sequence[Sequence[int]]) -> int:
    """How many first tokens every row shares (0 for no rows)."""
    if not rows:
        return 0
    n = len(rows[0])
    for row in rows[1:]:
        n = common_prefix(rows[0][:n], row)
    return n


def sliding_window(config: Any) -> bool:
    """Whether a transformers model config has sliding-window attention layers (Gemma 2/3, Mistral 7B v0.1): their
    caches keep only the last window of keys and cannot be cut back to a shorter prefix, so none is kept for them."""
    if any("sliding" in str(kind) for kind in getattr(config, "layer_types", None) or ()):
        return True
    if getattr(config, "use_sliding_window", None) is False:      # Qwen2 names a window it does not use
        return False
    return getattr(config, "sliding_window", None) is not None


class PrefixKV:
    """The KV cache of the last prefix a transformers causal LM ran, cut or extended to fit the next one."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.ids: list[int] = []
        self.cache: Any = None
        self.tokens_evaluated = 0     # prefix tokens run through the model
        self.tokens_reused = 0        # prompt tokens not run: the kept cache's, and the batch's other rows' share
        # transformers 5 renamed ``past_key_values`` to ``cache`` (the old name still works, with a warning)
        self.arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def forget(self) -> None:
        """Drop the kept prefix (the counts stay)."""
        self.ids, self.cache = [], None

    def covering(self, ids: Sequence[int], rows: int = 1) -> Any:
        """A cache of its own (the caller's forward pass grows it) holding the keys and values of all of ``ids``,
        for a batch of ``rows`` prompts that start with them (counted as spared for all but the one that ran them)."""
        import torch

        have = common_prefix(self.ids, ids)
        cache = None
        if have:
            cache = copy.deepcopy(self.cache)
            if have < len(self.ids):
                cache.crop(have - len(self.ids))   # a negative count drops that many from the end, old and new API
        if have < len(ids):
            device = self.model.device
            with torch.inference_mode():
                out = self.model(input_ids=torch.tensor([list(ids[have:])], device=device),
                                 position_ids=torch.arange(have, len(ids), device=device).unsqueeze(0),
                                 use_cache=True, logits_to_keep=1, **({self.arg: cache} if cache is not None else {}))
            cache = out["cache"] if "cache" in out else out["past_key_values"]
            self.ids, self.cache = list(ids), copy.deepcopy(cache)
        self.tokens_evaluated += len(ids) - have
        self.tokens_reused += have + (rows - 1) * len(ids)
        return cache
