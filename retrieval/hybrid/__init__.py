"""Hybrid retrieval: BM25 and dense over the same rows, fused per query (``fusion``: RRF or min-max linear)."""
from retrieval.hybrid.fusion import FUSIONS, fuse
from retrieval.hybrid.searcher import FusionConfig, HybridSearcher

__all__ = ["FUSIONS", "FusionConfig", "HybridSearcher", "fuse"]
