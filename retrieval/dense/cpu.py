"""What this CPU can do fast: the instruction-set flags that decide which low-precision path pays off.

int8 GEMMs need VNNI (AVX512-VNNI, AVX-VNNI) or AMX to beat fp32 by much; bf16 needs AVX512-BF16 or AMX-BF16,
without which PyTorch emulates it and bf16 runs slower than fp32. Read from ``/proc/cpuinfo`` (Linux); elsewhere
the set is empty and callers keep their portable defaults.
"""
from __future__ import annotations

import functools
from pathlib import Path

INT8_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The ``flags`` of the first processor in ``/proc/cpuinfo``; empty where that file does not exist."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def has_fast_int8() -> bool:
    """True when the CPU has int8 dot-product instructions (VNNI or AMX)."""
    return bool(cpu_flags() & INT8_FLAGS)


def has_fast_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX)."""
    return bool(cpu_flags() & BF16_FLAGS)
