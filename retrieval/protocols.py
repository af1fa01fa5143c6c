"""The two small interfaces every first stage and every reranker implements."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from retrieval.types import Document, Hit

# One query's result from a first stage: (document rows, scores), best first.
RowHits = tuple[np.ndarray, np.ndarray]


@runtime_checkable
class Searcher(Protocol):
    """A first stage over the rows of a DocStore (BM25, dense, hybrid).

    ``remove`` deletes rows and shifts later rows down, exactly as ``DocStore.remove`` does.
    ``save`` writes into an (empty, temporary) folder and returns the JSON config that ``load`` gets back.
    """

    method: str
    LOAD_OPTIONS: tuple[str, ...]   # the keywords ``load`` takes after folder and config (checked by Retriever.load)

    @classmethod
    def build(cls, docs: Sequence[Document], show_progress: bool = True, **options: Any) -> "Searcher": ...

    def search(self, queries: Sequence[str], k: int) -> list[RowHits]: ...

    def add(self, docs: Sequence[Document]) -> None: ...

    def remove(self, rows: Sequence[int]) -> None: ...

    def save(self, folder: Path) -> dict[str, Any]: ...

    @classmethod
    def load(cls, folder: Path, config: dict[str, Any], **options: Any) -> "Searcher": ...


@runtime_checkable
class Reranker(Protocol):
    """Re-orders the candidates of a first stage. Must return a permutation of ``hits`` with new scores."""

    def rerank(self, query: str, hits: list[Hit]) -> list[Hit]: ...
