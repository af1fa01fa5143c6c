"""LLM backends for rerankers: a local Hugging Face causal LM, or any OpenAI-compatible HTTP server.

A backend does two things, both deterministic (no sampling):

* ``choice_logprobs(prompts, choices)`` -> array ``[n_prompts, n_choices]``: the log-probability that the
  answer's first token is each choice ("Yes"/"No", "0".."5"), read from the next-token distribution;
* ``complete(prompt, max_tokens)`` -> the greedy text reply.

:func:`load_backend` picks one: ``"http://HOST:PORT/v1#MODEL"`` (llama.cpp server, vLLM, Ollama, ...)
or a local model (alias such as ``smollm2``, a folder, a ``.gguf`` file, or a hub name).
"""
from __future__ import annotations

import json
import logging
import math
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, runtime_checkable

import numpy as np
from tqdm.auto import tqdm

from retrieval.errors import LLMError, MissingDependency
from retrieval.models import resolve_model
from retrieval.rerank.llm.prompts import Messages, render_plain

logger = logging.getLogger(__name__)


@runtime_checkable
class LLMBackend(Protocol):
    """What LLM rerankers need from a model."""

    def choice_logprobs(self, prompts: Sequence[Messages], choices: Sequence[str]) -> np.ndarray: ...

    def complete(self, prompt: Messages, max_tokens: int) -> str: ...


def _logsumexp(values: Sequence[float]) -> float:
    top = max(values)
    if top == -math.inf:
        return -math.inf
    return top + math.log(sum(math.exp(v - top) for v in values))


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
        self.batch_size = batch_size
        self.max_length = max_length
        self.show_progress = show_progress
        tokenizer.padding_side = "left"
        tokenizer.truncation_side = "left"  # keep the question and the answer cue at the end
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token

    @classmethod
    def from_pretrained(cls, name: str = "smollm2", *, device: str = "cpu", dtype: str | None = None,
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
            out[:, j] = [_logsumexp(row[token_ids].tolist()) for row in full]
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


RETRY_STATUS = {408, 429, 500, 502, 503, 504}


class OpenAIBackend:
    """An OpenAI-compatible ``/chat/completions`` server over stdlib HTTP, with timeouts and retries.

    Choice log-probs come from ``logprobs``/``top_logprobs`` of a one-token reply; a choice missing from
    the top list gets ``floor_margin`` below the least likely listed token. Servers that return no
    log-probs fall back to the reply text (the named choice gets log-prob 0).
    """

    def __init__(self, base_url: str, model: str | None = None, *, api_key: str | None = None,
                 timeout: float = 60.0, retries: int = 3, backoff: float = 0.5, top_logprobs: int = 20,
                 concurrency: int = 4, floor_margin: float = 1.0, show_progress: bool = False) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._model = model
        self.api_key = api_key
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.top_logprobs = top_logprobs
        self.concurrency = max(1, concurrency)
        self.floor_margin = floor_margin
        self.show_progress = show_progress
        self._warned_no_logprobs = False

    @classmethod
    def from_spec(cls, spec: str, **options: Any) -> "OpenAIBackend":
        """``"http://127.0.0.1:8080/v1#model-name"``; without ``#model`` the server's first model is used."""
        url, _, model = spec.partition("#")
        return cls(url, model or None, **options)

    def _request(self, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        url = f"{self.base_url}{path}"
        data = json.dumps(payload).encode("utf-8") if payload is not None else None
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    body = response.read()
            except urllib.error.HTTPError as exc:
                detail = exc.read()[:300].decode("utf-8", "replace")
                if exc.code not in RETRY_STATUS:
                    raise LLMError(f"{url}: HTTP {exc.code}: {detail}") from None
                last = f"HTTP {exc.code}: {detail}"
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                last = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
            else:
                try:
                    return json.loads(body)
                except json.JSONDecodeError as exc:
                    raise LLMError(f"{url}: reply is not JSON ({exc.msg}): {body[:200]!r}") from None
            logger.warning("%s: attempt %d/%d failed: %s", url, attempt + 1, self.retries + 1, last)
        raise LLMError(f"{url}: failed after {self.retries + 1} attempts; last error: {last}")

    @property
    def model(self) -> str:
        """The model name sent with each request; asked from ``/models`` once when not given."""
        if self._model is None:
            listing = self._request("/models")
            try:
                self._model = str(listing["data"][0]["id"])
            except (KeyError, IndexError, TypeError):
                raise LLMError(f"{self.base_url}/models: no model listed; name one as URL#MODEL") from None
        return self._model

    def _chat(self, prompt: Messages, **params: Any) -> dict[str, Any]:
        reply = self._request("/chat/completions", {"model": self.model, "messages": prompt,
                                                    "temperature": 0, **params})
        try:
            return reply["choices"][0]
        except (KeyError, IndexError, TypeError):
            raise LLMError(f"{self.base_url}/chat/completions: reply has no choices: {str(reply)[:200]}") from None

    def complete(self, prompt: Messages, max_tokens: int) -> str:
        """The greedy (temperature 0) reply text."""
        content = (self._chat(prompt, max_tokens=max_tokens).get("message") or {}).get("content")
        if not isinstance(content, str):
            raise LLMError(f"{self.base_url}/chat/completions: reply has no message content")
        return content

    def _one_choice_logprobs(self, prompt: Messages, choices: Sequence[str]) -> list[float]:
        choice = self._chat(prompt, max_tokens=1, logprobs=True, top_logprobs=self.top_logprobs)
        content = (choice.get("logprobs") or {}).get("content") or []
        top = content[0].get("top_logprobs") if content else None
        if not top:
            return self._from_text((choice.get("message") or {}).get("content") or "", choices)
        listed: dict[str, list[float]] = {}
        for entry in top:
            listed.setdefault(str(entry["token"]).strip().lower(), []).append(float(entry["logprob"]))
        floor = min(float(e["logprob"]) for e in top) - self.floor_margin
        return [_logsumexp(listed[c.lower()]) if c.lower() in listed else floor for c in choices]

    def _from_text(self, text: str, choices: Sequence[str]) -> list[float]:
        if not self._warned_no_logprobs:
            logger.warning("%s returns no logprobs; scoring from the reply text (coarse)", self.base_url)
            self._warned_no_logprobs = True
        word = text.strip().split()[0].strip(".,:;!").lower() if text.strip() else ""
        return [0.0 if c.lower() == word else -self.floor_margin - 20.0 for c in choices]

    def choice_logprobs(self, prompts: Sequence[Messages], choices: Sequence[str]) -> np.ndarray:
        """One one-token request per prompt, ``concurrency`` at a time."""
        self.model  # resolve once before the threads start
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            rows = list(tqdm(pool.map(lambda p: self._one_choice_logprobs(p, choices), prompts),
                             total=len(prompts), desc="LLM scoring", disable=not self.show_progress))
        return np.array(rows, dtype=np.float64).reshape(len(prompts), len(choices))


def load_backend(model: str = "smollm2", **options: Any) -> LLMBackend:
    """An HTTP backend for ``http(s)://...[#model]``, else a local :class:`HFCausalLM`; ``options`` go to it."""
    if model.startswith(("http://", "https://")):
        return OpenAIBackend.from_spec(model, **options)
    return HFCausalLM.from_pretrained(model, **options)
