"""Corpus pairs for the in-batch-negatives objective: which documents qualify, and what each pair holds."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

pytest.importorskip("sentence_transformers")

from training.pairs import DocumentParts, corpus_documents, make_pair  # noqa: E402


def write_corpus(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


ROWS = [
    {"_id": "1", "title": "Gene X drives tumour growth", "text": "We knock out gene X in mice. Tumours shrink."},
    {"_id": "2", "title": "gene x  drives TUMOUR growth", "text": "A second paper with the same title text."},
    {"_id": "3", "title": "", "text": "No title here at all. But two sentences of text."},
    {"_id": "4", "title": "Short", "text": "One word titles give no pair."},
    {"_id": "5", "title": "Sleep and memory", "text": "Too few."},
]


def test_title_body_keeps_titled_documents_once(tmp_path: Path) -> None:
    docs = corpus_documents(write_corpus(tmp_path / "c.jsonl", ROWS), "title-body", min_words=3)
    assert [d.title for d in docs] == ["Gene X drives tumour growth"]  # 2 repeats 1's title; 3-5 fail the rules
    assert make_pair(docs[0], "title-body", random.Random(0)) == (
        "Gene X drives tumour growth", "We knock out gene X in mice. Tumours shrink.")


def test_ict_takes_one_sentence_out_of_its_passage_nine_times_in_ten() -> None:
    parts = DocumentParts("T", tuple(f"Sentence number {i}." for i in range(5)))
    rng = random.Random(0)
    kept = 0
    for _ in range(2000):
        anchor, passage = make_pair(parts, "ict", rng)
        assert anchor in parts.sentences and passage.startswith("T ")
        kept += anchor in passage
        assert sum(s in passage for s in parts.sentences) >= 4
    assert 0.07 < kept / 2000 < 0.13


def test_ict_needs_two_sentences_and_bad_sources_are_named(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "c.jsonl", ROWS)
    assert [d.title for d in corpus_documents(corpus, "ict", min_words=3)] == ["Gene X drives tumour growth", ""]
    with pytest.raises(ValueError, match="pair source 'bogus'"):
        corpus_documents(corpus, "bogus")
    with pytest.raises(ValueError, match=r"c.jsonl: none of its 5 documents .* no title-body pair"):
        corpus_documents(corpus, "title-body", min_words=100)


def test_pairs_on_real_scifact_documents(scifact_dir: Path) -> None:
    docs = corpus_documents(scifact_dir, "title-body", max_documents=200)
    assert len(docs) == 200 and len({d.title.casefold() for d in docs}) == 200
    title, body = make_pair(docs[0], "title-body", random.Random(0))
    assert title and body and title not in body
