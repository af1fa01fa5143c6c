"""The bundled GGUF LLM through transformers (dequantised to fp32) and through llama.cpp, in the same run.

    python benchmarks/llm_runtime.py --threads 1 --queries 4 --passages 10 --llama-cpp f16 --llama-cpp q8_0:plain

Each ``--llama-cpp`` names one llama.cpp variant: the weight type it runs (``f16``/``q8_0``: a re-typed copy,
``none``: the file as shipped) and, after ``:plain``, plain CPU buffers (no AMX or repacked weights; the way
quantised files run on AMX CPUs, where the extra buffers crash).

Both runtimes keep the KV cache of a prompt start they have seen (llama.cpp between prompts, transformers for the
prefix a batch shares, see ``HFCausalLM``); ``--transformers-plain`` adds transformers without it, as it ran before.

Real SciFact prompts: for a few queries, BM25's top passages as yes/no prompts (every passage of a query shares
the system prompt and the query, as in reranking) and as query-likelihood prompts, one call per query as the
rerankers make them. Per runtime, best of
``--repeats`` passes, runtimes alternating so machine load hits both alike:

* prompt tokens/s = all prompt tokens (as tokenized) / seconds of ``choice_logprobs`` (yes/no) and
  ``continuation_logprobs`` (query likelihood); llama.cpp also reports the tokens its KV cache spared;
* generation tokens/s = (generated tokens - 1) / (seconds of a ``--gen-tokens`` greedy reply - seconds of a
  1-token reply) over the same prompt, each of the two the fastest of all passes (the difference of two noisy
  times: the best of per-pass ratios once read 1,661 tok/s for a 135M model on one core, a stall in one 1-token reply);
* agreement: yes/no scores P(Yes)/(P(Yes)+P(No)) of the two runtimes (max |diff|, same order per query);
* roofline: the model's matmul work per prompt token (its linear layers, 2 FLOPs per weight; attention scores and
  the LM head left out) against a PyTorch fp32 GEMM of the model's own MLP shape on ``--threads`` threads. It
  says how close each runtime's evaluated prompt tokens (the KV cache's spared ones excluded) come to the
  arithmetic this CPU does in float, and so the most any float runtime could gain over transformers here.

``--ql-examples FILE`` (the JSONL of ``benchmarks/ql_demonstrations.py``): also time the query-likelihood
reranker itself with those demonstrations, as the quality rows run it (``--ql-instruction``, ``--ql-passage-words``):
every prompt starts with the same shots, which each runtime's KV cache computes once (``transformers plain``: for
every passage). Reported as prompt tokens/s and passages/s, with the cache's share and the two runtimes' agreement
(max |mean log-prob difference|, same order per query).

``--chunk-sizes 55,110,220,440``: llama.cpp's prompt rate for one sequence of N tokens decoded as one batch, per
N (random token ids, cold cache, best of ``--repeats``). It tells whether batching several passages into one
decode would raise the rate: on a CPU it does if larger batches run faster per token.

Prints a table and writes ``benchmarks/out/llm_runtime.json`` with the CPU flags and the load average.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from retrieval.argtypes import at_least  # noqa: E402
from retrieval.data import load_beir  # noqa: E402
from retrieval.datasets import data_dir, seeded_order  # noqa: E402
from retrieval.dense.cpu import cpu_flags  # noqa: E402
from retrieval.models import DEFAULT_LLM  # noqa: E402
from retrieval.rerank.base import passage_text  # noqa: E402
from retrieval.rerank.llm.backends import load_backend  # noqa: E402
from retrieval.rerank.llm.base import _softmax  # noqa: E402
from retrieval.rerank.llm.gguf_convert import TARGETS  # noqa: E402
from retrieval.rerank.llm.prompts import (QL_INSTRUCTION, YES_NO_CHOICES, query_likelihood_messages,  # noqa: E402
                                          truncate_words, yes_no_messages)
from retrieval.rerank.llm.query_likelihood import QueryLikelihoodReranker  # noqa: E402
from retrieval.retriever import Retriever  # noqa: E402

FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8")
GEN_PROMPT = [{"role": "user", "content": "Write a long story about a cat who learns to sail across the sea."}]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(data_dir(default=REPO.parent / "shared" / "data")))
    parser.add_argument("--model", default=DEFAULT_LLM)
    parser.add_argument("--queries", type=at_least(1), default=4)
    parser.add_argument("--passages", type=at_least(1), default=10, help="BM25 passages per query")
    parser.add_argument("--passage-words", type=at_least(1), default=60)
    parser.add_argument("--gen-tokens", type=at_least(2), default=128)   # its rate is a difference with 1 token
    parser.add_argument("--threads", type=at_least(1), default=1)
    parser.add_argument("--llama-cpp", action="append", dest="variants", metavar="TYPE[:plain]",
                        help="llama.cpp variant, repeatable: f16, q8_0 or none (as shipped), :plain for plain CPU "
                             "buffers (default: f16)")
    parser.add_argument("--transformers-plain", action="store_true",
                        help="also time transformers without its prefix cache (every prompt run whole)")
    parser.add_argument("--repeats", type=at_least(1), default=3)
    parser.add_argument("--chunk-sizes", type=sizes, default=[], metavar="N,N,...",
                        help="also time llama.cpp's prompt rate for single batches of these token counts")
    parser.add_argument("--ql-examples", metavar="FILE", help="also time the QL reranker with these demonstrations")
    parser.add_argument("--ql-instruction", default=QL_INSTRUCTION)
    parser.add_argument("--ql-passage-words", type=at_least(1), help="passage cut for --ql-examples (default: "
                                                                       "--passage-words)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "llm_runtime.json"))
    return parser.parse_args(argv)


def sizes(text: str) -> list[int]:
    """``"55,110"`` -> ``[55, 110]``, each at least 1."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated token counts >= 1, got {text!r}")
    return values


def chunk_rates(backend, chunk_sizes: list[int], repeats: int, seed: int = 0) -> dict[str, float]:
    """Prompt tokens/s of one decode of N tokens, per N: random ids from a cold KV cache, best of ``repeats``."""
    out = {}
    for n in chunk_sizes:
        if n > min(backend.n_ctx, backend.n_batch):
            raise SystemExit(f"--chunk-sizes {n}: more than the context ({backend.n_ctx}) or one decode "
                             f"(n_batch {backend.n_batch})")
        tokens = np.random.default_rng(seed).integers(100, backend.n_vocab - 100, size=n).tolist()
        fastest = float("inf")
        for _ in range(repeats):
            backend.forget_cache()
            fastest = min(fastest, timed(backend.logits, tokens, n - 1)[1])
        out[str(n)] = round(n / fastest, 1)
    return out


def scifact_prompts(args: argparse.Namespace) -> tuple[list[str], list[list[str]], list[list]]:
    """Queries and, per query, BM25's top passages (truncated, and as hits) from SciFact test."""
    dataset = load_beir(Path(args.data) / "beir" / "scifact", "test")
    qids = seeded_order(dataset.queries, 0)
    queries = [dataset.queries[q] for q in qids[: args.queries]]
    retriever = Retriever.from_documents(dataset.corpus_path, method="bm25", show_progress=False)
    hits = retriever.retrieve_batch(queries, k=args.passages)
    return queries, [[truncate_words(passage_text(h), args.passage_words) for h in row] for row in hits], hits


def timed(fn, *a):
    tic = time.perf_counter()
    out = fn(*a)
    return out, time.perf_counter() - tic


def measure(backend, queries, passages, args, counts, shots=None) -> dict:
    """One pass of every measurement for one runtime (``shots``: (QL reranker with demonstrations, hits))."""
    # one call per query, as a reranker makes them (a batch never mixes two queries' prompts)
    yes_no = [[yes_no_messages(q, p) for p in ps] for q, ps in zip(queries, passages)]
    ql = [([query_likelihood_messages(p) for p in ps], [q] * len(ps)) for q, ps in zip(queries, passages)]
    reuse_before = getattr(backend, "tokens_reused", 0)
    logprobs, yes_no_s = timed(lambda: np.concatenate([backend.choice_logprobs(rows, YES_NO_CHOICES)
                                                       for rows in yes_no]))
    reused = getattr(backend, "tokens_reused", 0) - reuse_before
    _, ql_s = timed(lambda: [backend.continuation_logprobs(rows, targets) for rows, targets in ql])
    _, one_s = timed(backend.complete, GEN_PROMPT, 1)
    text, gen_s = timed(backend.complete, GEN_PROMPT, args.gen_tokens)
    generated = counts["generated"](text)
    extra = {}
    if shots is not None:
        reranker, hits = shots
        reuse_before = getattr(backend, "tokens_reused", 0)
        scores, shots_s = timed(lambda: [reranker.score(q, row) for q, row in zip(queries, hits)])
        extra = {"ql_shots_s": shots_s, "ql_shots_prompt_tokens_per_s": counts["ql_shots"] / shots_s,
                 "ql_shots_passages_per_s": sum(map(len, hits)) / shots_s,
                 "ql_shots_tokens_reused": getattr(backend, "tokens_reused", 0) - reuse_before,
                 "ql_shots_scores": np.concatenate(scores).tolist()}
    return extra | {"yes_no_s": yes_no_s, "ql_s": ql_s, "one_token_s": one_s, "gen_s": gen_s,
            "yes_no_prompt_tokens_per_s": counts["yes_no"] / yes_no_s,
            "ql_prompt_tokens_per_s": counts["ql"] / ql_s, "yes_no_tokens_reused": reused,
            "generated_tokens": generated,   # the rate comes from all passes' times (best), not from one pass
            "scores": _softmax(np.asarray(logprobs))[:, 0].tolist()}


def variant_options(variant: str) -> dict:
    """``"q8_0:plain"`` -> the llama-cpp backend's ``convert`` and ``extra_buffers`` options."""
    kind, _, buffers = variant.partition(":")
    if kind not in (*TARGETS, "none") or buffers not in ("", "plain"):
        raise SystemExit(f"--llama-cpp {variant!r}: expected one of {', '.join(TARGETS)} or none, "
                         "optionally followed by :plain")
    return {"convert": None if kind == "none" else kind, "extra_buffers": buffers != "plain"}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    args.variants = args.variants or ["f16"]
    import torch

    torch.set_num_threads(args.threads)
    queries, passages, hits = scifact_prompts(args)
    backends, load_s = {}, {}
    runtimes = [("transformers", "transformers", {"batch_size": args.passages})]
    if args.transformers_plain:
        runtimes += [("transformers plain", "transformers", {"batch_size": args.passages, "prefix_cache": False})]
    runtimes += [(f"llama-cpp {v}", "llama-cpp", {"n_threads": args.threads} | variant_options(v)) for v in args.variants]
    for name, kind, options in runtimes:
        backends[name], load_s[name] = timed(lambda: load_backend(args.model, backend=kind, **options))
    hf = backends["transformers"]
    tokens = lambda m: len(hf.tokenizer(hf.render(m), add_special_tokens=False)["input_ids"])  # noqa: E731
    counts = {"yes_no": sum(tokens(yes_no_messages(q, p)) for q, ps in zip(queries, passages) for p in ps),
              "ql": sum(tokens(query_likelihood_messages(p)) + len(hf.tokenizer(q, add_special_tokens=False)["input_ids"])
                        for q, ps in zip(queries, passages) for p in ps),
              "generated": lambda text: len(hf.tokenizer(text, add_special_tokens=False)["input_ids"])}
    shots = {}
    if args.ql_examples:
        words = args.ql_passage_words or args.passage_words
        shots = {name: QueryLikelihoodReranker(b, max_passage_words=words, instruction=args.ql_instruction,
                                               examples=args.ql_examples) for name, b in backends.items()}
        ranker = shots["transformers"]
        counts["ql_shots"] = sum(tokens(query_likelihood_messages(truncate_words(passage_text(h), words),
                                                                  ranker.instruction, ranker.examples))
                                 + len(hf.tokenizer(q, add_special_tokens=False)["input_ids"])
                                 for q, row in zip(queries, hits) for h in row)
    runs: dict[str, list[dict]] = {name: [] for name in backends}
    for _ in range(args.repeats):
        for name, backend in backends.items():
            if hasattr(backend, "forget_cache"):
                backend.forget_cache()  # each pass starts cold: reuse only within the pass, as in reranking
            runs[name].append(measure(backend, queries, passages, args, counts,
                                      (shots[name], hits) if shots else None))
    result = summarise(args, runs, load_s, counts, queries, passages)
    result["roofline"] = roofline(result, hf.model.config, gemm_gflops(hf.model.config, args.threads))
    if args.chunk_sizes:
        result["chunk_tokens_per_s"] = {name: chunk_rates(b, args.chunk_sizes, args.repeats)
                                        for name, b in backends.items() if name != "transformers"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2), encoding="utf-8")
    print_table(result)
    return result


def best(rows: list[dict], key: str) -> float:
    """The fastest pass for a prompt rate; for generation, the fastest reply less the fastest 1-token reply."""
    if key != "generation_tokens_per_s":
        return max(r[key] for r in rows)
    fastest = min(rows, key=lambda r: r["gen_s"])
    return (fastest["generated_tokens"] - 1) / max(fastest["gen_s"] - min(r["one_token_s"] for r in rows), 1e-9)


def agreement(hf_scores: np.ndarray, cpp_scores: np.ndarray, n: int) -> dict:
    """Largest yes/no score difference, and for how many queries the two rank the passages alike."""
    same_order = [bool(np.array_equal(np.argsort(-hf_scores[i:i + n], kind="stable"),
                                      np.argsort(-cpp_scores[i:i + n], kind="stable")))
                  for i in range(0, len(hf_scores), n)]
    return {"max_abs_diff": float(np.max(np.abs(hf_scores - cpp_scores))), "queries_same_order": sum(same_order),
            "of_queries": len(same_order)}


def summarise(args, runs, load_s, counts, queries, passages) -> dict:
    hf_scores = np.array(runs["transformers"][-1]["scores"])
    variants = [name for name in runs if name != "transformers"]
    keys = ("yes_no_prompt_tokens_per_s", "ql_prompt_tokens_per_s", "generation_tokens_per_s")
    shots = "ql_shots_s" in runs["transformers"][-1]
    if shots:
        keys += ("ql_shots_prompt_tokens_per_s", "ql_shots_passages_per_s")
    table = {name: {k: round(best(rows, k), 3 if "passages" in k else 1) for k in keys}
             | {"load_s": round(load_s[name], 2)} for name, rows in runs.items()}
    for name in runs:
        table[name]["yes_no_tokens_reused"] = runs[name][-1]["yes_no_tokens_reused"]
        if shots:
            table[name]["ql_shots_tokens_reused"] = runs[name][-1]["ql_shots_tokens_reused"]
    extra = {}
    if shots:
        hf_ql = np.array(runs["transformers"][-1]["ql_shots_scores"])
        extra = {"ql_examples": args.ql_examples, "ql_instruction": args.ql_instruction,
                 "ql_passage_words": args.ql_passage_words or args.passage_words,
                 "ql_shots_agreement": {name: agreement(hf_ql, np.array(runs[name][-1]["ql_shots_scores"]),
                                                        args.passages) for name in variants}}
    return extra | {
        "model": args.model, "llama_cpp_variants": args.variants, "threads": args.threads, "queries": len(queries),
        "passages_per_query": args.passages,
        "passage_words": args.passage_words,
        "prompt_tokens": {k: counts[k] for k in ("yes_no", "ql", "ql_shots") if k in counts},
        "runtimes": table,
        "speedup_vs_transformers": {name: {k: round(table[name][k] / table["transformers"][k], 2) for k in keys}
                                    for name in variants},
        "yes_no_agreement": {name: agreement(hf_scores, np.array(runs[name][-1]["scores"]), args.passages)
                             for name in variants},
        "passes": runs, "cpu_flags": sorted(set(FLAGS) & cpu_flags()), "cpu": platform.processor() or platform.machine(),
        "load_average": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python benchmarks/llm_runtime.py " + " ".join(sys.argv[1:]),
    }


def linear_flops_per_token(config) -> float:
    """FLOPs of one token through a Llama-style decoder's linear layers (q, k, v, o and the gated MLP)."""
    hidden, layers = config.hidden_size, config.num_hidden_layers
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    weights = hidden * heads * head_dim * 2 + hidden * kv * head_dim * 2 + 3 * hidden * config.intermediate_size
    return 2.0 * layers * weights


def gemm_gflops(config, threads: int, rows: int = 512, repeats: int = 7) -> float:
    """Best fp32 GEMM rate of PyTorch on ``threads`` threads, at the model's MLP shape: what this CPU does in float."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(rows, config.hidden_size), torch.randn(config.hidden_size, config.intermediate_size)
    for _ in range(3):
        a @ b
    fastest = min(timed(lambda: [a @ b for _ in range(10)])[1] / 10 for _ in range(repeats))
    return 2.0 * rows * config.hidden_size * config.intermediate_size / fastest / 1e9


def roofline(result: dict, config, gemm: float) -> dict:
    """Each runtime's evaluated prompt rate as GFLOP/s and as a share of the GEMM rate; the float ceiling."""
    flops = linear_flops_per_token(config)
    total = result["prompt_tokens"]["yes_no"]
    rows, evaluated = {}, {}
    for name, row in result["runtimes"].items():
        spared = row.get("yes_no_tokens_reused", 0) / total
        evaluated[name] = {"yes_no": row["yes_no_prompt_tokens_per_s"] * (1 - spared),
                           "ql": row["ql_prompt_tokens_per_s"]}
        rows[name] = {f"{k}_evaluated_tokens_per_s": round(v, 1) for k, v in evaluated[name].items()}
        rows[name] |= {f"{k}_share_of_gemm": round(v * flops / 1e9 / gemm, 2) for k, v in evaluated[name].items()}
    ceiling = gemm * 1e9 / flops          # evaluated tokens/s of a runtime whose every matmul ran at the GEMM rate
    reuse = max(row.get("yes_no_tokens_reused", 0) for row in result["runtimes"].values()) / total
    hf = result["runtimes"]["transformers"]
    return {"linear_gflop_per_token": round(flops / 1e9, 4), "fp32_gemm_gflop_per_s": round(gemm, 1),
            "runtimes": rows, "ceiling_evaluated_tokens_per_s": round(ceiling, 1),
            # the most a float runtime could gain over transformers, with the KV cache reuse measured here
            "ceiling_vs_transformers": {"yes_no": round(ceiling / (1 - reuse) / hf["yes_no_prompt_tokens_per_s"], 2),
                                        "ql": round(ceiling / hf["ql_prompt_tokens_per_s"], 2)}}


def print_table(result: dict) -> None:
    print(f"{'runtime':<24}{'yes/no prompt tok/s':>22}{'QL prompt tok/s':>18}{'generation tok/s':>18}{'load s':>8}")
    for name, row in result["runtimes"].items():
        print(f"{name:<24}{row['yes_no_prompt_tokens_per_s']:>22}{row['ql_prompt_tokens_per_s']:>18}"
              f"{row['generation_tokens_per_s']:>18}{row['load_s']:>8}")
    for name, ratios in result["speedup_vs_transformers"].items():
        print(f"{name} / transformers: {ratios}; yes/no agreement {result['yes_no_agreement'][name]}")
        if "ql_shots_agreement" in result:
            row = result["runtimes"][name]
            print(f"  QL with {result['ql_examples']}: {row['ql_shots_passages_per_s']} passages/s, "
                  f"{row['ql_shots_tokens_reused']} of {result['prompt_tokens']['ql_shots']} prompt tokens from the "
                  f"KV cache; agreement {result['ql_shots_agreement'][name]}")
    if "roofline" in result:
        roof = result["roofline"]
        print(f"roofline: {roof['linear_gflop_per_token']} GFLOP per prompt token, "
              f"fp32 GEMM {roof['fp32_gemm_gflop_per_s']} GFLOP/s; share of it per runtime {roof['runtimes']}; "
              f"a float runtime gains at most {roof['ceiling_vs_transformers']} over transformers")
    for name, rates in result.get("chunk_tokens_per_s", {}).items():
        print(f"{name}, prompt tokens/s by tokens per decode: {rates}")
    print(f"CPU flags {result['cpu_flags']}; load average {result['load_average']}")


if __name__ == "__main__":
    main()
