"""Unlabeled corpus -> training sentences: split long documents, filter by length, dedupe.

Domain adaptation objectives (TSDAE, SimCSE, CT) train on sentences, not whole documents: the
papers use single sentences, and short inputs keep a CPU step cheap.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from retrieval.data import iter_documents, read_text_lines
from retrieval.types import Document

logger = logging.getLogger(__name__)

# A sentence ends at . ! or ? followed by space and an upper-case letter, digit or opening bracket/quote.
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[])")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class SentenceOptions:
    """How documents become sentences: word-count bounds, titles, and an optional cap."""

    min_words: int = 5
    max_words: int = 64  # longer sentences are cut into windows of this many words
    include_titles: bool = True
    max_sentences: int | None = None

    def __post_init__(self) -> None:
        if self.min_words < 1 or self.max_words < self.min_words:
            raise ValueError(f"sentence length bounds: need 1 <= min_words <= max_words, got "
                             f"{self.min_words}, {self.max_words}")


def split_sentences(text: str) -> list[str]:
    """Split ``text`` at sentence ends (a regex rule, no NLTK download); whitespace is normalised."""
    text = _SPACE.sub(" ", text).strip()
    return [s.strip() for s in SENTENCE_END.split(text) if s.strip()] if text else []


def windows(sentence: str, max_words: int) -> list[str]:
    """Cut an over-long sentence into consecutive windows of at most ``max_words`` words."""
    words = sentence.split(" ")
    return [" ".join(words[i:i + max_words]) for i in range(0, len(words), max_words)]


def document_sentences(doc: Document, options: SentenceOptions) -> Iterator[str]:
    """The sentences of one document (title first when ``include_titles``), within the length bounds."""
    parts = ([doc.title] if options.include_titles and doc.title.strip() else []) + split_sentences(doc.text)
    for part in parts:
        for piece in windows(_SPACE.sub(" ", part).strip(), options.max_words):
            if len(piece.split(" ")) >= options.min_words:
                yield piece


def read_corpus(source: str | Path | Iterable[object]) -> Iterator[Document]:
    """Documents of any corpus ``retrieval.data`` reads, plus ``.txt`` files (one document a line)."""
    path = Path(source) if isinstance(source, (str, Path)) else None
    if path is not None and path.is_file() and path.suffix.lower() == ".txt":
        # Plain text: one document per non-blank line.
        for i, line in enumerate(read_text_lines(path)):
            yield Document(id=str(i), text=line)
        return
    yield from iter_documents(source)  # type: ignore[arg-type]


def corpus_sentences(source: str | Path | Iterable[object], options: SentenceOptions | None = None) -> list[str]:
    """Sentences of a corpus (BEIR folder, JSONL/CSV/TSV, ``.txt`` one doc per line, or an iterable).

    Duplicates (case- and space-insensitive) keep their first occurrence; order is the corpus order,
    so the result is deterministic. Raises ``ValueError`` when no sentence passes the filters.
    """
    options = options or SentenceOptions()
    seen: set[str] = set()
    out: list[str] = []
    docs = 0
    for doc in read_corpus(source):
        docs += 1
        for sentence in document_sentences(doc, options):
            key = sentence.casefold()
            if key not in seen:
                seen.add(key)
                out.append(sentence)
                if options.max_sentences is not None and len(out) >= options.max_sentences:
                    logger.info("kept the first %d sentences (max_sentences)", len(out))
                    return out
    if not out:
        raise ValueError(f"{source}: no sentence of {options.min_words}-{options.max_words} words in {docs} documents")
    logger.info("%d documents -> %d unique sentences", docs, len(out))
    return out
