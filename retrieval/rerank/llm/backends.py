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
from retrieval.rerank.llm.prompts import Messages, render_plain
from retrieval.rerank.llm.replies import choice_scores, logsumexp, model_id, parse_json, reply_text
from retrieval.rerank.llm.transport import Limits, Retryable, backoff_delay, http_call

logger = logging.getLogger(__name__)


@runtime_checkable
class LLMBackend(Protocol):
    """What LLM rerankers need from a model."""

    def choice_logprobs(self, prompts: Sequence[Messages], choices: Sequence[str]) -> np.ndarray: ...

    def complete(self, prompt: Messages, max_tokens: int) -> str: ...


def choice_token_ids(tokenizer: Any, choice: str) -> list[int]:
    """Token ids a model may start its answer with for ``choice``: each single-token spelling among
    ``Yes``, `` Yes``, ``yes``, `` yes`` (else the first token of ``choice``). Unknown-token ids never count."""
    unk = getattr(tokenizer, "unk_token_id", None)
    ids: list[int] = []
    for variant in dict.fromkeys((choice, " " + choice, choice.lower(), " " + choice.lower())):
        tokens = tokenizer.encode(variant, add_special_tokens=False)
        if len(tokens) == 1 and tokens[0] != unk and tokens[0] not in ids:
            ids.append(tokens[0])
    if not ids:
        tokens = tokenizer.encode(choice, add_special_tokens=False)
        if not tokens or tokens[0] == unk:
            raise ValueError(f"the tokenizer has no token for choice {choice!r}")
        ids.append(tokens[0])
    return ids


class HFCausalLM:
    """A local decoder-only model through transformers; prompts go through the chat template when present."""

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 8, max_length: int = 2048,
                 show_progress: bool = False) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = _count("batch_size", batch_size, minimum=1)
        self.max_length = _count("max_length", max_length, minimum=1)
        self.show_progress = show_progress
        tokenizer.padding_side = "left"
        tokenizer.truncation_side = "left"  # keep the question and the answer cue at the end
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token

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
        return render_plain(prompt)

    def _encode(self, texts: list[str]) -> dict[str, Any]:
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                               max_length=self.max_length, add_special_tokens=False)
        mask = batch["attention_mask"]
        # Left padding: positions must count real tokens only, or padded rows see shifted positions.
        batch["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
        return {k: v.to(self.model.device) for k, v in batch.items()}

    def next_token_logprobs(self, prompts: Sequence[Messages]) -> np.ndarray:
        """Log-softmax of the next-token logits after each prompt, ``[n_prompts, vocab]``."""
        import torch

        texts = [self.render(p) for p in prompts]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths pad less
        out: list[np.ndarray | None] = [None] * len(texts)
        starts = range(0, len(order), self.batch_size)
        for start in tqdm(starts, desc="LLM scoring", unit="batch", disable=not self.show_progress):
            idx = order[start:start + self.batch_size]
            with torch.inference_mode():
                batch = self._encode([texts[i] for i in idx])
                logits = self.model(**batch, logits_to_keep=1).logits[:, -1, :]  # skip the LM head elsewhere
            logprobs = torch.log_softmax(logits.float(), dim=-1).cpu().numpy()
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

    def complete(self, prompt: Messages, max_tokens: int) -> str:
        """Greedy decoding of at most ``max_tokens`` new tokens."""
        import torch

        batch = self._encode([self.render(prompt)])
        batch.pop("position_ids")
        with torch.inference_mode():
            output = self.model.generate(**batch, max_new_tokens=max_tokens, do_sample=False,
                                         pad_token_id=self.tokenizer.pad_token_id)
        return self.tokenizer.decode(output[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)


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
                 max_redirects: int = 3, show_progress: bool = False) -> None:
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
        self.show_progress = show_progress
        self._warned_no_logprobs = False

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


def _count(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int >= ``minimum``; else ValueError naming the option."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _option_names(factory: Any, skip: set[str]) -> set[str]:
    return set(inspect.signature(factory).parameters) - skip - {"self", "options"}


def load_backend(model: str = DEFAULT_LLM, **options: Any) -> LLMBackend:
    """An HTTP backend for ``http(s)://...[#model]``, else a local :class:`HFCausalLM`; ``options`` go to it.

    An option the chosen backend does not take is a ValueError naming it and listing those it takes.
    """
    if not isinstance(model, str) or not model.strip():
        raise ValueError(f"model must be a non-empty string, got {model!r}")
    is_http = model.startswith(("http://", "https://"))
    if is_http:
        known = _option_names(OpenAIBackend.__init__, {"base_url", "model"})
    else:
        known = _option_names(HFCausalLM.from_pretrained, {"name"}) | _option_names(HFCausalLM.__init__,
                                                                                    {"model", "tokenizer"})
    unknown = sorted(set(options) - known)
    if unknown:
        kind = "HTTP" if is_http else "local"
        raise ValueError(f"unknown option(s) {unknown} for the {kind} LLM backend; it takes {sorted(known)}")
    if is_http:
        return OpenAIBackend.from_spec(model, **options)
    return HFCausalLM.from_pretrained(model, **options)
