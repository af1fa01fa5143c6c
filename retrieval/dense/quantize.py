"""The int8 CPU fast path: PyTorch dynamic quantisation of a model's ``nn.Linear`` layers.

Weights are stored as int8 (per output channel, which keeps all-MiniLM-L6-v2's embeddings within
~0.98 cosine of fp32, against ~0.92 with one scale per tensor); activations are quantised on the fly
per batch. Measured on SciFact (``benchmarks/dense_quality.py``, ``dense_speed.py``): nDCG@10 0.6489 against
0.6451 in fp32 (no loss), encoding 1.4x faster than fp32 on a 2-core AVX2 CPU without VNNI.

The weights are packed for oneDNN when the CPU has VNNI or AMX (1.6x against 1.4x for the default x86/fbgemm
packing on a 2-core Xeon with AMX, same embeddings); the packing decides the kernel, so the process-wide
``torch.backends.quantized.engine`` is set only while packing and then restored.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import re
import warnings
from collections.abc import Iterator
from typing import Any

from retrieval.dense.cpu import has_fast_int8

logger = logging.getLogger(__name__)

# Linear layers left in fp32: none by default. A regex over module names (e.g. r"\.output\.dense$")
# trades speed for fidelity on models whose feed-forward activations have large outliers.
DEFAULT_SKIP: str | None = None


def linear_layer_names(model: Any, skip: str | None = DEFAULT_SKIP) -> list[str]:
    """Names of the ``nn.Linear`` modules to quantise (all but those matching ``skip``)."""
    import torch

    pattern = re.compile(skip) if skip else None
    return [name for name, mod in model.named_modules()
            if isinstance(mod, torch.nn.Linear) and not (pattern and pattern.search(name))]


def default_engine() -> str:
    """``onednn`` where the CPU has VNNI/AMX and this torch build has it, else torch's current engine."""
    import torch

    engines = torch.backends.quantized.supported_engines
    return "onednn" if has_fast_int8() and "onednn" in engines else torch.backends.quantized.engine


@contextlib.contextmanager
def _quantized_engine(engine: str) -> Iterator[None]:
    import torch

    if engine not in torch.backends.quantized.supported_engines:
        raise ValueError(f"quantized engine {engine!r} is not in this torch build "
                         f"({torch.backends.quantized.supported_engines})")
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


def quantize_linear_int8(model: Any, skip: str | None = DEFAULT_SKIP, per_channel: bool = True,
                         engine: str | None = None) -> Any:
    """A copy of ``model`` (on CPU) whose Linear layers run int8 kernels; the original is untouched.

    ``engine`` picks the weight packing (``onednn``, ``x86``, ``fbgemm``...); default :func:`default_engine`.
    """
    import torch
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    names = linear_layer_names(model, skip)
    if not names:
        raise ValueError("int8=True found no nn.Linear layers to quantise in this model")
    engine = engine or default_engine()
    model = copy.deepcopy(model).to("cpu").eval()
    with warnings.catch_warnings(), _quantized_engine(engine):
        warnings.simplefilter("ignore")   # torch warns that eager quantisation moves to torchao; it still works
        quantized = quantize_dynamic(model, {name: qconfig for name in names}, dtype=torch.qint8)
    logger.info("int8: quantised %d Linear layers (weights packed for %s)", len(names), engine)
    return quantized
