"""Ranked results that cost what they are used for: ids and scores as arrays, ``Hit`` objects and texts on demand.

A first stage returns (rows, scores) arrays per query. ``HitList`` keeps them as they are and builds
``Hit`` objects only when indexed or iterated; each hit reads its title and text from the index only
when asked. ``Retriever.run()`` and evaluation read ``ids``/``scores`` and never touch a text.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, overload

import numpy as np

from retrieval.docstore import DocView
from retrieval.types import Hit


class HitList(Sequence[Hit]):
    """One query's hits, best first: a read-only sequence of :class:`Hit` with array access to ids and scores."""

    __slots__ = ("_rows", "_scores", "_view", "_hits")

    def __init__(self, rows: np.ndarray, scores: np.ndarray, view: DocView) -> None:
        self._rows, self._scores, self._view = rows, scores, view
        self._hits: list[Hit] | None = None

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def ids(self) -> list[str]:
        """Document ids, best first (no Hit objects built, no text read)."""
        ids = self._view.ids
        return [ids[r] for r in self._rows.tolist()]

    @property
    def scores(self) -> np.ndarray:
        """Scores, best first, as float32/float64 numpy array (a copy)."""
        return np.array(self._scores)

    def to_list(self) -> list[Hit]:
        """The hits as a plain list (built once, then cached)."""
        if self._hits is None:
            ids, view = self._view.ids, self._view
            self._hits = [Hit.lazy(ids[row], score, rank, view, row) for rank, (row, score)
                          in enumerate(zip(self._rows.tolist(), self._scores.tolist()), start=1)]
        return self._hits

    @overload
    def __getitem__(self, index: int) -> Hit: ...

    @overload
    def __getitem__(self, index: slice) -> list[Hit]: ...

    def __getitem__(self, index: Any) -> Any:
        return self.to_list()[index]

    def __iter__(self) -> Iterator[Hit]:
        return iter(self.to_list())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (HitList, list)):
            return self.to_list() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"HitList({self.to_list()!r})"
