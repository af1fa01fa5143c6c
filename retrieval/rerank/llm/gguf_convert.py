"""A GGUF file re-typed by llama.cpp's own quantizer (Q4_1 -> F16, for example), cached on disk once.

The bundled SmolLM2 ships as Q4_1, which llama.cpp multiplies with a generic dot-product loop on AVX2 CPUs;
F16 and Q8_0 weights take its tiled matrix kernels and score prompts about twice as fast on this machine.
F16 holds every Q4_1 value (scale * q + min, with scale and min stored as f16) to within f16 rounding, so
the converted model computes almost exactly what the transformers backend (dequantised to fp32) computes.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

TARGETS = ("f16", "bf16", "q8_0", "f32")


def cache_folder() -> Path:
    """``$RETRIEVEKIT_CACHE`` or ``~/.cache/retrievekit``, then ``gguf/``."""
    root = os.environ.get("RETRIEVEKIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "retrievekit")
    return Path(root) / "gguf"


def _source_key(path: Path) -> str:
    """Names the source by its resolved path, size and modification time (a changed file gets a new copy)."""
    stat = path.stat()
    text = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@contextlib.contextmanager
def _quiet_fd2() -> Iterator[None]:
    """llama.cpp's quantizer prints every tensor to file descriptor 2; send that to /dev/null meanwhile."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as sink:
            os.dup2(sink.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def converted_gguf(source: str | os.PathLike[str], target: str) -> Path:
    """The cached copy of ``source`` with its weights in ``target`` type, written (atomically) when missing."""
    import llama_cpp

    if target not in TARGETS:
        raise ValueError(f"convert must be one of {TARGETS} or None, got {target!r}")
    source = Path(source)
    out = cache_folder() / f"{source.stem}.{_source_key(source)}.{target}.gguf"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".gguf", dir=out.parent)
    os.close(fd)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = {"f16": llama_cpp.LLAMA_FTYPE_MOSTLY_F16, "bf16": llama_cpp.LLAMA_FTYPE_MOSTLY_BF16,
                    "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "f32": llama_cpp.LLAMA_FTYPE_ALL_F32}[target]
    params.allow_requantize = True
    try:
        with _quiet_fd2():
            code = llama_cpp.llama_model_quantize(str(source).encode(), tmp.encode(), ctypes.byref(params))
        if code != 0:
            raise RuntimeError(f"llama.cpp could not convert {source} to {target} (code {code})")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    logger.info("converted %s to %s at %s", source, target, out)
    return out
