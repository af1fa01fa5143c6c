"""Wrong-shaped replies and bad options for the HTTP LLM backend: always our own error naming the place.

The reply parsers are pure functions (retrieval.rerank.llm.replies), fuzzed here with hypothesis; the
end-to-end cases go through a fake server on 127.0.0.1.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers.fake_http import RawServer, chat_reply, send
from retrieval.errors import LLMError
from retrieval.rerank import load_reranker
from retrieval.rerank.llm.backends import OpenAIBackend, load_backend
from retrieval.rerank.llm.replies import choice_scores, model_id, parse_json, reply_text
from retrieval.types import Hit

URL = "http://127.0.0.1:1/v1/chat/completions"
CHOICES = ("Yes", "No")
MESSAGES = [{"role": "user", "content": "Does it answer? Yes or No."}]


# ---- option validation ----------------------------------------------------------------------------------

@pytest.mark.parametrize("option, value", [
    ("retries", -1), ("retries", 1.5), ("retries", True), ("timeout", 0), ("timeout", -2.0), ("timeout", math.inf),
    ("timeout", math.nan), ("timeout", "30"), ("concurrency", 0), ("concurrency", -3), ("max_reply_bytes", 0),
    ("max_reply_bytes", -1), ("backoff", -0.1), ("top_logprobs", 0), ("floor_margin", -1.0), ("max_redirects", -1),
])
def test_bad_options_are_refused_at_construction(option: str, value: Any) -> None:
    with pytest.raises(ValueError, match=option):
        OpenAIBackend("http://127.0.0.1:9/v1", "m", **{option: value})
    with pytest.raises(ValueError, match=option):  # the same through the reranker registry
        load_reranker("llm-yesno:http://127.0.0.1:9/v1#m", **{option: value})


@pytest.mark.parametrize("url", ["ftp://x/v1", "http://", "http:///v1", "http://h:99999/v1", "http://u:p@h/v1",
                                 "http://h/v1?x=1", "http://h /v1", "http://h/v1\n", 42])
def test_bad_base_urls_are_refused(url: Any) -> None:
    with pytest.raises(ValueError, match="base_url"):
        OpenAIBackend(url, "m")


def test_api_keys_with_newlines_are_refused() -> None:
    with pytest.raises(ValueError, match="api_key"):
        OpenAIBackend("http://127.0.0.1:9/v1", "m", api_key="k\r\nX-Injected: 1")


def test_load_backend_names_an_unknown_option_and_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"\['timout'\].*HTTP.*timeout"):
        load_backend("http://127.0.0.1:9/v1#m", timout=3)
    with pytest.raises(ValueError, match=r"\['retries'\].*local.*batch_size"):
        load_backend("smollm2", retries=2)  # refused before any model is loaded
    with pytest.raises(ValueError, match="model"):
        load_backend("")


# ---- the pure parsers, on chosen and random replies ------------------------------------------------------

def _top(entries: list[Any]) -> dict[str, Any]:
    return {"choices": [{"message": {"content": "Yes"}, "logprobs": {"content": [{"token": "Yes", "top_logprobs": entries}]}}]}


WRONG_SHAPES = [
    ([1, 2], "reply is a JSON array"),
    ("text", "reply is a JSON string"),
    ({}, "no choices"),
    ({"choices": "Yes"}, "'choices' is a JSON string"),
    ({"choices": {"0": {}}}, "'choices' is a JSON object"),
    ({"choices": []}, "empty"),
    ({"choices": [None]}, r"choices\[0\] is a JSON null"),
    ({"choices": [{"message": "Yes"}]}, r"choices\[0\]\.message is a JSON string"),
    ({"choices": [{"message": {"content": 5}}]}, r"content is a JSON number"),
    ({"choices": [{"message": {}}]}, "neither logprobs nor message content"),
    ({"choices": [{"logprobs": []}]}, r"logprobs is a JSON array"),
    ({"choices": [{"logprobs": {"content": {}}}]}, r"logprobs\.content is a JSON object"),
    ({"choices": [{"logprobs": {"content": ["Yes"]}}]}, r"content\[0\] is a JSON string"),
    ({"choices": [{"logprobs": {"content": [{"top_logprobs": {"Yes": -1}}]}}]}, r"top_logprobs is a JSON object"),
    (_top([{"token": "Yes", "logprob": "-0.5"}]), r"logprob is a JSON string, not a number"),
    (_top([{"token": "Yes", "logprob": True}]), r"logprob is a JSON boolean"),
    (_top([{"token": "Yes", "logprob": math.nan}]), "not a log-probability"),
    (_top([{"token": "Yes", "logprob": math.inf}]), "not a log-probability"),
    (_top([{"token": "Yes", "logprob": 3}]), "above 0"),
    (_top([{"token": "Yes", "logprob": 0.5}]), "not a log-probability"),
    (_top([{"token": 7, "logprob": -1}]), r"token is a JSON number"),
    (_top([{"token": "Yes"}]), "has no 'logprob'"),
    (_top(["Yes"]), r"top_logprobs\[0\] is a JSON string"),
]


@pytest.mark.parametrize("reply, message", WRONG_SHAPES)
def test_wrong_shapes_name_the_url_and_the_field(reply: Any, message: str) -> None:
    with pytest.raises(LLMError, match=message) as info:
        choice_scores(reply, URL, CHOICES, 1.0)
    assert str(info.value).startswith(URL)


def test_what_servers_really_send_is_accepted() -> None:
    null_entry = _top([{"token": "Yes", "logprob": -0.1}, {"token": "No", "logprob": None}])
    assert choice_scores(null_entry, URL, CHOICES, 1.0) == ([-0.1, -math.inf], False)  # null: a zero probability
    tiny_positive = _top([{"token": "Yes", "logprob": 1e-7}, {"token": "No", "logprob": -10**400}])
    assert choice_scores(tiny_positive, URL, CHOICES, 1.0) == ([0.0, -math.inf], False)
    over_one = _top([{"token": " No", "logprob": 0.0}, {"token": "No", "logprob": -3.0}])  # found by the fuzzer below
    assert choice_scores(over_one, URL, CHOICES, 1.0) == ([-4.0, 0.0], False)  # the summed spellings capped at 0
    assert choice_scores({"choices": [{"message": {"content": "No."}, "logprobs": None}]}, URL, CHOICES, 1.0) == \
        ([-21.0, 0.0], True)
    assert choice_scores({"choices": [{"message": {"content": ""}, "logprobs": {"content": []}}]}, URL, CHOICES, 1.0) \
        == ([-21.0, -21.0], True)


@pytest.mark.parametrize("body, message", [
    (b"not json {", "not JSON"), (b"\xff\xfe{}", "not UTF-8"), (b'{"a": NaN}', "NaN"), (b'{"a": Infinity}', "Infinity"),
    (b"[" * 100_000, "nested too deeply|not JSON"), (b'{"a": ' + b"9" * 5000 + b"}", "usable JSON"), (b"", "not JSON"),
])
def test_bodies_that_are_not_json_are_named(body: bytes, message: str) -> None:
    with pytest.raises(LLMError, match=message) as info:
        parse_json(body, URL)
    assert str(info.value).startswith(URL)


def test_minus_infinity_reads_as_a_zero_probability() -> None:
    assert parse_json(b'{"a": -Infinity}', URL) == {"a": -math.inf}


def test_model_listing_shapes() -> None:
    assert model_id({"data": [{"id": "m1"}, {"id": "m2"}]}, URL) == "m1"
    for listing in ([], {}, {"data": []}, {"data": {}}, {"data": [1]}, {"data": [{"id": 3}]}, {"data": [{"id": " "}]}):
        with pytest.raises(LLMError, match="no model listed"):
            model_id(listing, URL)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | st.sampled_from(["Yes", "No", " yes"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["choices", "message", "content", "logprobs", "top_logprobs", "token", "logprob", "x"]),
        inner, max_size=4),
    max_leaves=30)


def _near_miss(draw: st.DrawFn) -> Any:
    """A well-formed reply with one part (or none) swapped for random JSON: reaches every deep field."""
    spot = draw(st.sampled_from(["none", "logprob", "token", "entry", "top", "first", "content", "logprobs",
                                 "message", "choice", "choices"]))

    def part(name: str, good: Any) -> Any:
        return draw(JSON) if name == spot else good

    entries = [{"token": part("token", draw(st.sampled_from(["Yes", " No", "maybe"]))),
                "logprob": part("logprob", draw(st.floats(max_value=0) | st.integers(max_value=0) | st.none()))},
               part("entry", {"token": "No", "logprob": -3.0})]
    first = part("first", {"token": "Yes", "top_logprobs": part("top", entries)})
    choice = {"message": part("message", {"content": "Yes"}),
              "logprobs": part("logprobs", {"content": part("content", [first])})}
    return {"choices": part("choices", [part("choice", choice)])}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reply=JSON | st.composite(_near_miss)())
def test_fuzzed_replies_give_scores_or_an_llm_error(reply: Any) -> None:
    try:
        scores, _ = choice_scores(reply, URL, CHOICES, 1.0)
    except LLMError as exc:
        assert str(exc).startswith(URL)
        return
    assert len(scores) == len(CHOICES)
    assert all(isinstance(s, float) and not math.isnan(s) and s <= 0.0 for s in scores)


@settings(max_examples=300, deadline=None)
@given(reply=JSON | st.composite(_near_miss)())
def test_fuzzed_replies_give_text_or_an_llm_error(reply: Any) -> None:
    try:
        assert isinstance(reply_text(reply, URL), str)
    except LLMError as exc:
        assert str(exc).startswith(URL)


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=64) | JSON.map(lambda v: json.dumps(v).encode()))
def test_fuzzed_bodies_parse_or_give_an_llm_error(body: bytes) -> None:
    try:
        parse_json(body, URL)
    except LLMError as exc:
        assert str(exc).startswith(URL)


# ---- end to end: a server that says anything ------------------------------------------------------------

ODD_REPLIES: list[Any] = [
    "not json {", [1, 2], {"choices": []}, {"choices": "x"}, {"choices": [{"message": None}]},
    chat_reply("Yes", {"Yes": -0.1, "No": -2.0}), chat_reply("[3] > [1] > [3] > [9]"), chat_reply(""),
    chat_reply("No"), _top([{"token": "Yes", "logprob": "-1"}]), {"choices": [{"message": {"content": ["[2]"]}}]},
]


@pytest.fixture
def server() -> Iterator[RawServer]:
    fake = RawServer(lambda h: send(h, 200, fake.reply))
    fake.reply = None
    yield fake
    fake.close()


@pytest.mark.parametrize("reply", ODD_REPLIES, ids=[str(i) for i in range(len(ODD_REPLIES))])
@pytest.mark.parametrize("kind", ["llm-yesno", "llm-rating", "llm-listwise"])
def test_rerankers_return_a_permutation_or_an_llm_error(server: RawServer, kind: str, reply: Any) -> None:
    server.reply = reply.encode() if isinstance(reply, str) else reply
    hits = [Hit(f"d{i}", float(5 - i), f"passage {i}") for i in range(5)]
    reranker = load_reranker(f"{kind}:{server.url}#m", retries=0, concurrency=2, window=3, step=2) \
        if kind == "llm-listwise" else load_reranker(f"{kind}:{server.url}#m", retries=0, concurrency=2)
    try:
        out = reranker.rerank("query", hits)
    except LLMError as exc:
        assert server.url in str(exc)
        return
    assert sorted(h.id for h in out) == sorted(h.id for h in hits)
    assert all(not math.isnan(h.score) for h in out)


def test_a_wrong_shaped_http_reply_is_an_llm_error_naming_the_url(server: RawServer) -> None:
    server.reply = {"choices": [{"logprobs": {"content": [{"top_logprobs": [{"token": "Yes", "logprob": "high"}]}]}}]}
    with pytest.raises(LLMError, match=r"/chat/completions: .*logprob is a JSON string") as info:
        OpenAIBackend(server.url, "m", retries=0).choice_logprobs([MESSAGES], CHOICES)
    assert server.url in str(info.value)
    assert len(server.requests) == 1  # a malformed reply is not retried
