"""A hostile HTTP server on 127.0.0.1 whose replies a test writes byte by byte (trickles, floods, redirects).

Every loop a handler runs is bounded, and a write to a client that has gone away ends the handler, so a
server thread always stops by itself.
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_REQUESTS = 50  # past this the server answers 410, so no client loop can run away


class RawServer:
    """Calls ``handle(handler)`` for each request; the handler writes the raw reply to ``handler.wfile``."""

    def __init__(self, handle: Callable[[BaseHTTPRequestHandler], None]) -> None:
        self.handle = handle
        self.requests: list[dict[str, Any]] = []
        self.sent = 0  # bytes the streaming helpers managed to write
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                server.requests.append({"method": self.command, "path": self.path,
                                        "headers": dict(self.headers), "body": body})
                self.close_connection = True
                try:
                    if len(server.requests) > MAX_REQUESTS:
                        send(self, 410, {"error": "request budget spent"})
                    else:
                        server.handle(self)
                except (BrokenPipeError, ConnectionResetError, TimeoutError):
                    pass

            do_GET = _serve
            do_POST = _serve

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def chat_reply(text: str, top: dict[str, float] | None = None) -> dict[str, Any]:
    """An OpenAI chat completion with one choice, and ``top_logprobs`` for its first token when given."""
    choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text}}
    if top is not None:
        choice["logprobs"] = {"content": [{"token": text, "logprob": max(top.values()),
                                           "top_logprobs": [{"token": t, "logprob": v} for t, v in top.items()]}]}
    return {"choices": [choice]}


def send(handler: BaseHTTPRequestHandler, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
    """A complete reply with Content-Length; ``body`` is bytes, text, or a JSON value."""
    raw = body if isinstance(body, bytes) else body.encode() if isinstance(body, str) else json.dumps(body).encode()
    handler.send_response(status)
    for key, value in {"Content-Type": "application/json", "Content-Length": str(len(raw)), **(headers or {})}.items():
        handler.send_header(key, value)
    handler.end_headers()
    handler.wfile.write(raw)


def trickle(handler: BaseHTTPRequestHandler, data: bytes, pause: float = 0.05, limit: int = 400) -> None:
    """Write ``data`` one byte every ``pause`` seconds, at most ``limit`` bytes."""
    for byte in data[:limit]:
        handler.wfile.write(bytes([byte]))
        handler.wfile.flush()
        time.sleep(pause)


def flood(server: RawServer, handler: BaseHTTPRequestHandler, total: int, framing: str) -> None:
    """Stream ``total`` bytes of JSON-looking filler as ``framing`` (``close``: no length, ``chunked``)."""
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    if framing == "chunked":
        handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    block = b" " * 65536
    for _ in range(total // len(block)):
        frame = b"%x\r\n%s\r\n" % (len(block), block) if framing == "chunked" else block
        handler.wfile.write(frame)
        server.sent += len(block)
    if framing == "chunked":
        handler.wfile.write(b"0\r\n\r\n")


def http_message(status: int, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    """A whole HTTP/1.1 reply as bytes, for handlers that trickle it."""
    lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", "Connection: close",
             *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body
