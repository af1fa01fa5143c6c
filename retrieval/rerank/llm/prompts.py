"""Prompt builders and response parsers for LLM rerankers, as pure functions (no model needed to test them).

Prompts are chat messages (``[{"role": ..., "content": ...}]``) so a backend can apply its model's
chat template; :func:`render_plain` is the fallback for models without one. The listwise prompt is
RankGPT's (Sun et al., "Is ChatGPT Good at Search?", 2023); :func:`parse_permutation` turns any reply
into a valid permutation, repairing what the model got wrong.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

from retrieval.rerank.base import checked_count

Messages = list[dict[str, str]]

YES_NO_CHOICES = ("Yes", "No")
RATING_CHOICES = ("0", "1", "2", "3", "4", "5")

JUDGE_SYSTEM = "You are a search relevance judge. You answer with one word, without explanation."
QL_SYSTEM = "You write the search question a passage answers."
QL_INSTRUCTION = "Please write a question based on this passage."   # UPR's (Sachan et al. 2022)
RANKGPT_SYSTEM = ("You are RankGPT, an intelligent assistant that can rank passages based on their "
                  "relevancy to the query.")


def truncate_words(text: str, max_words: int | None) -> str:
    """The first ``max_words`` whitespace-separated words of ``text`` (all of them when None)."""
    if max_words is None:
        return text.strip()
    words = text.split()
    return " ".join(words[:max_words])


def yes_no_messages(query: str, passage: str) -> Messages:
    """Ask whether the passage answers the query; the answer is read from the next token's "Yes"/"No" logits."""
    user = (f"Query: {query}\n\nPassage: {passage}\n\n"
            "Does the passage answer the query? Answer Yes or No.")
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def rating_messages(query: str, passage: str) -> Messages:
    """Ask for a 0-5 relevance grade; the score is the expected grade under the digits' probabilities."""
    user = (f"Query: {query}\n\nPassage: {passage}\n\n"
            "Rate the relevance of the passage to the query from 0 to 5, where 0 means irrelevant "
            "and 5 means it fully answers the query. Answer with a single digit.")
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def listwise_messages(query: str, passages: Sequence[str]) -> Messages:
    """RankGPT's instruction: rank the numbered passages, answer as ``[2] > [1] > [3]``."""
    n = len(passages)
    numbered = "\n".join(f"[{i}] {p}" for i, p in enumerate(passages, start=1))
    user = (f"I will provide you with {n} passages, each indicated by a numerical identifier []. "
            f"Rank the passages based on their relevance to the search query: {query}\n\n{numbered}\n\n"
            f"Search Query: {query}\n"
            f"Rank the {n} passages above based on their relevance to the search query. List them in "
            "descending order of relevance using their identifiers, the most relevant first. The output "
            "format should be [] > [], e.g., [2] > [1]. Only respond with the ranking, do not explain.")
    return [{"role": "system", "content": RANKGPT_SYSTEM}, {"role": "user", "content": user}]


def query_likelihood_messages(passage: str, instruction: str = QL_INSTRUCTION,
                              examples: Sequence[tuple[str, str]] = ()) -> Messages:
    """The passage, then the instruction (UPR's by default); the score is log P(query | passage, instruction), the
    query read as the reply. Another instruction fits queries that are not questions (e.g. SciFact's claims).

    ``examples``: (passage, query) demonstrations, each an earlier user turn and its reply (PaRaDe, Drozdov et
    al. 2023). They come first, so every passage's prompt shares them as a prefix a KV cache can keep."""
    if not isinstance(instruction, str) or not instruction.strip():
        raise ValueError(f"the query-likelihood instruction must be a non-empty string, got {instruction!r}")
    messages = [{"role": "system", "content": QL_SYSTEM}]
    for shown, query in examples:
        messages += [{"role": "user", "content": f"Passage: {shown}\n\n{instruction.strip()}"},
                     {"role": "assistant", "content": query.strip()}]
    return messages + [{"role": "user", "content": f"Passage: {passage}\n\n{instruction.strip()}"}]


def render_chatml(messages: Messages) -> str:
    """ChatML (``<|im_start|>role ... <|im_end|>``, as Qwen and SmolLM2 use), ending with the assistant cue."""
    parts = [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
    return "".join(parts) + "<|im_start|>assistant\n"


def render_plain(messages: Messages, bos: str = "") -> str:
    """A plain-text rendering for models without a chat template, ending where the answer starts.

    ``bos``: the model's BOS token text, for tokenizers that add one by default (Gemma, Llama). Prompts are
    tokenized without special tokens, as chat templates write their own BOS, so a plain prompt must carry it."""
    parts = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return bos + "\n\n".join(parts) + "\n\nAssistant:"


_WORD_CHAR = re.compile(r"\w")


def first_line_end(text: str) -> int | None:
    """The index of the newline that ends the first line holding a word character, or None while no such line is
    complete. A one-line answer (a GPL query) can stop generating there: nothing after it is read."""
    start = 0
    for line in text.split("\n")[:-1]:          # complete lines only
        if _WORD_CHAR.search(line):
            return start + len(line)
        start += len(line) + 1
    return None


def first_line(text: str) -> str:
    """``text`` up to the end of its first line that holds a word character (all of it if no such line ended)."""
    end = first_line_end(text)
    return text if end is None else text[:end]


_BRACKETED = re.compile(r"\[\s*(\d+)\s*\]")
_BARE = re.compile(r"\d+")


def named_indices(text: str, n: int) -> list[int]:
    """The 0-based ids a reply names, in its order: bracketed ids (bare numbers if none), in ``1..n``, first mention."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    order: list[int] = []
    seen: set[int] = set()
    for token in _BRACKETED.findall(text) or _BARE.findall(text):
        index = int(token) - 1
        if 0 <= index < n and index not in seen:
            seen.add(index)
            order.append(index)
    return order


def parse_permutation(text: str, n: int) -> list[int]:
    """Turn a reply like ``"[3] > [1] > [2]"`` into 0-based indices forming a permutation of ``range(n)``.

    Bracketed ids are read in order (bare numbers if there are none); ids out of ``1..n`` and repeats are
    dropped; ids the reply never names keep their input order after the named ones. Never raises.
    """
    return complete_permutation(named_indices(text, n), n)


def complete_permutation(named: list[int], n: int) -> list[int]:
    """``named`` (distinct ids in ``0..n-1``) first, then every other id of ``range(n)`` in its input order."""
    seen = set(named)
    return named + [i for i in range(n) if i not in seen]


def sliding_windows(n: int, window: int, step: int) -> list[tuple[int, int]]:
    """RankGPT's windows ``[start, end)`` from the bottom of the list to the top, so good passages bubble up."""
    checked_count("window", window)
    checked_count("step", step)
    if step > window:
        raise ValueError(f"step ({step}) must not exceed window ({window}), or some passages are never ranked")
    if n <= 0:
        return []
    windows = []
    end = n
    while True:
        start = max(0, end - window)
        windows.append((start, end))
        if start == 0:
            return windows
        end -= step
