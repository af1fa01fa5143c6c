"""Importing the library is cheap and side-effect free: no torch/FAISS until a dense feature is used."""
from __future__ import annotations

import subprocess
import sys


def test_import_loads_no_heavy_backend() -> None:
    code = ("import sys, retrieval; heavy = [m for m in ('torch', 'faiss', 'transformers', 'sentence_transformers') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_lazy_exports_resolve() -> None:
    import retrieval

    assert retrieval.load_encoder.__module__ == "retrieval.dense.encoders"
    assert retrieval.load_reranker.__module__ == "retrieval.rerank.registry"
    assert set(retrieval.__all__) >= {"Retriever", "evaluate", "load_encoder", "DenseSearcher", "HybridSearcher"}
    # every reranker kind a spec can name is importable from the package top
    from retrieval.rerank.registry import RERANKERS

    for target in RERANKERS.values():
        module, name = target.split(":")
        assert getattr(retrieval, name).__module__ == module, name
    try:
        retrieval.no_such_name
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("unknown attribute did not raise")
