"""Load saved indexes in a child Python, so a segfault or a hang is a reported outcome, not a dead test run.

The child (this file run as a script) reads one JSON request per line: ``{"path", "query", "verify",
"encoder"}``; it loads the index (with a cached encoder for ``encoder``, a model folder), runs one query
and answers ``{"ok": [[id, score, text], ...]}``, ``{"ours": [class, message]}`` for IndexFormatError or
DataError, or ``{"foreign": traceback}`` for anything else. :class:`IndexChild` is the parent side; it
restarts the child after a crash and reports ``{"crash": exit code}`` or ``{"hang": seconds}``.
"""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def _answer(request: dict[str, Any], encoders: dict[str, Any]) -> dict[str, Any]:
    import traceback

    from retrieval import Retriever
    from retrieval.errors import DataError, IndexFormatError

    try:
        options: dict[str, Any] = {}
        if request.get("encoder"):
            if request["encoder"] not in encoders:
                from retrieval.dense.encoders import load_encoder

                encoders[request["encoder"]] = load_encoder(request["encoder"], show_progress=False)
            options["encoder"] = encoders[request["encoder"]]
        retriever = Retriever.load(request["path"], verify=request.get("verify", True), **options)
        hits = retriever.retrieve(request["query"], k=request.get("k", 5))
        return {"ok": [[h.id, round(float(h.score), 5), h.text] for h in hits]}
    except (IndexFormatError, DataError) as exc:
        return {"ours": [type(exc).__name__, str(exc)]}
    except Exception as exc:  # noqa: BLE001 - reported to the parent as a failure
        return {"foreign": "".join(traceback.format_exception(exc))[-3000:]}


def serve() -> None:
    """Child: answer requests from stdin on the real stdout (library output goes to stderr)."""
    answers = sys.stdout
    sys.stdout = sys.stderr
    encoders: dict[str, Any] = {}
    for line in sys.stdin:
        answers.write(json.dumps(_answer(json.loads(line), encoders)) + "\n")
        answers.flush()


class IndexChild:
    """Parent side: one long-lived child; each request must be answered within ``timeout`` seconds."""

    def __init__(self, log: Path, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self.proc: subprocess.Popen[str] | None = None
        self.log = log.open("w")

    def _start(self) -> subprocess.Popen[str]:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        return subprocess.Popen([sys.executable, str(Path(__file__).resolve())], cwd=REPO, env=env, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log)

    def ask(self, path: Path, query: str = "cat gene", **request: Any) -> dict[str, Any]:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"path": str(path), "query": query, **request}) + "\n")
        self.proc.stdin.flush()
        if not select.select([self.proc.stdout], [], [], self.timeout)[0]:
            self.close_child()
            return {"hang": self.timeout}
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            self.proc = None
            return {"crash": code}
        return json.loads(line)

    def close_child(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def close(self) -> None:
        self.close_child()
        self.log.close()


if __name__ == "__main__":
    serve()
