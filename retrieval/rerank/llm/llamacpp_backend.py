"""A local GGUF model run natively by llama.cpp (``llama-cpp-python``): quantised weights, no dequantisation.

``load_backend("smollm2", backend="llama-cpp")`` builds one. It offers what the transformers backend offers
(choice log-probs, greedy completion, continuation log-probs for query likelihood) with three differences:

* the weights stay quantised (Q4/Q8 kernels), so a 135M model answers several times faster on a CPU;
* the KV cache is kept between prompts: a prompt sharing its first tokens with the previous one (the
  system prompt and the query, for every passage of a query) evaluates only the rest;
* tokens are decoded ``n_batch`` at a time in one sequence, and logits are computed only for the rows a
  caller reads (the last one, or the continuation's), which skips the LM head everywhere else.

Prompts go through the chat template stored in the GGUF file (rendered with Jinja2, as transformers does),
tokenized with special tokens parsed and no BOS added, so both local backends see the same token ids.
"""
from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from retrieval.errors import LLMError, MissingDependency
from retrieval.models import DEFAULT_LLM, resolve_model
from retrieval.rerank.llm.gguf_probe import runnable_gguf
from retrieval.rerank.llm.prefix_cache import common_prefix
from retrieval.rerank.llm.prompts import Messages, first_line_end, render_plain
from retrieval.rerank.llm.prompts import first_line as _first_line
from retrieval.rerank.llm.replies import logsumexp
from retrieval.rerank.base import checked_count as count
from retrieval.rerank.llm.tokens import choice_token_ids, log_softmax

logger = logging.getLogger(__name__)


class _Vocabulary:
    """The two things :func:`choice_token_ids` asks of a tokenizer, over llama.cpp's tokenizer."""

    def __init__(self, llm: Any) -> None:
        self.llm = llm
        self.unk_token_id = int(llm.metadata.get("tokenizer.ggml.unknown_token_id", -1))

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=add_special_tokens, special=False))


_LOAD_LOCK = threading.Lock()


def open_llama(path: str, extra_buffers: bool = True, **kwargs: Any) -> Any:
    """``llama_cpp.Llama(model_path=path, **kwargs)``; ``extra_buffers=False`` keeps every weight in plain CPU memory.

    llama.cpp moves quantised weights into "extra" buffer types by default: AMX tiles on Xeons that have them, and
    repacked AVX layouts elsewhere. Its AMX path crashes on some files (llama.cpp #20824). Without the extra
    buffers, the quantised weights run on the generic CPU kernels, which do not crash there. Those kernels are
    slower at prompt processing than the repacked ones, but faster than F16 at generation.
    ``llama_cpp.Llama`` takes no argument for this, so its default model parameters are swapped while it loads.
    """
    from llama_cpp import Llama

    if extra_buffers:
        with _LOAD_LOCK:    # never while another thread has the defaults swapped
            return Llama(model_path=path, **kwargs)
    import llama_cpp.llama as llama_module

    native = llama_module.llama_cpp
    if "use_extra_bufts" not in {name for name, *_ in native.llama_model_params._fields_}:
        raise RuntimeError("extra_buffers=False needs a llama-cpp-python whose llama_model_params has "
                           "use_extra_bufts; the installed one has none")
    default = native.llama_model_default_params

    def plain_buffers() -> Any:
        params = default()
        params.use_extra_bufts = False
        return params

    with _LOAD_LOCK:
        native.llama_model_default_params = plain_buffers
        try:
            return Llama(model_path=path, **kwargs)
        finally:
            native.llama_model_default_params = default


class LlamaCppLM:
    """A GGUF causal LM through ``llama_cpp.Llama``; one sequence at a time, KV cache reused across prompts."""

    def __init__(self, llm: Any, n_batch: int = 512, show_progress: bool = False) -> None:
        self.llm = llm
        self.n_batch = count("n_batch", n_batch, minimum=1)
        self.n_ctx = int(llm.n_ctx())
        self.n_vocab = int(llm.n_vocab())
        self.show_progress = show_progress
        self.vocabulary = _Vocabulary(llm)
        self._cached: list[int] = []          # tokens whose keys and values sit in the KV cache, in order
        self.tokens_evaluated = 0             # prompt tokens run through the model (the cache hits excluded)
        self.tokens_reused = 0                # prompt tokens the KV cache spared
        self._template = self._chat_template()
        self.plain_bos = "" if self._template is not None else self._default_bos()
        weakref.finalize(self, llm.close)  # free the model before interpreter shutdown tears llama_cpp down

    @classmethod
    def from_pretrained(cls, name: str = DEFAULT_LLM, *, max_length: int = 2048, n_threads: int | None = None,
                        convert: str | None = None, extra_buffers: bool = True, **options: Any) -> "LlamaCppLM":
        """Load an alias (``smollm2``) or a ``.gguf`` file; ``max_length`` is the context size in tokens.

        ``convert="f16"`` (or ``"q8_0"``) runs a copy of the weights in that type, written once to the cache
        folder (:func:`~retrieval.rerank.llm.gguf_convert.converted_gguf`): the bundled model's Q4_1 has no fast
        matrix kernel on AVX2 CPUs, F16 and Q8_0 have. ``None`` runs the file as shipped, unless llama.cpp crashes on
        it on this CPU (probed once in a child process: :mod:`~retrieval.rerank.llm.gguf_probe`); then an F16 copy.
        ``extra_buffers=False`` runs quantised weights on llama.cpp's plain CPU kernels, without AMX or repacking
        (:func:`open_llama`): on AMX CPUs that is how a Q8_0 or Q4_1 file runs at all, and it generates faster than F16."""
        try:
            import llama_cpp  # noqa: F401
        except ImportError as exc:
            raise MissingDependency("backend='llama-cpp' needs: pip install 'retrievekit[llamacpp]'") from exc
        count("max_length", max_length, minimum=16)
        ref = resolve_model(name)
        if not ref.gguf_file:
            raise ValueError(f"backend='llama-cpp' needs a .gguf model; {name!r} resolves to the folder {ref.path}")
        if not isinstance(extra_buffers, bool):
            raise ValueError(f"extra_buffers must be True or False, got {extra_buffers!r}")
        path = str(runnable_gguf(os.path.join(ref.path, ref.gguf_file), convert, extra_buffers))   # never one that crashes
        threads = count("n_threads", n_threads, minimum=1) if n_threads is not None else (os.cpu_count() or 1)
        n_batch = options.get("n_batch", 512)
        llm = open_llama(path, extra_buffers, n_ctx=max_length, n_batch=max(n_batch, 1), n_ubatch=max(n_batch, 1),
                         n_threads=threads, n_threads_batch=threads, logits_all=False, verbose=False)
        logger.info("loaded %s with llama.cpp (%d threads, context %d%s)", path, threads, max_length,
                    "" if extra_buffers else ", plain CPU buffers")
        return cls(llm, **options)

    def _chat_template(self) -> Any:
        """The GGUF's chat template as a Jinja2 renderer, or None (then prompts render as plain text)."""
        source = self.llm.metadata.get("tokenizer.chat_template")
        if not source:
            return None
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        def token_text(key: str) -> str:
            token_id = self.llm.metadata.get(key)
            return "" if token_id is None else self.llm.detokenize([int(token_id)], special=True).decode("utf-8", "replace")

        return Jinja2ChatFormatter(source, eos_token=token_text("tokenizer.ggml.eos_token_id"),
                                   bos_token=token_text("tokenizer.ggml.bos_token_id"), add_generation_prompt=True)

    def _default_bos(self) -> str:
        """The BOS token's text if llama.cpp puts it first by default (the GGUF's ``add_bos_token``), else ""."""
        bos = int(self.llm.token_bos())
        if bos < 0 or self.llm.tokenize(b"a", add_bos=True, special=False)[:1] != [bos]:
            return ""
        text = self.llm.detokenize([bos], special=True).decode("utf-8", "replace")
        return text if self.tokenize(text) == [bos] else ""

    def render(self, prompt: Messages) -> str:
        """The prompt as the model sees it: chat template with the assistant cue, or plain text."""
        if self._template is None:
            return render_plain(prompt, self.plain_bos)
        return self._template(messages=prompt).prompt

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text``, special tokens parsed, no BOS added (a template writes its own)."""
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def _decode(self, chunk: Sequence[int], n_past: int, first_output: int) -> np.ndarray:
        """Run ``chunk`` at positions ``n_past...``; logits of the positions >= ``first_output`` (and the last)."""
        batch = self.llm._batch.batch
        batch.n_tokens = len(chunk)
        wanted = 0
        for i, token in enumerate(chunk):
            batch.token[i] = token
            batch.pos[i] = n_past + i
            batch.seq_id[i][0] = 0
            batch.n_seq_id[i] = 1
            flag = n_past + i >= first_output or i == len(chunk) - 1
            batch.logits[i] = flag
            wanted += flag
        self.llm._ctx.decode(self.llm._batch)
        flat = np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(wanted * self.n_vocab,))
        rows = flat.reshape(wanted, self.n_vocab).copy()
        return rows if n_past + len(chunk) - 1 >= first_output else rows[:0]

    def logits(self, tokens: Sequence[int], first_output: int) -> np.ndarray:
        """Logits after each position ``first_output..len(tokens)-1``, ``[len - first_output, vocab]``.

        Positions already in the KV cache (the common prefix with the previous call, up to
        ``first_output``) are not evaluated again."""
        if not tokens or not 0 <= first_output < len(tokens):
            raise ValueError(f"first_output={first_output} must index into the {len(tokens)} tokens")
        keep = min(common_prefix(self._cached, tokens), first_output)
        self.llm._ctx.kv_cache_seq_rm(-1, keep, -1)
        self._cached = list(tokens[:keep])
        self.tokens_reused += keep
        rows = []
        for start in range(keep, len(tokens), self.n_batch):
            chunk = tokens[start:start + self.n_batch]
            rows.append(self._decode(chunk, start, first_output))
            self._cached.extend(chunk)
            self.tokens_evaluated += len(chunk)
        return np.concatenate(rows)

    def forget_cache(self) -> None:
        """Start the next prompt cold: nothing it shares with earlier prompts is reused (for timing)."""
        self._cached = []     # the next logits() call then clears llama.cpp's KV cache from position 0

    def _fit(self, tokens: list[int], keep_last: int = 1) -> list[int]:
        """Cut tokens from the left to fit the context (the answer cue is at the end), as the HF backend does."""
        if len(tokens) <= self.n_ctx:
            return tokens
        if keep_last > self.n_ctx:
            raise LLMError(f"a continuation of {keep_last} tokens does not fit the {self.n_ctx}-token context")
        return tokens[len(tokens) - self.n_ctx:]

    def next_token_logprobs(self, prompts: Sequence[Messages]) -> np.ndarray:
        """Log-softmax of the next-token logits after each prompt, ``[n_prompts, vocab]``."""
        out = np.empty((len(prompts), self.n_vocab), dtype=np.float32)
        for i, prompt in enumerate(tqdm(prompts, desc="LLM scoring", disable=not self.show_progress)):
            tokens = self._fit(self.tokenize(self.render(prompt)))
            out[i] = log_softmax(self.logits(tokens, len(tokens) - 1)[-1])
        return out

    def choice_logprobs(self, prompts: Sequence[Messages], choices: Sequence[str]) -> np.ndarray:
        """Log-probability of each choice as the first answer token (summed over its spellings)."""
        ids = [choice_token_ids(self.vocabulary, c) for c in choices]
        out = np.empty((len(prompts), len(choices)), dtype=np.float64)
        for i, row in enumerate(self.next_token_logprobs(prompts)):
            out[i] = [logsumexp(row[token_ids].tolist()) for token_ids in ids]
        return out

    def continuation_logprobs(self, prompts: Sequence[Messages], continuations: Sequence[str]) -> list[np.ndarray]:
        """Per-token log P(continuation | rendered prompt), one array per prompt (teacher forcing, no sampling)."""
        if len(prompts) != len(continuations):
            raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
        out = []
        for prompt, text in tqdm(list(zip(prompts, continuations)), desc="LLM scoring", disable=not self.show_progress):
            target = self.tokenize(text)
            if not target:
                out.append(np.zeros(0))
                continue
            tokens = self._fit(self.tokenize(self.render(prompt)) + target, keep_last=len(target) + 1)
            rows = self.logits(tokens, len(tokens) - len(target) - 1)[:-1]  # the last row predicts past the end
            logprobs = np.stack([log_softmax(r) for r in rows]) if len(rows) else np.zeros((0, self.n_vocab))
            out.append(logprobs[np.arange(len(target)), target].astype(np.float64))
        return out

    def complete(self, prompt: Messages, max_tokens: int, first_line: bool = False) -> str:
        """Greedy decoding of at most ``max_tokens`` new tokens (stops at end-of-generation). ``first_line``: stop
        once a line that holds a word is complete, and return that line (GPL's queries; the rest is never read)."""
        tokens = self._fit(self.tokenize(self.render(prompt)))
        generated: list[int] = []
        for _ in range(max_tokens):
            token = int(np.argmax(self.logits(tokens + generated, len(tokens) + len(generated) - 1)[-1]))
            if self.llm.token_eos() == token or _is_end_of_generation(self.llm, token):
                break
            generated.append(token)
            if first_line and b"\n" in self.llm.detokenize([token]):
                text = self.llm.detokenize(generated).decode("utf-8", "replace")
                if first_line_end(text) is not None:
                    return _first_line(text)
            if len(tokens) + len(generated) >= self.n_ctx:
                break
        text = self.llm.detokenize(generated).decode("utf-8", "replace")
        return _first_line(text) if first_line else text

    def complete_many(self, prompts: Sequence[Messages], max_tokens: int, first_line: bool = False) -> list[str]:
        """:meth:`complete` for each prompt in turn (llama.cpp reuses the KV cache of a shared prefix)."""
        return [self.complete(p, max_tokens, first_line) for p in tqdm(prompts, desc="LLM generation",
                                                                       disable=not self.show_progress)]


def _is_end_of_generation(llm: Any, token: int) -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_vocab_is_eog(llama_cpp.llama_model_get_vocab(llm.model), token))
