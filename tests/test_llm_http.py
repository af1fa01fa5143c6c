"""The OpenAI-compatible HTTP backend against a fake server on 127.0.0.1 (never the internet)."""
from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from retrieval.rerank.llm.backends import LLMError, OpenAIBackend
from retrieval.rerank import load_reranker
from retrieval.types import Hit
from helpers.fake_http import chat_reply

MAX_REQUESTS = 200  # the fake server refuses to serve more, so a retry loop can never run away


class FakeServer:
    """Serves scripted replies: ``script`` entries (status, body, delay) first, then ``default(payload)``."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, Any] | None, dict[str, str]]] = []
        self.script: list[tuple[int, Any, float]] = []
        self.default = lambda payload: (200, chat_reply("Yes", {"Yes": -0.1, "No": -2.5}))
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                payload = json.loads(self.rfile.read(length)) if length else None
                server.requests.append((self.path, payload, dict(self.headers)))
                if len(server.requests) > MAX_REQUESTS:
                    status, body, delay = 410, {"error": "request budget spent"}, 0.0
                elif server.script:
                    status, body, delay = server.script.pop(0)
                elif self.path.endswith("/models"):
                    status, body, delay = 200, {"data": [{"id": "listed-model"}]}, 0.0
                else:
                    status, body = server.default(payload)
                    delay = 0.0
                time.sleep(delay)
                raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = _serve
            do_POST = _serve

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[FakeServer]:
    fake = FakeServer()
    yield fake
    fake.close()


MESSAGES = [{"role": "user", "content": "Does it answer? Yes or No."}]


def test_choice_logprobs_from_top_logprobs(server: FakeServer) -> None:
    server.default = lambda payload: (200, chat_reply("Yes", {" Yes": -0.5, "No": -1.2, "yes": -2.0, "Maybe": -4.0}))
    backend = OpenAIBackend(f"{server.url}", "m", floor_margin=1.0)
    (yes, no, zero), = backend.choice_logprobs([MESSAGES], ["Yes", "No", "0"])
    assert yes == pytest.approx(math.log(math.exp(-0.5) + math.exp(-2.0)))
    assert no == pytest.approx(-1.2)
    assert zero == pytest.approx(-5.0)  # not listed: 1.0 below the least likely listed token
    path, payload, _ = server.requests[0]
    assert path == "/v1/chat/completions"
    assert payload["model"] == "m" and payload["max_tokens"] == 1 and payload["temperature"] == 0
    assert payload["logprobs"] is True and payload["top_logprobs"] == 20


def test_complete_returns_the_message_and_sends_the_key(server: FakeServer) -> None:
    server.default = lambda payload: (200, chat_reply("[2] > [1]"))
    backend = OpenAIBackend.from_spec(f"{server.url}#my-model", api_key="k123")
    assert backend.complete(MESSAGES, 30) == "[2] > [1]"
    _, payload, headers = server.requests[0]
    assert payload["model"] == "my-model" and payload["max_tokens"] == 30 and payload["messages"] == MESSAGES
    assert headers["Authorization"] == "Bearer k123"


def test_complete_many_keeps_the_order_and_cuts_to_the_first_line(server: FakeServer) -> None:
    def reply(payload: dict[str, Any]) -> tuple[int, Any]:
        n = payload["messages"][0]["content"]
        time.sleep(0.05 if n == "0" else 0.0)                      # the first request answers last
        return 200, chat_reply(f"\n  \nQuery {n}: why?\nmore text {n}")
    server.default = reply
    backend = OpenAIBackend(server.url, "m", concurrency=4)
    prompts = [[{"role": "user", "content": str(i)}] for i in range(6)]
    assert backend.complete_many(prompts, 20) == [f"\n  \nQuery {i}: why?\nmore text {i}" for i in range(6)]
    assert backend.complete_many(prompts, 20, first_line=True) == [f"\n  \nQuery {i}: why?" for i in range(6)]
    assert backend.complete_many([], 20) == []


def test_model_name_comes_from_the_models_listing(server: FakeServer) -> None:
    backend = OpenAIBackend.from_spec(server.url)
    backend.complete(MESSAGES, 5)
    backend.complete(MESSAGES, 5)
    assert [r[0] for r in server.requests] == ["/v1/models", "/v1/chat/completions", "/v1/chat/completions"]
    assert server.requests[1][1]["model"] == "listed-model"


def test_retries_server_errors_then_succeeds(server: FakeServer) -> None:
    server.script = [(503, {"error": "loading"}, 0.0), (500, "oops", 0.0)]
    server.default = lambda payload: (200, chat_reply("ok"))
    backend = OpenAIBackend(server.url, "m", retries=2, backoff=0.01)
    assert backend.complete(MESSAGES, 5) == "ok"
    assert len(server.requests) == 3


def test_client_errors_are_not_retried(server: FakeServer) -> None:
    server.script = [(400, {"error": "bad request: unknown model"}, 0.0)]
    backend = OpenAIBackend(server.url, "m", retries=3, backoff=0.01)
    with pytest.raises(LLMError, match="HTTP 400.*unknown model"):
        backend.complete(MESSAGES, 5)
    assert len(server.requests) == 1


def test_timeouts_are_retried_then_reported(server: FakeServer) -> None:
    server.script = [(200, chat_reply("late"), 0.6), (200, chat_reply("late"), 0.6)]
    backend = OpenAIBackend(server.url, "m", timeout=0.2, retries=1, backoff=0.01)
    with pytest.raises(LLMError, match="failed after 2 attempts"):
        backend.complete(MESSAGES, 5)
    assert len(server.requests) == 2


def test_unreachable_server_is_a_clear_error() -> None:
    fake = FakeServer()
    url = fake.url
    fake.close()
    with pytest.raises(LLMError, match=r"127\.0\.0\.1.*failed after 1 attempts"):
        OpenAIBackend(url, "m", retries=0, timeout=1.0).complete(MESSAGES, 5)


def test_malformed_replies_are_reported(server: FakeServer) -> None:
    server.script = [(200, "not json {", 0.0), (200, {"choices": []}, 0.0), (200, {"choices": [{"message": {}}]}, 0.0)]
    backend = OpenAIBackend(server.url, "m", retries=0)
    with pytest.raises(LLMError, match="not JSON"):
        backend.complete(MESSAGES, 5)
    with pytest.raises(LLMError, match="no choices"):
        backend.complete(MESSAGES, 5)
    with pytest.raises(LLMError, match="no message content"):
        backend.complete(MESSAGES, 5)


def test_servers_without_logprobs_fall_back_to_the_reply_text(server: FakeServer) -> None:
    server.default = lambda payload: (200, chat_reply("No."))
    (yes, no), = OpenAIBackend(server.url, "m").choice_logprobs([MESSAGES], ["Yes", "No"])
    assert no == 0.0 and yes < -10


def test_rejects_non_http_urls() -> None:
    with pytest.raises(ValueError, match="http"):
        OpenAIBackend("ftp://example.org/v1")


def _judge(payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """A fake LLM: passages about 'cancer' are relevant; listwise replies put them first."""
    text = payload["messages"][-1]["content"]
    if payload.get("logprobs"):
        relevant = "cancer" in text.split("Passage:")[1]
        return 200, chat_reply("Yes", {"Yes": -0.1, "No": -2.3} if relevant else {"Yes": -2.3, "No": -0.1})
    lines = [line for line in text.splitlines() if line.startswith("[")]
    ranked = sorted(range(len(lines)), key=lambda i: "cancer" not in lines[i])
    return 200, chat_reply(" > ".join(f"[{i + 1}]" for i in ranked))


def test_rerankers_end_to_end_over_http(server: FakeServer) -> None:
    server.default = _judge
    hits = [Hit("a", 3.0, "heart disease"), Hit("b", 2.0, "cancer in mice"), Hit("c", 1.0, "river water")]
    for spec in ("llm-yesno", "llm-listwise"):
        reranker = load_reranker(f"{spec}:{server.url}#judge", retries=0, concurrency=2)
        out = reranker.rerank("what causes cancer?", hits)
        assert [h.id for h in out] == ["b", "a", "c"], spec
    assert len(server.requests) == 4  # three pointwise calls, one listwise window
