"""Clean and filter generated queries: a weak generator writes empty, repeated and copied ones.

:func:`normalise_query` turns a raw reply into one query line (numbering, labels such as ``Query:`` and quotes
removed). :func:`filter_queries` then drops, in this order:

* ``empty``: nothing with a letter or digit left;
* ``duplicate_in_doc``: the same query (case, spacing and punctuation ignored) already kept for this document;
* ``duplicate_global``: already kept for another document (it could not tell the two apart);
* ``copied``: a near-copy of its document: at least ``copy_threshold`` of its word trigrams occur in the
  document (a verbatim span of 3+ words scores 1.0). Queries under 3 words are never copies: short keyword
  queries overlap their document by design;
* ``off_topic``: not one content word (4+ characters, not a stop word or a word of the prompt) in common with
  the document, such as "What is the main finding of the article?";
* ``copied_example``: with worked examples, the same as an example's query or a near-copy of one (as
  ``copied``): a few-shot generator that repeats an example has not read the passage.

Every drop is counted by reason, so a run records how many queries its generator really contributed::

    kept, counts = filter_queries({"d1": ("Mice and cancer", ...)}, {"d1": "..."}, copy_threshold=0.75)
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from training.sentences import SENTENCE_END

DROP_REASONS = ("empty", "duplicate_in_doc", "duplicate_global", "copied", "off_topic", "copied_example")
_LABEL = re.compile(r"^\s*(?:(?:[-*•]+|\(?\d{1,2}[.):])(?=\s|$)"          # "- ", "1. ", "(2) "
                    r"|(?:search\s+)?(?:query|question|claim|q)\s*\d*\s*:)\s*",  # "Query:", "Q1:"
                    re.IGNORECASE)
_QUOTES = "\"'`“”‘’«»"
_WORD = re.compile(r"\w+", re.UNICODE)
# Words of 4+ characters that say nothing about a document: stop words and the words of the prompts.
STOP_WORDS = frozenset("""about above after again against also another answer answers article based been before
being between both claim could does doing down during each find finding findings from further have having here how
into just keyword keywords main more most only other over passage paper query question questions researcher same
search should some state states study such than that their them then there these they this those through under
until very what when where which while will with would your""".split())


@dataclass(frozen=True)
class GeneratedQuery:
    """A kept query: its id (``<doc id>-q<i>``), the document it was generated for, and its text."""

    qid: str
    doc: str
    text: str


@dataclass
class FilterCounts:
    """How many raw queries came in, how many were kept, and how many were dropped for each reason."""

    generated: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))

    def to_dict(self) -> dict[str, object]:
        return {"generated": self.generated, "kept": self.kept, "dropped": dict(self.dropped)}


def normalise_query(raw: str) -> str:
    """The first sentence of the first non-blank line of a reply, without list markers, ``Query:``-style labels,
    quotes or extra spaces."""
    line = next((ln for ln in raw.splitlines() if _WORD.search(ln)), "")
    previous = None
    while previous != line:   # "1. Query: "..."" loses each layer in turn
        previous = line
        line = _LABEL.sub("", line, count=1).strip().strip(_QUOTES).strip()
    return " ".join(SENTENCE_END.split(line, maxsplit=1)[0].split())


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters and digits), the unit of duplicate keys and copy overlap."""
    return _WORD.findall(text.casefold())


def trigrams(tokens: Sequence[str]) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + 3]) for i in range(len(tokens) - 2)]


def copy_overlap(query: str, document: str) -> float:
    """Share of the query's word trigrams that occur in ``document`` (0.0 for queries under 3 words)."""
    grams = trigrams(words(query))
    if not grams:
        return 0.0
    present = set(trigrams(words(document)))
    return sum(g in present for g in grams) / len(grams)


def content_words(text: str) -> set[str]:
    """Words of 4+ characters that are not :data:`STOP_WORDS`."""
    return {w for w in words(text) if len(w) >= 4 and w not in STOP_WORDS}


def drop_reason(query: str, document: str, seen_in_doc: set[str], seen: set[str], copy_threshold: float,
                examples: Sequence[str] = ()) -> str | None:
    """Why ``query`` is dropped (one of :data:`DROP_REASONS`), or None to keep it; ``examples`` are the example
    queries the generator was shown."""
    key = " ".join(words(query))
    if not key:
        return "empty"
    if key in seen_in_doc:
        return "duplicate_in_doc"
    if key in seen:
        return "duplicate_global"
    if copy_overlap(query, document) >= copy_threshold:
        return "copied"
    if not content_words(query) & content_words(document):
        return "off_topic"
    if any(key == " ".join(words(e)) or copy_overlap(query, e) >= copy_threshold for e in examples):
        return "copied_example"
    return None


def filter_queries(raw: Mapping[str, Sequence[str]], documents: Mapping[str, str],
                   copy_threshold: float = 0.75, examples: Sequence[str] = ()) -> tuple[list[GeneratedQuery], FilterCounts]:
    """Kept queries (in document order, then generation order) and the counts, from raw replies per document id
    (``examples``: the queries of the worked examples the generator was shown)."""
    counts = FilterCounts()
    kept: list[GeneratedQuery] = []
    seen: set[str] = set()
    for doc, replies in raw.items():
        seen_in_doc: set[str] = set()
        for i, reply in enumerate(replies):
            counts.generated += 1
            query = normalise_query(reply)
            reason = drop_reason(query, documents[doc], seen_in_doc, seen, copy_threshold, examples)
            if reason is not None:
                counts.dropped[reason] += 1
                continue
            key = " ".join(words(query))
            seen_in_doc.add(key)
            seen.add(key)
            kept.append(GeneratedQuery(f"{doc}-q{i}", doc, query))
    counts.kept = len(kept)
    return kept, counts
