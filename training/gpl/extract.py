"""Extractive GPL queries (inverse cloze, Lee et al. 2019): a document's title or one of its sentences becomes the
query and is cut out of the document that the query is trained against.

Where no generator writes good queries (offline, on a CPU), a statement taken from the document itself is a faithful
query for free: in scientific abstracts the title and the closing sentence state the finding, much as a claim
does. Cutting it out keeps the task from being word copying: the student must match the statement to the *rest* of
its source, and the teacher labels exactly the texts the student is trained on. ``--generator extract:MODE``::

    title     the title is the query; the document keeps its text
    last      the last sentence of the text (an abstract's conclusion) is the query
    sentence  one sentence of the text, chosen at random per document (seeded), as in ICT

``pairs``' ICT (:func:`training.pairs.make_pair`) draws a new sentence per batch and keeps it in its passage one
time in ten; here the cut is fixed per document, because the teacher's labels and the mined negatives must be of the
very texts the student trains on.

A document yields at most one query, and only when something is left of it (a title needs a text; a sentence needs
another sentence) and the rest does not repeat the query word for word. The rewritten documents replace the
originals in the corpus that negatives are mined from.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace

from retrieval.types import Document

from training.gpl.filter import GeneratedQuery
from training.sentences import split_sentences

EXTRACT_MODES = ("title", "last", "sentence")


@dataclass
class ExtractCounts:
    """Documents offered, queries extracted, and documents skipped: too little to cut from, or the query repeated
    in what is left (a title that opens the text, a sentence written twice)."""

    documents: int = 0
    kept: int = 0
    too_short: int = 0
    repeated: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"documents": self.documents, "kept": self.kept, "too_short": self.too_short,
                "repeated": self.repeated}


def extract_mode(spec: str) -> str:
    """``extract:MODE`` -> MODE; ValueError naming the modes for anything else."""
    kind, _, mode = spec.partition(":")
    if kind != "extract" or mode not in EXTRACT_MODES:
        raise ValueError(f"an extractive generator is extract:{'|'.join(EXTRACT_MODES)}, got {spec!r}")
    return mode


def cut_query(doc: Document, mode: str, rng: random.Random, min_query_words: int = 4) -> tuple[str, Document] | None:
    """``(query, the document without it)``, or None when the document has nothing to cut or too little left."""
    if mode == "title":
        title, text = " ".join(doc.title.split()), " ".join(doc.text.split())
        if len(title.split()) < min_query_words or not text:
            return None
        return title, replace(doc, title="", text=text)
    sentences = split_sentences(doc.text)
    if len(sentences) < 2:
        return None
    if mode == "last":
        i = len(sentences) - 1
    else:
        candidates = [j for j, s in enumerate(sentences) if len(s.split()) >= min_query_words]
        if not candidates:
            return None
        i = rng.choice(candidates)
    query = sentences[i]
    if len(query.split()) < min_query_words:
        return None
    return query, replace(doc, text=" ".join(sentences[:i] + sentences[i + 1:]))


def left_in(query: str, doc: Document) -> bool:
    """Whether ``query`` still occurs in ``doc`` (case and spacing ignored)."""
    return " ".join(query.lower().split()) in " ".join(doc.full_text.lower().split())


def extract_queries(corpus: Sequence[Document], docs: Sequence[Document], mode: str, seed: int
                    ) -> tuple[list[GeneratedQuery], list[Document], ExtractCounts]:
    """One query per document of ``docs`` that has one (qid ``<doc id>-x0``), the corpus with those documents cut
    (and only those), in corpus order, and the counts. The random choice of ``sentence`` is seeded per document id."""
    if mode not in EXTRACT_MODES:
        raise ValueError(f"extractive mode must be one of {EXTRACT_MODES}, got {mode!r}")
    queries, cut, counts = [], {}, ExtractCounts(documents=len(docs))
    for doc in docs:
        found = cut_query(doc, mode, random.Random(f"{seed}:{doc.id}"))
        if found is None:
            counts.too_short += 1
            continue
        query, rest = found
        if left_in(query, rest):
            counts.repeated += 1
            continue
        queries.append(GeneratedQuery(f"{doc.id}-x0", doc.id, query))
        cut[doc.id] = rest
    counts.kept = len(queries)
    return queries, [cut.get(d.id, d) for d in corpus], counts
