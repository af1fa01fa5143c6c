"""LLM backends for rerankers: a local Hugging Face causal LM, or any OpenAI-compatible HTTP server.

A backend does two things, both deterministic (no sampling):

* ``choice_logprobs(prompts, choices)`` -> array ``[n_prompts, n_choices]``: the log-probability that the
  answer's first token is each choice ("Yes"/"No", "0".."5"), read from the next-token distribution;
* ``complete(prompt, max_tokens)`` -> the greedy text reply.

:func:`load_backend` picks one: ``"http://HOST:PORT/v1#MODEL"`` (llama.cpp server, vLLM, Ollama, ...)
or a local model (alias such as ``smollm2``, a folder, a ``.gguf`` file, or a hub name).
"""
from __future__ import annotations

import inspect
import json
import logging
import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

import numpy as np
from tqdm.auto import tqdm

from retrieval.errors import LLMError, MissingDependency
from retrieval.models import DEFAULT_LLM, resolve_model
from retrieval.rerank.llm.prefix_cache import PrefixKV, shared_length, sliding_window
from retrieval.rerank.llm.prompts import Messages, first_line_end, render_chatml, render_plain
from retrieval.rerank.llm.prompts import first_line as _first_line
from retrieval.rerank.llm.replies import (choice_scores, logsumexp, model_id, parse_json, prompt_logprobs,
                                          reply_text)
from retrieval.rerank.base import checked_count as _count
from retrieval.rerank.base import checked_flag
from retrieval.rerank.llm.tokens import choice_token_ids
from retrieval.rerank.llm.transport import Limits, Retryable, backoff_delay, http_call

logger = logging.getLogger(__name__)


@runtime_checkable
class LLMBackend(Protocol):
    """What LLM rerankers need from a model."""

    def choice_logprobs(self, prompts: Sequence[Messages], choices: Sequence[str]) -> np.ndarray: ...

    def complete(self, prompt: Messages, max_tokens: int) -> str: ...


def default_bos(tokenizer: Any) -> str:
    """The BOS token's text if ``tokenizer`` puts it first by default (Gemma, Llama), else "".

    Without it a template-less prompt starts where the model never saw text start: on five SciFact train
    queries, Gemma 3 270M's mean query-token log-prob was -5.69 without it and -4.52 with it."""
    bos, bos_id = getattr(tokenizer, "bos_token", None), getattr(tokenizer, "bos_token_id", None)
    if bos is None or bos_id is None:
        return ""
    ids = tokenizer("a")["input_ids"]
    return bos if ids and ids[0] == bos_id else ""


class HFCausalLM:
    """A local decoder-only model through transformers; prompts go through the chat template when present.

    ``prefix_cache``: the first tokens a batch's prompts share (the system prompt, demonstrations, one query's
    yes/no prompts), when at least ``min_prefix`` long, run once and their KV cache is kept for the next batch
    that starts the same way, as the llama.cpp backend does; scores are unchanged (tested to 1e-5). Models with
    sliding-window attention run every prompt whole (their caches cannot be cut back to a shorter prefix).
    """

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 8, max_length: int = 2048,
                 show_progress: bool = False, prefix_cache: bool = True, min_prefix: int = 32) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = _count("batch_size", batch_size, minimum=1)
        self.max_length = _count("max_length", max_length, minimum=1)
        self.min_prefix = _count("min_prefix", min_prefix, minimum=1)
        if checked_flag("prefix_cache", prefix_cache) and sliding_window(self.model.config):
            logger.info("no prefix cache for %s: its sliding-window attention cache cannot be cut back",
                        type(self.model).__name__)
            prefix_cache = False
        self.prefix = PrefixKV(self.model) if prefix_cache else None
        self.show_progress = show_progress
        tokenizer.padding_side = "left"
        tokenizer.truncation_side = "left"  # keep the question and the answer cue at the end
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.plain_bos = default_bos(tokenizer)

    @property
    def tokens_reused(self) -> int:
        """Prompt tokens the prefix cache spared (as :class:`LlamaCppLM` counts them)."""
        return self.prefix.tokens_reused if self.prefix is not None else 0

    def forget_cache(self) -> None:
        """Drop the kept prefix: the next prompt starts cold (benchmarks time each pass alike)."""
        if self.prefix is not None:
            self.prefix.forget()

    @classmethod
    def from_pretrained(cls, name: str = DEFAULT_LLM, *, device: str = "cpu", dtype: str | None = None,
                        **options: Any) -> "HFCausalLM":
        """Load an alias (``smollm2``), a folder, a ``.gguf`` file or a hub name; GGUF weights are dequantised."""
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:
            raise MissingDependency("local LLM rerankers need: pip install 'retrievekit[llm]'") from exc
        ref = resolve_model(name)
        kwargs: dict[str, Any] = {"gguf_file": ref.gguf_file} if ref.gguf_file else {}
        tokenizer = AutoTokenizer.from_pretrained(ref.path, **kwargs)
        torch_dtype = getattr(torch, dtype) if dtype else None
        model = AutoModelForCausalLM.from_pretrained(ref.path, dtype=torch_dtype, **kwargs).to(device)
        logger.info("loaded causal LM %s (%s)", ref.alias or ref.path, ref.gguf_file or "safetensors")
        return cls(model, tokenizer, **options)

    def render(self, prompt: Messages) -> str:
        """The prompt as the model sees it: chat template with the assistant cue, or plain text."""
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        return render_plain(prompt, self.plain_bos)

    def _encode(self, texts: list[str]) -> dict[str, Any]:
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                               max_length=self.max_length, add_special_tokens=False)
        mask = batch["attention_mask"]
        # Left padding: positions must count real tokens only, or padded rows see shifted positions.
        batch["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
        return {k: v.to(self.model.device) for k, v in batch.items()}

    def _last_logprobs(self, rows: list[list[int]], keep: int, prefix_limit: int) -> np.ndarray:
        """Log-softmax over the vocabulary at the last ``keep`` positions of each row of token ids, ``[rows, keep,
        vocab]`` (the LM head runs nowhere else). Rows end together: each row's padding goes before its own tokens,
        after the shared prefix (at most ``prefix_limit`` tokens) that comes from the prefix cache."""
        import torch

        shared = min(shared_length(rows), prefix_limit) if self.prefix is not None else 0
        cache = None
        if shared >= self.min_prefix:
            cache = self.prefix.covering(rows[0][:shared], len(rows))
            cache.batch_repeat_interleave(len(rows))
        else:
            shared = 0
        width = max(map(len, rows)) - shared
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), shared + width), dtype=torch.long)
        mask[:, :shared] = 1
        for row, token_ids in enumerate(rows):
            tail = token_ids[shared:]
            ids[row, width - len(tail):] = torch.tensor(tail, dtype=torch.long)
            mask[row, shared + width - len(tail):] = 1
        # positions count real tokens only, or padded rows would see shifted positions
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, shared:]
        device = self.model.device
        extra = {self.prefix.arg: cache} if cache is not None else {"use_cache": False}
        with torch.inference_mode():
            logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device),
                                position_ids=positions.to(device), logits_to_keep=keep, **extra).logits
        return torch.log_softmax(logits.float(), dim=-1).cpu().numpy()

    def _ids(self, text: str) -> list[int]:
        """``text``'s token ids, cut from the left to ``max_length`` (the question and the answer cue are at the end)."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"][-self.max_length:]

    def next_token_logprobs(self, prompts: Sequence[Messages]) -> np.ndarray:
        """Log-softmax of the next-token logits after each prompt, ``[n_prompts, vocab]``."""
        rows = [self._ids(self.render(p)) for p in prompts]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # similar lengths pad less
        out: list[np.ndarray | None] = [None] * len(rows)
        starts = range(0, len(order), self.batch_size)
        for start in tqdm(starts, desc="LLM scoring", unit="batch", disable=not self.show_progress):
            idx = order[start:start + self.batch_size]
            batch = [rows[i] for i in idx]
            logprobs = self._last_logprobs(batch, 1, min(map(len, batch)) - 1)[:, -1, :]
            for row, i in enumerate(idx):
                out[i] = logprobs[row]
        return np.stack(out) if out else np.zeros((0, 0), dtype=np.float32)

    def choice_logprobs(self, prompts: Sequence[Messages], choices: Sequence[str]) -> np.ndarray:
        """Log-probability of each choice as the first answer token (summed over its spellings)."""
        ids = [choice_token_ids(self.tokenizer, c) for c in choices]
        full = self.next_token_logprobs(prompts)
        out = np.empty((len(prompts), len(choices)), dtype=np.float64)
        for j, token_ids in enumerate(ids):
            out[:, j] = [logsumexp(row[token_ids].tolist()) for row in full]
        return out

    def _pair_ids(self, prompt: Messages, continuation: str) -> tuple[list[int], int]:
        """Token ids of the rendered prompt then the continuation (tokenized apart, so the boundary is exact),
        cut from the left to ``max_length``, and the continuation's length."""
        head = self.tokenizer(self.render(prompt), add_special_tokens=False)["input_ids"]
        tail = self.tokenizer(continuation, add_special_tokens=False)["input_ids"]
        if len(tail) + 1 > self.max_length:
            raise LLMError(f"a continuation of {len(tail)} tokens does not fit max_length={self.max_length}")
        ids = (head + tail)[-self.max_length:]
        return ids, len(tail)

    def continuation_logprobs(self, prompts: Sequence[Messages], continuations: Sequence[str]) -> list[np.ndarray]:
        """Per-token log P(continuation | rendered prompt), one array per prompt, batched (teacher forcing)."""
        if len(prompts) != len(continuations):
            raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
        pairs = [self._pair_ids(p, c) for p, c in zip(prompts, continuations)]
        order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]))
        out: list[np.ndarray] = [np.zeros(0)] * len(pairs)
        for start in tqdm(range(0, len(order), self.batch_size), desc="LLM scoring", unit="batch",
                          disable=not self.show_progress):
            idx = [i for i in order[start:start + self.batch_size] if pairs[i][1]]
            if not idx:
                continue
            keep = max(pairs[i][1] for i in idx) + 1  # logits of the last `keep` positions cover every continuation
            # every continuation ends at the last column; the prefix cache stops before each one's first logit
            logprobs = self._last_logprobs([pairs[i][0] for i in idx], keep,
                                           min(len(pairs[i][0]) - pairs[i][1] - 1 for i in idx))
            for row, i in enumerate(idx):
                token_ids, n = pairs[i]
                rows = np.arange(keep - n - 1, keep - 1)  # the logits before each continuation token
                out[i] = logprobs[row, rows, token_ids[len(token_ids) - n:]].astype(np.float64)
        return out

    def complete(self, prompt: Messages, max_tokens: int) -> str:
        """Greedy decoding of at most ``max_tokens`` new tokens."""
        return self.complete_many([prompt], max_tokens)[0]

    def complete_many(self, prompts: Sequence[Messages], max_tokens: int, first_line: bool = False) -> list[str]:
        """Greedy replies to many prompts, ``batch_size`` at a time (left-padded, shortest prompts together).
        ``first_line``: each reply ends with its first line that holds a word, and a batch stops generating once
        every row has one (GPL's queries), instead of running on to ``max_tokens``."""
        import torch

        texts = [self.render(p) for p in prompts]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out: list[str] = [""] * len(texts)
        for start in tqdm(range(0, len(order), self.batch_size), desc="LLM generation", unit="batch",
                          disable=not self.show_progress):
            idx = order[start:start + self.batch_size]
            batch = self._encode([texts[i] for i in idx])
            batch.pop("position_ids")   # generate() derives them from the attention mask
            width = batch["input_ids"].shape[1]
            stop = _first_line_done(self.tokenizer, width) if first_line else None
            with torch.inference_mode():
                output = self.model.generate(**batch, max_new_tokens=max_tokens, do_sample=False,
                                             pad_token_id=self.tokenizer.pad_token_id, stopping_criteria=stop)
            for row, i in enumerate(idx):
                reply = self.tokenizer.decode(output[row, width:], skip_special_tokens=True)
                out[i] = _first_line(reply) if first_line else reply
        return out


def _first_line_done(tokenizer: Any, prompt_width: int) -> Any:
    """transformers stopping criteria: a row is done once its reply holds a whole line with a word."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class FirstLineDone(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            texts = tokenizer.batch_decode(input_ids[:, prompt_width:], skip_special_tokens=True)
            return torch.tensor([first_line_end(t) is not None for t in texts], device=input_ids.device)

    return StoppingCriteriaList([FirstLineDone()])


class OpenAIBackend:
    """An OpenAI-compatible ``/chat/completions`` server over stdlib HTTP, bounded and retried.

    Choice log-probs come from ``logprobs``/``top_logprobs`` of a one-token reply; a choice missing from
    the top list gets ``floor_margin`` below the least likely listed token. Servers that return no
    log-probs fall back to the reply text (the named choice gets log-prob 0).

    Each attempt has a total deadline of ``timeout`` seconds (connect, send, headers, the whole body and
    any redirects, see :mod:`~retrieval.rerank.llm.transport`); a retry gets a fresh ``timeout``, so one
    call takes at most ``(retries + 1) * timeout`` plus the backoff sleeps. Replies over ``max_reply_bytes``
    are refused without being read. Redirects are followed only within the same origin (scheme, host, port),
    at most ``max_redirects`` hops, and a POST only through 307/308: the API key never leaves the origin.
    Every wrong-shaped reply is an :class:`LLMError` naming the URL and the field.
    """

    def __init__(self, base_url: str, model: str | None = None, *, api_key: str | None = None,
                 timeout: float = 60.0, retries: int = 3, backoff: float = 0.5, top_logprobs: int = 20,
                 concurrency: int = 4, floor_margin: float = 1.0, max_reply_bytes: int = 16 * 2**20,
                 max_redirects: int = 3, completion_template: str = "plain", check_echo: bool = True,
                 show_progress: bool = False) -> None:
        self.base_url = _checked_base_url(base_url)
        if model is not None and (not isinstance(model, str) or not model.strip()):
            raise ValueError(f"model must be a non-empty string or None, got {model!r}")
        if api_key is not None and (not isinstance(api_key, str) or not api_key.isprintable()):
            raise ValueError("api_key must be a string of printable characters (no newlines)")
        self._model = model
        self.api_key = api_key
        self.timeout = _positive("timeout", timeout)
        self.retries = _count("retries", retries, minimum=0)
        self.backoff = _positive("backoff", backoff, allow_zero=True)
        self.top_logprobs = _count("top_logprobs", top_logprobs, minimum=1)
        self.concurrency = _count("concurrency", concurrency, minimum=1)
        self.floor_margin = _positive("floor_margin", floor_margin, allow_zero=True)
        self.max_reply_bytes = _count("max_reply_bytes", max_reply_bytes, minimum=1)
        self.max_redirects = _count("max_redirects", max_redirects, minimum=0)
        if completion_template not in COMPLETION_TEMPLATES:
            raise ValueError(f"completion_template must be one of {sorted(COMPLETION_TEMPLATES)}, "
                             f"got {completion_template!r}")
        self.completion_template = completion_template
        self.check_echo = check_echo
        self.show_progress = show_progress
        self._warned_no_logprobs = False
        self._echo_checked = False

    @classmethod
    def from_spec(cls, spec: str, **options: Any) -> "OpenAIBackend":
        """``"http://127.0.0.1:8080/v1#model-name"``; without ``#model`` the server's first model is used."""
        url, _, model = spec.partition("#")
        return cls(url, model or None, **options)

    def _request(self, path: str, payload: dict[str, Any] | None = None) -> Any:
        """The parsed JSON reply to ``path``, retrying what a retry can fix; LLMError otherwise."""
        url = f"{self.base_url}{path}"
        data = json.dumps(payload, allow_nan=False).encode("utf-8") if payload is not None else None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        limits = Limits(self.timeout, self.max_reply_bytes, self.max_redirects)
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(backoff_delay(self.backoff, attempt))
            try:
                body = http_call(url, "POST" if data is not None else "GET", data, headers, limits)
            except Retryable as exc:
                last = str(exc)
                logger.warning("%s: attempt %d/%d failed: %s", url, attempt + 1, self.retries + 1, last)
                continue
            return parse_json(body, url)
        raise LLMError(f"{url}: failed after {self.retries + 1} attempts; last error: {last}")

    @property
    def model(self) -> str:
        """The model name sent with each request; asked from ``/models`` once when not given."""
        if self._model is None:
            self._model = model_id(self._request("/models"), f"{self.base_url}/models")
        return self._model

    def _chat(self, prompt: Messages, **params: Any) -> Any:
        return self._request("/chat/completions", {"model": self.model, "messages": prompt,
                                                   "temperature": 0, **params})

    def complete(self, prompt: Messages, max_tokens: int) -> str:
        """The greedy (temperature 0) reply text."""
        return reply_text(self._chat(prompt, max_tokens=max_tokens), f"{self.base_url}/chat/completions")

    def complete_many(self, prompts: Sequence[Messages], max_tokens: int, first_line: bool = False) -> list[str]:
        """Greedy replies, ``concurrency`` requests at a time; ``first_line`` keeps each reply's first line that
        holds a word (the server still generates up to ``max_tokens``)."""
        if not prompts:
            return []
        self.model
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            replies = list(tqdm(pool.map(lambda p: self.complete(p, max_tokens), prompts), total=len(prompts),
                                desc="LLM generation", disable=not self.show_progress))
        return [_first_line(r) for r in replies] if first_line else replies

    def _one_choice_logprobs(self, prompt: Messages, choices: Sequence[str]) -> list[float]:
        reply = self._chat(prompt, max_tokens=1, logprobs=True, top_logprobs=self.top_logprobs)
        scores, from_text = choice_scores(reply, f"{self.base_url}/chat/completions", choices, self.floor_margin)
        if from_text and not self._warned_no_logprobs:
            logger.warning("%s returns no logprobs; scoring from the reply text (coarse)", self.base_url)
            self._warned_no_logprobs = True
        return scores

    def choice_logprobs(self, prompts: Sequence[Messages], choices: Sequence[str]) -> np.ndarray:
        """One one-token request per prompt, ``concurrency`` at a time."""
        if not prompts:
            return np.zeros((0, len(choices)), dtype=np.float64)
        self.model  # resolve once before the threads start
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            rows = list(tqdm(pool.map(lambda p: self._one_choice_logprobs(p, choices), prompts),
                             total=len(prompts), desc="LLM scoring", disable=not self.show_progress))
        return np.array(rows, dtype=np.float64).reshape(len(prompts), len(choices))


    def completion_prompt(self, prompt: Messages) -> str:
        """The text sent to ``/completions``: ChatML, or plain text ending in a new line after "Assistant:"."""
        if self.completion_template == "chatml":
            return render_chatml(prompt)
        return render_plain(prompt) + "\n"

    def _one_continuation(self, prompt: Messages, continuation: str) -> np.ndarray:
        text = self.completion_prompt(prompt) + continuation
        reply = self._request("/completions", {"model": self.model, "prompt": text, "max_tokens": 1,
                                               "temperature": 0, "echo": True, "logprobs": 1})
        return np.array(prompt_logprobs(reply, f"{self.base_url}/completions", continuation))

    def check_echo_alignment(self) -> float:
        """Mean log-prob the server gives the predictable end of "1, 2, ..., 40"; LLMError when it is so low
        that the echoed log-probs must be shifted by one token (llama-cpp-python <= 0.3.36 does this for
        prompts that do not start with a BOS token; ``completion_template="chatml"`` starts with one for
        ChatML models such as SmolLM2 and Qwen)."""
        tail = self._one_continuation(ECHO_PROBE, ", ".join(str(i) for i in range(1, 41)))[-30:]
        mean = float(np.mean(tail))
        if mean < ECHO_PROBE_FLOOR:
            raise LLMError(f"{self.base_url}/completions: echoed prompt log-probs look shifted by one token (mean "
                           f"{mean:.2f} on a counting sequence, expected > {ECHO_PROBE_FLOOR}); try "
                           "completion_template='chatml', or check_echo=False to use them anyway")
        return mean

    def continuation_logprobs(self, prompts: Sequence[Messages], continuations: Sequence[str]) -> list[np.ndarray]:
        """Per-token log P(continuation | prompt) from ``/completions`` with ``echo=True``, ``concurrency`` at a time.

        Chat endpoints do not echo the prompt, so query likelihood needs a server with ``/completions``."""
        if len(prompts) != len(continuations):
            raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
        if not prompts:
            return []
        self.model
        if self.check_echo and not self._echo_checked:
            self.check_echo_alignment()
            self._echo_checked = True
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(tqdm(pool.map(self._one_continuation, prompts, continuations), total=len(prompts),
                             desc="LLM scoring", disable=not self.show_progress))


COMPLETION_TEMPLATES = frozenset({"plain", "chatml"})
ECHO_PROBE: Messages = [{"role": "user", "content": "Count from 1 to 40."}]
ECHO_PROBE_FLOOR = -3.0


def _checked_base_url(base_url: Any) -> str:
    """``base_url`` without a trailing slash, once it is an http(s) URL with a host; else ValueError."""
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
    if not base_url.isascii() or any(c.isspace() or not c.isprintable() for c in base_url):
        raise ValueError(f"base_url must be printable ASCII without spaces, got {base_url!r}")
    parts = urlsplit(base_url)
    try:
        parts.port
    except ValueError:
        raise ValueError(f"base_url has a bad port: {base_url!r}") from None
    if not parts.hostname or "@" in parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"base_url must be http(s)://HOST[:PORT][/PATH] (no credentials or query), got {base_url!r}")
    return base_url.rstrip("/")


def _positive(name: str, value: Any, allow_zero: bool = False) -> float:
    """``value`` as a finite float > 0 (>= 0 with ``allow_zero``); else ValueError naming the option."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def _option_names(factory: Any, skip: set[str]) -> set[str]:
    return set(inspect.signature(factory).parameters) - skip - {"self", "options"}


LOCAL_BACKENDS = ("transformers", "llama-cpp")


def _local_options(backend: str) -> set[str]:
    """The options a local backend takes (its loader's and its constructor's)."""
    if backend == "llama-cpp":
        from retrieval.rerank.llm.llamacpp_backend import LlamaCppLM

        return _option_names(LlamaCppLM.from_pretrained, {"name"}) | _option_names(LlamaCppLM.__init__, {"llm"})
    return _option_names(HFCausalLM.from_pretrained, {"name"}) | _option_names(HFCausalLM.__init__,
                                                                              {"model", "tokenizer"})


def backend_options(model: str, backend: str = "transformers") -> tuple[str, set[str]]:
    """Which backend ``model`` and ``backend`` choose (``"HTTP"`` or ``"local (NAME)"``) and the options it takes."""
    if not isinstance(model, str) or not model.strip():
        raise ValueError(f"model must be a non-empty string, got {model!r}")
    if backend not in LOCAL_BACKENDS:
        raise ValueError(f"backend must be one of {LOCAL_BACKENDS}, got {backend!r}")
    if model.startswith(("http://", "https://")):
        if backend != "transformers":
            raise ValueError(f"backend={backend!r} runs a local model; {model!r} is a server URL")
        return "HTTP", _option_names(OpenAIBackend.__init__, {"base_url", "model"})
    return f"local ({backend})", _local_options(backend)


def load_backend(model: str = DEFAULT_LLM, backend: str = "transformers", **options: Any) -> LLMBackend:
    """An HTTP backend for ``http(s)://...[#model]``, else a local model run by ``backend``: ``"transformers"``
    (:class:`HFCausalLM`; GGUF weights dequantised) or ``"llama-cpp"`` (the GGUF run natively, see
    :mod:`~retrieval.rerank.llm.llamacpp_backend`); ``options`` go to it.

    An option the chosen backend does not take is a ValueError naming it and listing those it takes.
    """
    kind, known = backend_options(model, backend)
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for the {kind} LLM backend; it takes {sorted(known)}")
    if kind == "HTTP":
        return OpenAIBackend.from_spec(model, **options)
    if backend == "llama-cpp":
        from retrieval.rerank.llm.llamacpp_backend import LlamaCppLM

        return LlamaCppLM.from_pretrained(model, **options)
    return HFCausalLM.from_pretrained(model, **options)
