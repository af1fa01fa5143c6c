"""Pure parsers for OpenAI-compatible replies: every wrong shape becomes an LLMError naming the URL and the field.

Nothing here touches the network, so each function can be fuzzed on its own. The accepted shapes are
those of ``/chat/completions`` (``choices[0].message.content``, ``choices[0].logprobs.content[0].top_logprobs``)
and ``/models`` (``data[0].id``). Log-probs must be JSON numbers <= 0; ``null`` and ``-Infinity`` read as
-inf (servers write them for a zero probability); NaN, +Infinity, strings and booleans are refused.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from retrieval.errors import LLMError

POSITIVE_TOLERANCE = 1e-3  # a log-prob a hair above 0 is rounding; more is not a log-prob


def _kind(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _show(value: Any) -> str:
    return repr(value)[:120]


def _refuse_constant(name: str) -> float:
    if name == "-Infinity":
        return -math.inf
    raise ValueError(f"non-standard JSON constant {name}")


def parse_json(body: bytes, url: str) -> Any:
    """The JSON value of a reply body (UTF-8); NaN and Infinity are refused."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LLMError(f"{url}: reply is not UTF-8 (bad byte at offset {exc.start}): {body[:200]!r}") from None
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise LLMError(f"{url}: reply is not JSON ({exc.msg} at offset {exc.pos}): {body[:200]!r}") from None
    except RecursionError:
        raise LLMError(f"{url}: reply is not usable JSON (nested too deeply)") from None
    except ValueError as exc:  # the constant above, or an integer over Python's digit limit
        raise LLMError(f"{url}: reply is not usable JSON ({exc})") from None


def _object(value: Any, field: str, url: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise LLMError(f"{url}: {field} is a JSON {_kind(value)}, not an object: {_show(value)}")
    return value


def first_choice(reply: Any, url: str) -> dict[str, Any]:
    """``reply["choices"][0]``, checked at each step."""
    reply = _object(reply, "reply", url)
    choices = reply.get("choices")
    if choices is None:
        raise LLMError(f"{url}: reply has no choices (no 'choices' field): {_show(reply)}")
    if not isinstance(choices, list):
        raise LLMError(f"{url}: reply has no choices ('choices' is a JSON {_kind(choices)}, not an array)")
    if not choices:
        raise LLMError(f"{url}: reply has no choices (an empty 'choices' array)")
    return _object(choices[0], "choices[0]", url)


def message_content(choice: dict[str, Any], url: str) -> str | None:
    """``choice["message"]["content"]`` when present (None when absent), else LLMError for a wrong type."""
    message = choice.get("message")
    if message is None:
        return None
    content = _object(message, "choices[0].message", url).get("content")
    if content is not None and not isinstance(content, str):
        raise LLMError(f"{url}: choices[0].message.content is a JSON {_kind(content)}, not a string")
    return content


def reply_text(reply: Any, url: str) -> str:
    """The reply's message text; LLMError when there is none."""
    content = message_content(first_choice(reply, url), url)
    if content is None:
        raise LLMError(f"{url}: reply has no message content")
    return content


def logprob_value(value: Any, field: str, url: str) -> float:
    """A log-probability: a JSON number <= 0 (``null`` reads as -inf)."""
    if value is None:
        return -math.inf
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LLMError(f"{url}: {field} is a JSON {_kind(value)}, not a number: {_show(value)}")
    if isinstance(value, int) and value > 0:
        raise LLMError(f"{url}: {field} = {_show(value)} is above 0, so not a log-probability")
    try:
        number = float(value)
    except OverflowError:  # a huge negative integer
        return -math.inf
    if math.isnan(number) or number > POSITIVE_TOLERANCE:
        raise LLMError(f"{url}: {field} = {_show(value)} is not a log-probability (must be a number <= 0)")
    return min(number, 0.0)


def _first_token(logprobs: Any, url: str) -> dict[str, Any] | None:
    """``logprobs["content"][0]``, or None when the server sent no log-probs."""
    content = _object(logprobs, "choices[0].logprobs", url).get("content")
    if content is None:
        return None
    if not isinstance(content, list):
        raise LLMError(f"{url}: choices[0].logprobs.content is a JSON {_kind(content)}, not an array")
    return _object(content[0], "choices[0].logprobs.content[0]", url) if content else None


def top_logprobs(choice: dict[str, Any], url: str) -> list[tuple[str, float]] | None:
    """The first answer token's alternatives as ``(token, logprob)``; None when the reply has no log-probs."""
    if choice.get("logprobs") is None:
        return None
    first = _first_token(choice["logprobs"], url)
    top = None if first is None else first.get("top_logprobs")
    if top is not None and not isinstance(top, list):
        raise LLMError(f"{url}: choices[0].logprobs.content[0].top_logprobs is a JSON {_kind(top)}, not an array")
    if not top:
        return None
    out = []
    for i, entry in enumerate(top):
        field = f"choices[0].logprobs.content[0].top_logprobs[{i}]"
        entry = _object(entry, field, url)
        token = entry.get("token")
        if not isinstance(token, str):
            raise LLMError(f"{url}: {field}.token is a JSON {_kind(token)}, not a string")
        if "logprob" not in entry:
            raise LLMError(f"{url}: {field} has no 'logprob'")
        out.append((token, logprob_value(entry["logprob"], f"{field}.logprob", url)))
    return out


def logsumexp(values: Sequence[float]) -> float:
    """``log(sum(exp(v)))`` without overflow; -inf when every value is -inf."""
    top = max(values)
    if top == -math.inf:
        return -math.inf
    return top + math.log(sum(math.exp(v - top) for v in values))


def scores_from_top(top: Sequence[tuple[str, float]], choices: Sequence[str], floor_margin: float) -> list[float]:
    """Each choice's log-prob, summed over the listed spellings (case and spaces ignored); a choice not
    listed gets ``floor_margin`` below the least likely listed token. A sum over a server's inconsistent
    numbers can pass 0; it is capped there, as no log-probability is above 0."""
    listed: dict[str, list[float]] = {}
    for token, logprob in top:
        listed.setdefault(token.strip().lower(), []).append(logprob)
    floor = min(logprob for _, logprob in top) - floor_margin
    return [min(0.0, logsumexp(listed[c.lower()])) if c.lower() in listed else floor for c in choices]


def scores_from_text(text: str, choices: Sequence[str], floor_margin: float) -> list[float]:
    """Coarse scores from the reply text: log-prob 0 for the choice named first, far below for the rest."""
    words = text.strip().split()
    word = words[0].strip(".,:;!").lower() if words else ""
    return [0.0 if c.lower() == word else -floor_margin - 20.0 for c in choices]


def choice_scores(reply: Any, url: str, choices: Sequence[str], floor_margin: float) -> tuple[list[float], bool]:
    """One score per choice from a one-token reply, and whether they came from the text (no log-probs)."""
    choice = first_choice(reply, url)
    top = top_logprobs(choice, url)
    if top is not None:
        return scores_from_top(top, choices, floor_margin), False
    text = message_content(choice, url)
    if text is None:
        raise LLMError(f"{url}: reply has neither logprobs nor message content")
    return scores_from_text(text, choices, floor_margin), True


def model_id(listing: Any, url: str) -> str:
    """The first model id of a ``/models`` listing."""
    data = listing.get("data") if isinstance(listing, dict) else None
    first = data[0] if isinstance(data, list) and data else None
    name = first.get("id") if isinstance(first, dict) else None
    if not isinstance(name, str) or not name.strip():
        raise LLMError(f"{url}: no model listed; name one as URL#MODEL (got {_show(listing)})")
    return name



def _echoed_tokens(choice: dict[str, Any], url: str) -> tuple[list[str], list[Any]]:
    """``(tokens, token_logprobs)`` of a completions reply's ``logprobs``, checked to be parallel arrays."""
    if choice.get("logprobs") is None:
        raise LLMError(f"{url}: reply has no choices[0].logprobs; the server must support echo=True with logprobs")
    logprobs = _object(choice["logprobs"], "choices[0].logprobs", url)
    tokens, values = logprobs.get("tokens"), logprobs.get("token_logprobs")
    for name, value in (("tokens", tokens), ("token_logprobs", values)):
        if not isinstance(value, list):
            raise LLMError(f"{url}: choices[0].logprobs.{name} is a JSON {_kind(value)}, not an array")
    if len(tokens) != len(values):
        raise LLMError(f"{url}: choices[0].logprobs has {len(tokens)} tokens but {len(values)} token_logprobs")
    for i, token in enumerate(tokens):
        if not isinstance(token, str):
            raise LLMError(f"{url}: choices[0].logprobs.tokens[{i}] is a JSON {_kind(token)}, not a string")
    return tokens, values


def _suffix_start(tokens: Sequence[str], end: int, text: str) -> int | None:
    """The first index of the shortest run ``tokens[b:end]`` whose joined text ends with ``text``, else None."""
    joined, start = "", end
    while start > 0 and len(joined) < len(text):
        start -= 1
        joined = tokens[start] + joined
    return start if len(joined) >= len(text) and joined.endswith(text) else None


def prompt_logprobs(reply: Any, url: str, continuation: str, max_generated: int = 1) -> list[float]:
    """Log-probs of the echoed prompt tokens that spell ``continuation``, the end of the prompt.

    Reads the completions shape ``choices[0].logprobs = {tokens, token_logprobs}`` that servers return for
    ``echo=True, logprobs=N``. The tokens are found by their text, from the end: character offsets are not
    used because servers disagree on them (llama-cpp-python counts without special tokens). The reply may end
    with up to ``max_generated`` generated tokens (some servers list them, some do not); trailing empty
    tokens (an end-of-text) never count. A token of the continuation with a ``null`` log-prob, or a reply
    whose tokens do not end with the continuation (the server did not echo), is an LLMError.
    """
    if not continuation:
        raise ValueError("continuation must be non-empty")
    tokens, values = _echoed_tokens(first_choice(reply, url), url)
    end = len(tokens)
    while end > 0 and tokens[end - 1] == "":
        end -= 1
    for stop in range(end, max(end - max_generated, 0) - 1, -1):
        start = _suffix_start(tokens, stop, continuation)
        if start is not None:
            break
    else:
        raise LLMError(f"{url}: the echoed tokens do not end with the scored text {_show(continuation)}; the "
                       "server must echo the prompt (echo=True) with its log-probs")
    out = []
    for i in range(start, stop):
        field = f"choices[0].logprobs.token_logprobs[{i}]"
        if values[i] is None:
            raise LLMError(f"{url}: {field} is null for a token of the scored text")
        out.append(logprob_value(values[i], field, url))
    return out
