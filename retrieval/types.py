"""The data types every part of the library speaks: documents in, hits out."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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


@dataclass
class Hit:
    """One ranked result: document id, score, text and 1-based rank."""

    id: str
    score: float
    text: str = ""
    rank: int = 0
    title: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "score": self.score, "rank": self.rank,
                               "title": self.title, "text": self.text}
        if self.extra:
            out["extra"] = self.extra
        return out


# BEIR's dict shapes: qrels[qid][docid] = grade; run[qid][docid] = score.
Qrels = dict[str, dict[str, int]]
Run = dict[str, dict[str, float]]
