"""A BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv) written from small dicts, for training tests."""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path


def write_beir_folder(folder: Path, docs: Mapping[str, str], queries: Mapping[str, str],
                      qrels: Mapping[str, Mapping[str, int]], splits: tuple[str, ...] = ("train",)) -> Path:
    """Write ``docs`` (id -> text), ``queries`` and ``qrels`` as a BEIR folder; the same qrels under each split."""
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": i, "title": "", "text": t}) + "\n" for i, t in docs.items()), encoding="utf-8")
    (folder / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()), encoding="utf-8")
    rows = [f"{q}\t{d}\t{g}" for q, rels in qrels.items() for d, g in rels.items()]
    for split in splits:
        (folder / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n")
    return folder
