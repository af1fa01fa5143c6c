"""The HTTP LLM backend against hostile servers on 127.0.0.1: trickles (total deadline), floods (size cap),
and redirects (the API key never leaves its origin). Issue #12, defects 15-17."""
from __future__ import annotations

import json
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler

import pytest

from helpers.fake_http import RawServer, chat_reply, flood, http_message, send, trickle
from retrieval.errors import LLMError
from retrieval.rerank.llm.backends import OpenAIBackend

MESSAGES = [{"role": "user", "content": "Does it answer? Yes or No."}]
OK_BODY = json.dumps(chat_reply("ok")).encode()
MiB = 2**20


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[BaseHTTPRequestHandler], None]], RawServer]]:
    """Start servers with a given handler; all are closed after the test."""
    started: list[RawServer] = []

    def start(handle: Callable[[BaseHTTPRequestHandler], None]) -> RawServer:
        started.append(RawServer(handle))
        return started[-1]

    yield start
    for server in started:
        server.close()


def _timed(backend: OpenAIBackend) -> tuple[float, Exception | str]:
    start = time.monotonic()
    try:
        outcome: Exception | str = backend.complete(MESSAGES, 5)
    except LLMError as exc:
        outcome = exc
    return time.monotonic() - start, outcome


# ---- 15: `timeout` is a total deadline per attempt -------------------------------------------------------

def test_a_body_trickle_cannot_outlast_the_timeout(serve) -> None:
    def handle(h: BaseHTTPRequestHandler) -> None:
        body = OK_BODY.ljust(400)  # 400 bytes at 20 per second would take 20 s
        h.wfile.write(http_message(200, body)[: -len(body)])
        trickle(h, body)

    server = serve(handle)
    elapsed, outcome = _timed(OpenAIBackend(server.url, "m", timeout=2.0, retries=0))
    assert isinstance(outcome, LLMError) and "2 s timeout" in str(outcome), outcome
    assert server.url in str(outcome)
    assert 1.9 <= elapsed < 2.6


def test_a_header_trickle_cannot_outlast_the_timeout(serve) -> None:
    server = serve(lambda h: trickle(h, http_message(200, OK_BODY, {"X-Padding": "p" * 300})))
    elapsed, outcome = _timed(OpenAIBackend(server.url, "m", timeout=1.0, retries=0))
    assert isinstance(outcome, LLMError) and "timeout" in str(outcome), outcome
    assert 0.9 <= elapsed < 1.6


def test_a_close_delimited_trickle_is_a_timeout_not_a_short_reply(serve) -> None:
    def handle(h: BaseHTTPRequestHandler) -> None:
        h.wfile.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
        trickle(h, OK_BODY.ljust(400))

    server = serve(handle)
    elapsed, outcome = _timed(OpenAIBackend(server.url, "m", timeout=0.8, retries=0))
    assert isinstance(outcome, LLMError) and "timeout" in str(outcome), outcome
    assert elapsed < 1.4


def test_a_trickled_tls_handshake_cannot_outlast_the_timeout() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)

    def serve_one() -> None:  # a TLS record header announcing 16 KiB of handshake, then a byte every 50 ms
        try:
            conn, _ = listener.accept()
            with conn:
                conn.sendall(b"\x16\x03\x03\x40\x00")
                for _ in range(400):
                    conn.sendall(b"\x00")
                    time.sleep(0.05)
        except OSError:
            pass

    thread = threading.Thread(target=serve_one, daemon=True)
    thread.start()
    try:
        url = f"https://127.0.0.1:{listener.getsockname()[1]}/v1"
        elapsed, outcome = _timed(OpenAIBackend(url, "m", timeout=1.0, retries=0))
    finally:
        listener.close()
    assert isinstance(outcome, LLMError) and "1 s timeout" in str(outcome), outcome
    assert 0.9 <= elapsed < 1.6
    thread.join(timeout=2)  # the client hung up, so the server's next write failed
    assert not thread.is_alive()


def test_each_retry_gets_its_own_deadline(serve) -> None:
    server = serve(lambda h: trickle(h, http_message(200, OK_BODY)))
    elapsed, outcome = _timed(OpenAIBackend(server.url, "m", timeout=0.5, retries=2, backoff=0.01))
    assert isinstance(outcome, LLMError) and "failed after 3 attempts" in str(outcome), outcome
    assert len(server.requests) == 3
    assert 1.5 <= elapsed < 2.4  # three 0.5 s attempts and two short sleeps


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_a_slow_reply_that_finishes_in_time_is_read_whole(serve, framing: str) -> None:
    def handle(h: BaseHTTPRequestHandler) -> None:
        if framing == "length":
            trickle(h, http_message(200, OK_BODY), pause=0.002)
            return
        h.wfile.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        for piece in (OK_BODY[:10], OK_BODY[10:11], OK_BODY[11:]):
            trickle(h, b"%x\r\n%s\r\n" % (len(piece), piece), pause=0.002)
        h.wfile.write(b"0\r\n\r\n")

    server = serve(handle)
    assert OpenAIBackend(server.url, "m", timeout=5.0, retries=0).complete(MESSAGES, 5) == "ok"


def test_a_connection_cut_short_of_its_content_length_is_retried_then_reported(serve) -> None:
    def handle(h: BaseHTTPRequestHandler) -> None:
        h.wfile.write(http_message(200, OK_BODY)[:-5])  # then the handler returns and the socket closes

    server = serve(handle)
    _, outcome = _timed(OpenAIBackend(server.url, "m", timeout=2.0, retries=1, backoff=0.01))
    assert isinstance(outcome, LLMError) and "cut off" in str(outcome), outcome
    assert len(server.requests) == 2


# ---- 16: replies are capped ---------------------------------------------------------------------------------

def test_a_declared_oversized_reply_is_refused_before_reading(serve) -> None:
    def handle(h: BaseHTTPRequestHandler) -> None:
        h.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 314572800\r\n\r\n" + b" " * 1000)
        time.sleep(0.5)

    server = serve(handle)
    elapsed, outcome = _timed(OpenAIBackend(server.url, "m", retries=3, max_reply_bytes=MiB, timeout=10))
    assert isinstance(outcome, LLMError), outcome
    assert "314572800" in str(outcome) and "max_reply_bytes=1048576" in str(outcome) and server.url in str(outcome)
    assert len(server.requests) == 1  # a retry cannot make it smaller
    assert elapsed < 2.0  # reading the 300 MB on offer would take until the 10 s timeout


@pytest.mark.parametrize("framing", ["close", "chunked"])
def test_an_endless_reply_is_cut_at_the_cap_without_holding_it(serve, framing: str) -> None:
    server = serve(lambda h: flood(server, h, 64 * MiB, framing))
    backend = OpenAIBackend(server.url, "m", retries=2, max_reply_bytes=MiB, timeout=20)
    tracemalloc.start()
    try:
        _, outcome = _timed(backend)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert isinstance(outcome, LLMError) and "over max_reply_bytes=1048576" in str(outcome), outcome
    assert server.url in str(outcome)
    assert peak < 4 * MiB  # the client held about one cap's worth, not the 64 MiB on offer
    assert len(server.requests) == 1
    time.sleep(0.2)
    assert server.sent < 32 * MiB  # the server saw the client hang up and stopped


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_the_cap_is_inclusive(serve, framing: str) -> None:
    size = 4096
    body = OK_BODY.ljust(size)

    def handle(h: BaseHTTPRequestHandler) -> None:
        if framing == "length":
            send(h, 200, body)
        else:
            h.wfile.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (size, body))

    server = serve(handle)
    assert OpenAIBackend(server.url, "m", retries=0, max_reply_bytes=size).complete(MESSAGES, 5) == "ok"
    with pytest.raises(LLMError, match=f"max_reply_bytes={size - 1}"):
        OpenAIBackend(server.url, "m", retries=0, max_reply_bytes=size - 1).complete(MESSAGES, 5)


def test_the_default_cap_is_16_mib() -> None:
    assert OpenAIBackend("http://127.0.0.1:9/v1", "m").max_reply_bytes == 16 * MiB


def test_a_huge_error_reply_reads_only_a_little(serve) -> None:
    def handle(h: BaseHTTPRequestHandler) -> None:
        h.wfile.write(b"HTTP/1.1 400 Bad\r\nConnection: close\r\n\r\nunknown model" + b"!" * (8 * MiB))

    server = serve(handle)
    with pytest.raises(LLMError, match="HTTP 400: unknown model!!!") as info:
        OpenAIBackend(server.url, "m", retries=0).complete(MESSAGES, 5)
    assert len(str(info.value)) < 600


# ---- 17: redirects never carry the key to another origin ---------------------------------------------------

def _redirect(status: int, location: str | None) -> Callable[[BaseHTTPRequestHandler], None]:
    def handle(h: BaseHTTPRequestHandler) -> None:
        send(h, status, {"moved": True}, {"Location": location} if location is not None else {})
    return handle


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_to_another_port_is_refused_and_gets_no_key(serve, status: int) -> None:
    elsewhere = serve(lambda h: send(h, 200, chat_reply("stolen")))
    server = serve(_redirect(status, f"{elsewhere.url}/chat/completions"))
    backend = OpenAIBackend(server.url, "m", api_key="secret-key", retries=3)
    with pytest.raises(LLMError, match="another origin") as info:
        backend.complete(MESSAGES, 5)
    assert f"{server.url}/chat/completions" in str(info.value) and f"{elsewhere.url}/chat/completions" in str(info.value)
    assert elsewhere.requests == []
    assert len(server.requests) == 1 and server.requests[0]["headers"]["Authorization"] == "Bearer secret-key"


@pytest.mark.parametrize("target", ["http://localhost:{port}/v1/chat/completions",  # host differs
                                    "https://127.0.0.1:{port}/v1/chat/completions",  # scheme differs
                                    "//evil.invalid/steal"])                          # scheme-relative
def test_host_and_scheme_changes_are_other_origins(serve, target: str) -> None:
    holder: list[RawServer] = []
    server = serve(lambda h: _redirect(307, target.format(port=holder[0].port))(h))
    holder.append(server)
    with pytest.raises(LLMError, match="another origin"):
        OpenAIBackend(server.url, "m", api_key="k", retries=0).complete(MESSAGES, 5)
    assert len(server.requests) == 1  # localhost is the same socket: it must not have been asked again


@pytest.mark.parametrize("status", [307, 308])
def test_a_same_origin_redirect_keeps_the_post_and_its_body(serve, status: int) -> None:
    def handle(h: BaseHTTPRequestHandler) -> None:
        if h.path.startswith("/v1/"):
            send(h, status, "", {"Location": "/v2/chat/completions?from=v1"})
        else:
            send(h, 200, chat_reply("moved ok"))

    server = serve(handle)
    assert OpenAIBackend(server.url, "m", api_key="k").complete(MESSAGES, 5) == "moved ok"
    first, second = server.requests
    assert second["path"] == "/v2/chat/completions?from=v1" and second["method"] == "POST"
    assert second["body"] == first["body"] and json.loads(second["body"])["messages"] == MESSAGES
    assert second["headers"]["Authorization"] == "Bearer k"  # same origin: the key may go


@pytest.mark.parametrize("status", [301, 302, 303])
def test_a_redirect_that_would_turn_the_post_into_a_get_is_refused(serve, status: int) -> None:
    server = serve(_redirect(status, "/v2/chat/completions"))
    with pytest.raises(LLMError, match="would turn POST into GET"):
        OpenAIBackend(server.url, "m", retries=2).complete(MESSAGES, 5)
    assert len(server.requests) == 1


def test_a_get_follows_a_same_origin_302(serve) -> None:
    def handle(h: BaseHTTPRequestHandler) -> None:
        if h.path == "/v1/models":
            send(h, 302, "", {"Location": f"http://127.0.0.1:{h.server.server_address[1]}/v1/models/"})
        else:
            send(h, 200, {"data": [{"id": "listed"}]})

    server = serve(handle)
    assert OpenAIBackend(server.url).model == "listed"
    assert [r["path"] for r in server.requests] == ["/v1/models", "/v1/models/"]


def test_a_redirect_loop_stops_at_max_redirects(serve) -> None:
    server = serve(_redirect(307, "/v1/chat/completions"))
    with pytest.raises(LLMError, match="more than max_redirects=3 redirects"):
        OpenAIBackend(server.url, "m", retries=2).complete(MESSAGES, 5)
    assert len(server.requests) == 4
    with pytest.raises(LLMError, match="more than max_redirects=0"):
        OpenAIBackend(server.url, "m", max_redirects=0).complete(MESSAGES, 5)
    assert len(server.requests) == 5


@pytest.mark.parametrize("location, message", [(None, "without a Location"), ("http://127.0.0.1:99999/x", "malformed"),
                                               ("http://[::1/x", "malformed")])
def test_broken_redirects_are_clear_errors(serve, location: str | None, message: str) -> None:
    server = serve(_redirect(307, location))
    with pytest.raises(LLMError, match=message):
        OpenAIBackend(server.url, "m", retries=0).complete(MESSAGES, 5)
