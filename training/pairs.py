"""Self-supervised (anchor, passage) pairs from an unlabeled corpus, trained with in-batch negatives.

Most embedders, all-MiniLM-L6-v2 included, were trained with ``MultipleNegativesRankingLoss`` (InfoNCE
over in-batch negatives) on (anchor, positive) pairs. Continuing that *original objective* on pairs
cut from the target corpus adapts the model to the domain without labels:

* ``title-body``: a document's title is the anchor, its text the passage (documents without a usable
  title are skipped); titles of papers read much like the claims and questions users search with.
* ``ict``: the Inverse Cloze Task (Lee, Chang & Toutanova, ACL 2019): a random sentence is the anchor,
  the title and the rest of the document the passage; the sentence stays in its passage one time in ten.

Example::

    docs = corpus_documents("../shared/data/beir/scifact", source="title-body")
    objective = Pairs(model, source="title-body")
    batch = objective.make_batch(docs[:32], random.Random(0))   # columns: [titles, bodies]
"""
from __future__ import annotations

import logging
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

from training.bi_encoder import BI_ENCODER
from training.config import PAIR_SOURCES, PairsConfig
from training.objective import Batch
from training.sentences import read_corpus, split_sentences

logger = logging.getLogger(__name__)

ICT_KEEP_PROBABILITY = 0.1  # the paper keeps the anchor sentence in its passage 10% of the time


@dataclass(frozen=True)
class DocumentParts:
    """A document as the pair sources see it: its title and its sentences."""

    title: str
    sentences: tuple[str, ...]


def _usable(parts: DocumentParts, source: str, min_words: int) -> bool:
    body_words = sum(len(s.split()) for s in parts.sentences)
    if source == "title-body":
        return len(parts.title.split()) >= 2 and body_words >= min_words
    return len(parts.sentences) >= 2 and body_words >= min_words


def corpus_documents(source: str | Path | Iterable[object], pair_source: str = "title-body", min_words: int = 5,
                     max_documents: int | None = None) -> list[DocumentParts]:
    """The corpus documents that can give a ``pair_source`` pair, in corpus order, duplicates dropped.

    A duplicate is a document whose title (``title-body``) or text (``ict``) was seen before,
    ignoring case and spacing. Raises ``ValueError`` when no document qualifies.
    """
    if pair_source not in PAIR_SOURCES:
        raise ValueError(f"pair source {pair_source!r}: expected one of {PAIR_SOURCES}")
    seen: set[str] = set()
    out: list[DocumentParts] = []
    total = 0
    for doc in read_corpus(source):
        total += 1
        parts = DocumentParts(" ".join(doc.title.split()), tuple(split_sentences(doc.text)))
        key = (parts.title if pair_source == "title-body" else " ".join(parts.sentences)).casefold()
        if key in seen or not _usable(parts, pair_source, min_words):
            continue
        seen.add(key)
        out.append(parts)
        if max_documents is not None and len(out) >= max_documents:
            break
    if not out:
        need = "a title of 2+ words and" if pair_source == "title-body" else "2+ sentences and"
        raise ValueError(f"{source}: none of its {total} documents has {need} a text of {min_words}+ words, "
                         f"so no {pair_source} pair can be made")
    logger.info("%d documents -> %d %s pairs", total, len(out), pair_source)
    return out


def make_pair(parts: DocumentParts, pair_source: str, rng: random.Random) -> tuple[str, str]:
    """One (anchor, passage) pair from a document; ``ict`` draws the sentence from ``rng``."""
    if pair_source == "title-body":
        return parts.title, " ".join(parts.sentences)
    i = rng.randrange(len(parts.sentences))
    keep = rng.random() < ICT_KEEP_PROBABILITY
    context = [s for j, s in enumerate(parts.sentences) if keep or j != i]
    return parts.sentences[i], " ".join(([parts.title] if parts.title else []) + context)


class Pairs:
    """In-batch-negatives contrastive loss (``MultipleNegativesRankingLoss``, scale 20) on corpus pairs."""

    name = "pairs"

    def __init__(self, model: SentenceTransformer, pair_source: str = "title-body", scale: float = 20.0) -> None:
        if pair_source not in PAIR_SOURCES:
            raise ValueError(f"pair source {pair_source!r}: expected one of {PAIR_SOURCES}")
        self.pair_source = pair_source
        self.loss = MultipleNegativesRankingLoss(model, scale=scale)

    def make_batch(self, documents: list[DocumentParts], rng: random.Random) -> Batch:
        pairs = [make_pair(d, self.pair_source, rng) for d in documents]
        return Batch([[a for a, _ in pairs], [p for _, p in pairs]])


MODEL = BI_ENCODER


def training_items(config: PairsConfig) -> list[DocumentParts]:
    """The corpus documents that give a pair (``max_sentences`` caps the number of documents)."""
    return corpus_documents(config.corpus, config.pair_source, config.min_words, config.max_sentences)


def build(config: PairsConfig, model: SentenceTransformer, items: list[DocumentParts]) -> Pairs:
    return Pairs(model, pair_source=config.pair_source)
