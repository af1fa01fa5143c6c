"""GPL's query generation on real SciFact documents: documents/s for each generator runtime, in the same run.

    python benchmarks/gpl_generation.py --docs 24 --threads 1

Settings (all greedy, the instructions GPL uses, ``--queries-per-doc`` replies per document):

* ``llama-cpp q8_0 plain, whole replies``: what GPL ran before replies stopped at their first line (every reply
  generated to ``--max-tokens``), the peer of the next row;
* ``llama-cpp q8_0 plain, first line``: generation stops once a line holding a word is complete (all the query
  filter reads);
* ``transformers fp32, batch 1, whole replies``: the ``llm:`` generator as it was, the peer of the next rows;
* ``transformers bf16 / fp32, batch B, first line``: one cached chunk's prompts generated together.

Agreement: the share of documents whose kept (filtered) queries equal those of the setting's peer. Writes
``benchmarks/out/gpl_generation.json`` with the CPU flags and the load average.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from retrieval.datasets import beir_folder, data_dir  # noqa: E402
from retrieval.dense.cpu import cpu_flags  # noqa: E402
from retrieval.argtypes import at_least  # noqa: E402
from training.gpl.filter import filter_queries  # noqa: E402
from training.sentences import read_corpus  # noqa: E402
from training.gpl.generate import LLMQueryGenerator, generate_all, load_generator, passages_of  # noqa: E402

FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(data_dir(default=REPO.parent / "shared" / "data")))
    parser.add_argument("--dataset", default="beir/scifact")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--docs", type=at_least(1), default=24, help="documents, from the 1,000th of the corpus on")
    parser.add_argument("--queries-per-doc", type=at_least(1), default=3)
    parser.add_argument("--max-words", type=at_least(1), default=200)
    parser.add_argument("--max-tokens", type=at_least(1), default=48)
    parser.add_argument("--batch-size", type=at_least(1), default=16)
    parser.add_argument("--threads", type=at_least(1), default=1)
    parser.add_argument("--skip-fp32-batched", action="store_true")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "gpl_generation.json"))
    return parser.parse_args(argv)


def settings(args: argparse.Namespace) -> list[tuple[str, str | None, dict, bool]]:
    """(name, peer name, load_generator options, first_line) per row."""
    cpp = {"spec": f"llama-cpp:{args.model}", "convert": "q8_0", "extra_buffers": False, "threads": args.threads}
    rows = [("llama-cpp q8_0 plain, whole replies", None, cpp, False),
            ("llama-cpp q8_0 plain, first line", "llama-cpp q8_0 plain, whole replies", cpp, True),
            ("transformers fp32, batch 1, whole replies", None,
             {"spec": f"llm:{args.model}", "batch_size": 1}, False),
            (f"transformers bf16, batch {args.batch_size}, first line", "transformers fp32, batch 1, whole replies",
             {"spec": f"llm:{args.model}", "batch_size": args.batch_size, "dtype": "bfloat16"}, True)]
    if not args.skip_fp32_batched:
        rows.append((f"transformers fp32, batch {args.batch_size}, first line",
                     "transformers fp32, batch 1, whole replies",
                     {"spec": f"llm:{args.model}", "batch_size": args.batch_size}, True))
    return rows


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    folder = beir_folder(args.data, args.dataset)
    docs = list(read_corpus(str(folder)))[1000:1000 + args.docs]
    passages = passages_of([d.full_text for d in docs], args.max_words)
    texts = {d.id: d.full_text for d in docs}
    results: dict[str, dict] = {}
    kept_by: dict[str, dict[str, list[str]]] = {}
    for name, peer, options, first_line in settings(args):
        options = dict(options)
        spec = options.pop("spec")
        generator = load_generator(spec, args.max_tokens, **options)
        assert isinstance(generator, LLMQueryGenerator)
        generator.first_line = first_line
        generate_all(generator, passages[:1], 1, [0])      # warm-up: first-call allocations
        tic = time.perf_counter()
        replies = generate_all(generator, passages, args.queries_per_doc, [0] * len(docs))
        seconds = time.perf_counter() - tic
        kept, counts = filter_queries(dict(zip((d.id for d in docs), replies)), texts)
        kept_by[name] = {d.id: [q.text for q in kept if q.doc == d.id] for d in docs}
        row = {"seconds": round(seconds, 1), "docs_per_s": round(len(docs) / seconds, 3),
               "seconds_per_doc": round(seconds / len(docs), 2), "filter": counts.to_dict(),
               "reply_chars": sum(len(r) for rs in replies for r in rs)}
        if peer is not None:
            same = sum(kept_by[name][d.id] == kept_by[peer][d.id] for d in docs)
            row |= {"peer": peer, "speedup": round(results[peer]["seconds"] / seconds, 2),
                    "same_kept_queries_docs": f"{same}/{len(docs)}"}
        results[name] = row
        print(f"{name:45s} {row['seconds_per_doc']:6.2f} s/doc  kept {counts.kept}/{counts.generated}"
              + (f"  {row['speedup']}x vs {peer}, same queries for {row['same_kept_queries_docs']} docs"
                 if peer else ""), flush=True)
        del generator
    out = {"docs": len(docs), "queries_per_doc": args.queries_per_doc, "max_tokens": args.max_tokens,
           "threads": args.threads, "results": results, "cpu_flags": sorted(cpu_flags() & set(FLAGS)),
           "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
           "command": "python benchmarks/gpl_generation.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "date": time.strftime("%Y-%m-%d")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2), encoding="utf-8")
    return out


if __name__ == "__main__":
    main()
