"""Which GGUF file llama.cpp can run on this CPU: probed once in a child process, the answer cached on disk.

Some llama.cpp builds crash in native code (SIGSEGV, no Python exception) on some quantised weight types on
some CPUs: the bundled SmolLM2's Q4_1 segfaults at its first decode on AMX-capable Xeons under llama-cpp-python
0.3 (llama.cpp issue #20824 and its duplicates), while F16 runs, and so does Q4_1 kept out of the AMX buffers
(``extra_buffers=False``). A crash cannot be caught in-process, so a child process loads the file and decodes a
few tokens first; the result is cached per file, buffer choice, llama.cpp version and CPU.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from retrieval.persistence import atomic_write_text
from retrieval.rerank.llm.gguf_convert import _source_key, cache_folder, converted_gguf

logger = logging.getLogger(__name__)

PROBE = """
import sys
from retrieval.rerank.llm.llamacpp_backend import open_llama
llm = open_llama(sys.argv[1], sys.argv[2] == "extra", n_ctx=64, n_batch=64, n_ubatch=64, n_threads=1,
                 n_threads_batch=1, verbose=False)
tokens = llm.tokenize(b"Is this passage relevant to the query? Yes", add_bos=True)
llm.eval(tokens[:-1])
llm.eval(tokens[-1:])
"""
PROBE_TIMEOUT_S = 300


def _machine_key() -> str:
    import llama_cpp

    from retrieval.dense.cpu import cpu_flags

    text = f"{llama_cpp.__version__}|{' '.join(sorted(cpu_flags()))}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def runs_natively(path: str | os.PathLike[str], extra_buffers: bool = True) -> bool:
    """True when llama.cpp loads ``path`` and decodes with it in a child process without crashing (cached).

    ``extra_buffers`` as in :func:`~retrieval.rerank.llm.llamacpp_backend.open_llama`."""
    path = Path(path)
    buffers = "extra" if extra_buffers else "plain"
    key = f"{_source_key(path)}.{_machine_key()}" + ("" if extra_buffers else ".plain")
    record = cache_folder() / "probes" / f"{path.stem}.{key}.json"
    if record.is_file():
        try:
            return bool(json.loads(record.read_text(encoding="utf-8"))["runs"])
        except (ValueError, KeyError, TypeError):
            logger.warning("%s: unreadable probe record; probing again", record)
    try:
        proc = subprocess.run([sys.executable, "-c", PROBE, str(path), buffers], capture_output=True,
                              timeout=PROBE_TIMEOUT_S)
        runs, detail = proc.returncode == 0, f"exit code {proc.returncode}"
    except subprocess.TimeoutExpired:
        runs, detail = False, f"no answer within {PROBE_TIMEOUT_S} s"
    if not runs:
        logger.warning("llama.cpp cannot run %s on this CPU with %s buffers (%s)", path, buffers, detail)
    atomic_write_text(record, json.dumps({"file": str(path), "buffers": buffers, "runs": runs, "detail": detail}))
    return runs


def runnable_gguf(path: str | os.PathLike[str], convert: str | None, extra_buffers: bool = True) -> Path:
    """The file llama.cpp should load: ``path`` itself, or its copy re-typed to ``convert``.

    A file as shipped (``convert=None``) that crashes llama.cpp here is replaced by an F16 copy, with a warning;
    an explicitly requested type that crashes is refused with an error saying what does run.
    """
    chosen = Path(path) if convert is None else converted_gguf(path, convert)
    if runs_natively(chosen, extra_buffers):
        return chosen
    if convert is None:
        logger.warning("%s crashes llama.cpp on this CPU; running an F16 copy instead (convert='f16')", path)
        return runnable_gguf(path, "f16", extra_buffers)
    hints = []
    if extra_buffers:
        hints.append("extra_buffers=False (no AMX or repacked weights)")
    if convert != "f16":
        hints.append("convert='f16'")
    raise RuntimeError(f"llama.cpp crashes running {chosen} ({convert} weights, "
                       f"{'extra' if extra_buffers else 'plain'} buffers) on this CPU; "
                       + (f"try {' or '.join(hints)}" if hints else "no fallback is left"))
