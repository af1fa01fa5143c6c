"""The data types every part of the library speaks: documents in, hits out."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Document:
    """One document of a collection; BEIR systems index ``title`` and ``text`` together."""

    id: str
    text: str
    title: str = ""

    @property
    def full_text(self) -> str:
        """Title and text joined by one space, as BEIR's baselines index them."""
        if self.title and self.text:
            return f"{self.title} {self.text}"
        return self.title or self.text


class TextSource(Protocol):
    """Where a lazily built hit reads its title and text: one row of a document-store snapshot."""

    def title_text(self, row: int) -> tuple[str, str]: ...


class Hit:
    """One ranked result: document id, score, 1-based rank, title and text, and free-form ``extra``.

    Hits made by a :class:`~retrieval.Retriever` read ``title``/``text`` from the index only when first
    asked for (``run()`` and evaluation never pay for texts); hits made by hand hold them directly.
    """

    __slots__ = ("id", "score", "rank", "extra", "_text", "_title", "_source", "_row")

    def __init__(self, id: str, score: float, text: str = "", rank: int = 0, title: str = "",
                 extra: dict[str, Any] | None = None) -> None:
        self.id, self.score, self.rank = id, score, rank
        self.extra: dict[str, Any] = {} if extra is None else extra
        self._text: str | None = text
        self._title: str | None = title
        self._source: TextSource | None = None
        self._row = -1

    @classmethod
    def lazy(cls, id: str, score: float, rank: int, source: TextSource, row: int) -> "Hit":
        """A hit whose title and text are read from ``source`` at ``row`` on first use."""
        hit = cls.__new__(cls)
        hit.id, hit.score, hit.rank, hit.extra = id, score, rank, {}
        hit._text = hit._title = None
        hit._source, hit._row = source, row
        return hit

    def _load(self) -> None:
        assert self._source is not None
        self._title, self._text = self._source.title_text(self._row)
        self._source = None

    @property
    def text(self) -> str:
        if self._text is None:
            self._load()
        return self._text  # type: ignore[return-value]

    @text.setter
    def text(self, value: str) -> None:
        if self._title is None:
            self._load()
        self._text = value

    @property
    def title(self) -> str:
        if self._title is None:
            self._load()
        return self._title  # type: ignore[return-value]

    @title.setter
    def title(self, value: str) -> None:
        if self._text is None:
            self._load()
        self._title = value

    def replace(self, **changes: Any) -> "Hit":
        """A copy with ``changes`` applied (like ``dataclasses.replace``); texts stay lazy when untouched."""
        hit = Hit.__new__(Hit)
        for name in self.__slots__:
            setattr(hit, name, getattr(self, name))
        for name, value in changes.items():
            if name not in ("id", "score", "rank", "extra", "text", "title"):
                raise TypeError(f"Hit has no field {name!r}")
            setattr(hit, name, value)
        return hit

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Hit):
            return NotImplemented
        return (self.id, self.score, self.rank, self.title, self.text, self.extra) == \
            (other.id, other.score, other.rank, other.title, other.text, other.extra)

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dataclass it replaces

    def __repr__(self) -> str:
        text = self.text if len(self.text) <= 60 else self.text[:57] + "..."
        return (f"Hit(id={self.id!r}, score={self.score!r}, rank={self.rank}, title={self.title!r}, "
                f"text={text!r}, extra={self.extra!r})")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "score": self.score, "rank": self.rank,
                               "title": self.title, "text": self.text}
        if self.extra:
            out["extra"] = self.extra
        return out


# BEIR's dict shapes: qrels[qid][docid] = grade; run[qid][docid] = score.
Qrels = dict[str, dict[str, int]]
Run = dict[str, dict[str, float]]


def typed_list(values: object, kind: type | tuple[type, ...], what: str, item: str) -> list[Any]:
    """``values`` (any iterable but a string or a mapping; read once) as a list of ``kind`` items; else a TypeError
    that names ``what`` took it and, for a bad item, its position (``"rerank: hit 2 is a str, not a Hit"``)."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = " or ".join(k.__name__ for k in kinds)
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
        raise TypeError(f"{what} takes a list of {names}, got {type(values).__name__}")
    out = list(values)
    for i, value in enumerate(out):
        if not isinstance(value, kinds):
            raise TypeError(f"{what}: {item} {i} is a {type(value).__name__}, not a {names}: {value!r:.60}")
    return out
