"""Demonstrations for the query-likelihood reranker (``--option examples=FILE``), drawn from a BEIR train split.

    python benchmarks/ql_demonstrations.py --shots 2 --out benchmarks/out/scifact-ql-shots2.jsonl

Each line is ``{"passage": title + text, "query": ..., "query_id": ..., "doc_id": ...}``: a train query and one
document it is judged relevant to. The draw keeps every evaluation clean:

* it skips the first ``--skip`` queries of ``benchmarks/rerank.py``'s seeded order of the same split (the queries
  that ``rerank.py --split train --max-queries 100`` scores when a setting is chosen on train), and
* it never uses a document judged relevant to a query of ``--held-out`` (the test split), nor a query that
  shares one, so no demonstration shows a test query's answer.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from retrieval.data import load_beir  # noqa: E402
from retrieval.datasets import beir_folder, data_dir, seeded_order  # noqa: E402
from retrieval.persistence import atomic_write_text  # noqa: E402
from retrieval.argtypes import at_least  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(data_dir(default=REPO.parent / "shared" / "data")),
                        help="data root or a BEIR folder")
    parser.add_argument("--dataset", default="beir/scifact")
    parser.add_argument("--split", default="train", help="where the demonstrations come from")
    parser.add_argument("--held-out", default="test", help="split whose relevant documents are never shown")
    parser.add_argument("--shots", type=at_least(1), default=2)
    parser.add_argument("--skip", type=at_least(0), default=100,
                        help="leave out the first N queries of rerank.py's seeded order of --split")
    parser.add_argument("--seed", type=int, default=0, help="rerank.py's --seed (the order that --skip follows)")
    parser.add_argument("--out", required=True)
    return parser.parse_args(argv)


def draw(folder: Path, split: str, held_out: str, shots: int, skip: int, seed: int) -> list[dict]:
    """The first ``shots`` usable queries after the ``skip`` that rerank.py evaluates, each with one relevant doc."""
    source = load_beir(folder, split)
    banned = {d for docs in load_beir(folder, held_out).qrels.values() for d, grade in docs.items() if grade > 0}
    qids = seeded_order(source.queries, seed)   # rerank.py's order, so --skip leaves out exactly what it scores
    picked: list[tuple[str, str]] = []
    for qid in qids[skip:]:
        relevant = sorted(d for d, grade in source.qrels.get(qid, {}).items() if grade > 0)
        if relevant and not banned.intersection(relevant):
            picked.append((qid, relevant[0]))
        if len(picked) == shots:
            break
    if len(picked) < shots:
        raise SystemExit(f"{folder}: only {len(picked)} usable {split} queries after skipping {skip}; "
                         f"asked for {shots}")
    wanted = {d for _, d in picked}
    docs = {doc.id: doc for doc in source.corpus() if doc.id in wanted}
    missing = sorted(wanted - set(docs))
    if missing:
        raise SystemExit(f"{source.corpus_path}: relevant documents {missing} are not in the corpus")
    rows = []
    for qid, did in picked:
        rows.append({"passage": docs[did].full_text, "query": source.queries[qid], "query_id": qid, "doc_id": did})
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if args.shots < 1 or args.skip < 0:
        raise SystemExit("--shots must be >= 1 and --skip >= 0")
    folder = beir_folder(args.data, args.dataset)
    rows = draw(folder, args.split, args.held_out, args.shots, args.skip, args.seed)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(args.out), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    for r in rows:
        print(f"{r['query_id']} / {r['doc_id']}: {r['query']}")
    return rows


if __name__ == "__main__":
    main()
