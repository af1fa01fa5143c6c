"""Query generators for GPL's first stage: a passage in, ``n`` search queries out (raw; :mod:`.filter` cleans them).

A generator is named by a spec, ``KIND:MODEL``:

* ``llama-cpp:MODEL`` -- a GGUF file or alias (``smollm2``, the bundled SmolLM2-135M-Instruct) run by llama.cpp;
* ``llm:MODEL`` -- a causal LM through transformers (alias, folder, ``.gguf``), or any OpenAI-compatible server
  with ``llm:http://HOST:PORT/v1#MODEL_NAME``;
* ``seq2seq:FOLDER`` -- a doc2query-style encoder-decoder (e.g. BeIR/query-gen-msmarco-t5-base-v1, the paper's
  generator) that writes a query from the passage text alone, sampled as in GPL (top-k 25, top-p 0.95).

Chat LLMs decode greedily (deterministic, so a resumed run writes the same queries), and are asked a different
instruction for each of the ``n`` queries (a question, a keyword query, a claim, ...); with ``n`` larger than
:data:`INSTRUCTIONS` the instructions repeat and the filter drops the repeats. Seq2seq sampling is seeded per
document, so it too is independent of batching and resumes.

With worked examples (:class:`Example`, few-shot as in InPars and Promptagator) a chat LLM instead sees, before
each passage, a few in-domain passages with the queries written for them, as earlier chat turns; the ``i``-th
query of every document gets the ``i``-th example set (:func:`example_sets`), so a document's queries differ.
"""
from __future__ import annotations

import json
import logging
import random
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from retrieval.errors import DataError
from retrieval.rerank.llm.prompts import Messages, first_line

logger = logging.getLogger(__name__)

SYSTEM = "You write search queries. Reply with the query only, on one line."
INSTRUCTIONS = (
    "Write a question that this passage answers.",
    "Write a search query of 3 to 8 keywords that would find this passage.",
    "Write one short sentence that states the main finding of this passage.",
    "Write a question a researcher would type into a search engine to find this passage.",
)
EXAMPLE_INSTRUCTION = "Write a search query that finds this passage, like the queries written before."
TOP_K, TOP_P = 25, 0.95   # GPL's sampling for its T5 generator


@dataclass(frozen=True)
class Example:
    """A worked example for the generator: an in-domain query and (the start of) a passage it finds."""

    query: str
    passage: str


def query_prompt(passage: str, i: int, examples: Sequence[Sequence[Example]] = ()) -> Messages:
    """The chat prompt for the ``i``-th query of a passage: the instructions taken in turn, or with example sets
    the ``i``-th set as earlier turns (one instruction; the examples set the query's form)."""
    system = {"role": "system", "content": SYSTEM}
    if not examples:
        instruction = INSTRUCTIONS[i % len(INSTRUCTIONS)]
        return [system, {"role": "user", "content": f"Passage: {passage}\n\n{instruction}"}]
    turns = [system]
    for example in examples[i % len(examples)]:
        turns += [{"role": "user", "content": f"Passage: {example.passage}\n\n{EXAMPLE_INSTRUCTION}"},
                  {"role": "assistant", "content": example.query}]
    return [*turns, {"role": "user", "content": f"Passage: {passage}\n\n{EXAMPLE_INSTRUCTION}"}]


def first_positives(qrels: Mapping[str, Mapping[str, int]]) -> dict[str, str]:
    """Each judged query's first document with a positive grade, in qrels order (queries with none are left out):
    the document a real query is taken to have been written for."""
    return {qid: d for qid, docs in qrels.items()
            if (d := next((d for d, g in docs.items() if g > 0), None)) is not None}


def read_examples(source: str, split: str = "train", max_words: int = 60) -> list[Example]:
    """Worked examples from a BEIR folder (each judged query of ``split`` with its first positive document) or a
    JSONL file of ``{"query", "passage"}`` rows; passages cut to ``max_words`` words. DataError names the file
    and line of a bad row, or an empty source."""
    path = Path(source).expanduser()
    if path.is_dir():
        from retrieval.data import load_beir

        data = load_beir(path, split)
        wanted = first_positives(data.qrels)
        needed = set(wanted.values())
        texts = {d.id: d.full_text for d in data.corpus() if d.id in needed}
        rows = [(data.queries[q], texts[d]) for q, d in wanted.items() if d in texts]
        where = f"{path}, split {split!r}"
    elif path.is_file():
        rows, where = [], str(path)
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}, line {n}: not JSON ({e.msg})") from None
            if not isinstance(row, dict) or not all(isinstance(row.get(k), str) and row[k].strip()
                                                    for k in ("query", "passage")):
                raise DataError(f"{path}, line {n}: expected an object with non-empty string fields "
                                "\"query\" and \"passage\"")
            rows.append((row["query"], row["passage"]))
    else:
        raise DataError(f"{source}: no such BEIR folder or JSONL file of examples")
    examples = [Example(" ".join(q.split()), " ".join(p.split()[:max_words])) for q, p in rows]
    examples = [e for e in examples if e.query and e.passage]
    if not examples:
        raise DataError(f"{where}: holds no usable example (a query with a non-empty passage)")
    return examples


def example_sets(examples: Sequence[Example], shots: int, sets: int, seed: int) -> list[list[Example]]:
    """``sets`` disjoint sets of ``shots`` examples, drawn with ``seed`` (sets repeat when there are too few)."""
    pool = list(examples)
    random.Random(seed).shuffle(pool)
    if len(pool) < shots:
        raise ValueError(f"{shots} examples per prompt asked for, but only {len(pool)} examples were given")
    count = max(1, min(sets, len(pool) // shots))
    return [pool[k * shots:(k + 1) * shots] for k in range(count)]


class QueryGenerator(Protocol):
    """Writes ``n`` raw queries for a passage; ``seed`` makes any sampling reproducible per document."""

    def generate(self, passage: str, n: int, seed: int) -> list[str]: ...


def generate_all(generator: QueryGenerator, passages: Sequence[str], n: int, seeds: Sequence[int]) -> list[list[str]]:
    """``n`` raw queries per passage: in one call where the generator batches (``generate_many``), else in turn."""
    many = getattr(generator, "generate_many", None)
    if many is not None:
        return many(passages, n, seeds)
    return [generator.generate(p, n, s) for p, s in zip(passages, seeds)]


class LLMQueryGenerator:
    """A chat LLM backend (:mod:`retrieval.rerank.llm.backends`) prompted once per query, greedy. Each reply
    ends with its first line that holds a word (all the filter reads), so local backends stop generating there;
    backends with ``complete_many`` get a whole chunk of prompts at once (transformers batches them)."""

    def __init__(self, backend: Any, max_tokens: int = 48, first_line: bool = True,
                 examples: Sequence[Sequence[Example]] = ()) -> None:
        self.backend = backend
        self.max_tokens = max_tokens
        self.first_line = first_line   # False: whole replies, to max_tokens (what GPL generated before)
        self.examples = [list(s) for s in examples]   # example sets (few-shot); empty: zero-shot instructions

    def generate(self, passage: str, n: int, seed: int) -> list[str]:
        return self.generate_many([passage], n, [seed])[0]

    def generate_many(self, passages: Sequence[str], n: int, seeds: Sequence[int]) -> list[list[str]]:
        """``n`` replies per passage (greedy, so the seeds are unused)."""
        prompts = [query_prompt(p, i, self.examples) for p in passages for i in range(n)]
        if hasattr(self.backend, "complete_many"):
            replies = self.backend.complete_many(prompts, self.max_tokens, first_line=self.first_line)
        else:
            replies = [self.backend.complete(p, self.max_tokens) for p in prompts]
            replies = [first_line(r) for r in replies] if self.first_line else replies
        return [replies[k * n:(k + 1) * n] for k in range(len(passages))]


class Seq2SeqQueryGenerator:
    """A doc2query encoder-decoder through transformers, ``n`` sampled queries per passage."""

    def __init__(self, model: Any, tokenizer: Any, max_tokens: int = 48, max_input_tokens: int = 512) -> None:
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_tokens, self.max_input_tokens = max_tokens, max_input_tokens

    @classmethod
    def from_pretrained(cls, folder: str, device: str = "cpu", **options: Any) -> "Seq2SeqQueryGenerator":
        """Load a seq2seq model folder (or hub name, with internet) and its tokenizer."""
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        from retrieval.models import resolve_model

        path = resolve_model(folder).path
        model = AutoModelForSeq2SeqLM.from_pretrained(path).to(device)
        return cls(model, AutoTokenizer.from_pretrained(path), **options)

    def generate(self, passage: str, n: int, seed: int) -> list[str]:
        import torch

        batch = self.tokenizer([passage], return_tensors="pt", truncation=True, max_length=self.max_input_tokens)
        batch = {k: v.to(self.model.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        torch.manual_seed(seed)
        with torch.inference_mode():
            out = self.model.generate(**batch, do_sample=True, top_k=TOP_K, top_p=TOP_P, max_new_tokens=self.max_tokens,
                                      num_return_sequences=n)
        return self.tokenizer.batch_decode(out, skip_special_tokens=True)


def document_seed(seed: int, doc_id: str) -> int:
    """A per-document seed from the run's seed and the document id (independent of order and chunking)."""
    return (seed * 1_000_003 + zlib.crc32(doc_id.encode("utf-8"))) % 2**31


def load_generator(spec: str, max_tokens: int = 48, device: str = "cpu", threads: int | None = None,
                   convert: str | None = "f16", extra_buffers: bool = True, dtype: str | None = None,
                   batch_size: int = 8, examples: Sequence[Sequence[Example]] = ()) -> QueryGenerator:
    """The generator a spec names (see the module docstring); ``convert`` re-types a llama-cpp GGUF (None: as
    shipped) and ``extra_buffers=False`` runs it on plain CPU buffers; ``dtype`` and ``batch_size`` set a local
    ``llm:`` model's weights type and prompts per batch; ``examples`` are chat LLMs' few-shot example sets.
    ValueError for an unknown kind, or examples for a seq2seq generator (it reads the passage alone)."""
    from retrieval.rerank.llm.backends import load_backend

    kind, _, model = spec.partition(":")
    if kind == "seq2seq":
        if examples:
            raise ValueError(f"generator {spec!r}: a seq2seq generator takes no worked examples")
        return Seq2SeqQueryGenerator.from_pretrained(model, device=device, max_tokens=max_tokens)
    if kind == "llama-cpp":
        options: dict[str, Any] = {"n_threads": threads} if threads else {}
        return LLMQueryGenerator(load_backend(model, backend="llama-cpp", convert=convert,
                                              extra_buffers=extra_buffers, **options), max_tokens, examples=examples)
    if kind == "llm":
        is_http = model.startswith(("http://", "https://"))
        local = {"device": device, "batch_size": batch_size, **({"dtype": dtype} if dtype else {})}
        return LLMQueryGenerator(load_backend(model, **({} if is_http else local)), max_tokens, examples=examples)
    raise ValueError(f"generator {spec!r}: kind must be llama-cpp, llm or seq2seq")


def generator_identity(spec: str) -> dict[str, Any]:
    """What identifies a generator's outputs in a stage key: the spec, plus a fingerprint of local weights."""
    from pathlib import Path

    from retrieval.models import folder_fingerprint, model_spec

    kind, _, model = spec.partition(":")
    path = Path(model).expanduser()
    if model_spec(model) is not None or not path.exists():
        return {"spec": spec}
    if path.is_file():
        stat = path.stat()
        return {"spec": spec, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return {"spec": spec, "fingerprint": folder_fingerprint(path)}


def passages_of(texts: Sequence[str], max_words: int) -> list[str]:
    """Each text cut to its first ``max_words`` words (what the generator reads)."""
    return [" ".join(t.split()[:max_words]) for t in texts]
