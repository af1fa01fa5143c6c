"""One bounded HTTP attempt for the LLM backend: a total deadline, a reply-size cap, same-origin redirects only.

Stdlib ``http.client`` rather than ``urllib``, because urllib's ``timeout`` bounds each socket read (a server
trickling one byte at a time holds a request forever), reads replies of any size into memory, and forwards
every header, ``Authorization`` included, to whatever host a redirect names. Environment proxies
(``HTTP_PROXY`` ...) are not used: the backend talks to the server named in its URL.

The deadline covers one attempt: connecting (TCP and TLS handshake), sending, the status line and headers,
the whole body, and every redirect hop. Each step's socket timeout is the time left, and a watchdog timer shuts the socket
down when the deadline passes, so even a read that keeps receiving single bytes returns. Only name
resolution (``getaddrinfo``) cannot be interrupted.
"""
from __future__ import annotations

import http.client
import logging
import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from retrieval.errors import LLMError

logger = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
KEEP_METHOD_STATUS = frozenset({307, 308})  # the only redirects that keep a POST a POST (RFC 9110 15.4)
CHUNK = 64 * 1024
ERROR_DETAIL_BYTES = 1024  # read no more than this of an error reply: it only goes into a message


class Retryable(Exception):
    """A failure worth another attempt (timeout, connection error, HTTP 408/429/5xx); the message says which."""


@dataclass(frozen=True)
class Limits:
    """What bounds one attempt: total seconds, reply bytes, redirect hops."""

    timeout: float
    max_reply_bytes: int
    max_redirects: int


def origin(url: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` with the scheme's default port filled in; ValueError for a bad port."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, (parts.hostname or "").lower(), port


class _Deadline:
    """A point on the monotonic clock; ``left()`` raises TimeoutError once it has passed."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        remaining = self.end - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no complete reply within the {self.seconds:g} s timeout")
        return remaining


class _Watchdog:
    """Shuts the watched socket down at the deadline, so a read blocked on a trickling server returns."""

    def __init__(self, deadline: _Deadline) -> None:
        self.fired = threading.Event()
        self.sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(0.0, deadline.end - time.monotonic()), self._fire)
        self._timer.daemon = True

    def _fire(self) -> None:
        with self._lock:
            self.fired.set()
            if self.sock is not None:
                try:  # the plain-socket shutdown, also under TLS: it wakes the reader without touching SSL state
                    socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
                except OSError:
                    pass

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self.sock = sock
        if self.fired.is_set():
            self._fire()

    def __enter__(self) -> "_Watchdog":
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


def _connect(url: str, deadline: _Deadline, watchdog: _Watchdog) -> tuple[http.client.HTTPConnection, str]:
    """An open connection to ``url``'s origin, watched by ``watchdog``, and the request target (path and query).

    The socket timeout bounds the TCP connect, and CPython bounds a whole TLS handshake by it too."""
    parts = urlsplit(url)
    cls = http.client.HTTPSConnection if parts.scheme.lower() == "https" else http.client.HTTPConnection
    conn = cls(parts.hostname or "", parts.port, timeout=deadline.left())
    conn.connect()
    watchdog.watch(conn.sock)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return conn, target


def _read_body(response: http.client.HTTPResponse, sock: socket.socket, deadline: _Deadline, cap: int,
               url: str, truncate: bool = False) -> bytes:
    """The reply body, at most ``cap`` bytes: more is an LLMError (or, with ``truncate``, cut off)."""
    declared = response.getheader("Content-Length", "")
    if not truncate and declared.strip().isdigit() and int(declared) > cap:
        raise LLMError(f"{url}: reply of {int(declared)} bytes (Content-Length) is over max_reply_bytes={cap}")
    parts: list[bytes] = []
    total = 0
    while True:
        sock.settimeout(deadline.left())
        chunk = response.read1(CHUNK)
        if not chunk:
            break
        total += len(chunk)
        if total > cap:
            if truncate:
                parts.append(chunk[: len(chunk) - (total - cap)])
                return b"".join(parts)
            raise LLMError(f"{url}: reply is over max_reply_bytes={cap} (stopped reading at {total} bytes)")
        parts.append(chunk)
    if response.length:  # the server closed the connection before the declared length
        raise ConnectionError(f"reply cut off after {total} bytes, {response.length} short of its Content-Length")
    return b"".join(parts)


def _exchange(url: str, method: str, body: bytes | None, headers: dict[str, str], deadline: _Deadline,
              cap: int) -> tuple[int, str | None, bytes]:
    """One request/response: ``(status, Location header, body)``; transport failures become Retryable."""
    conn: http.client.HTTPConnection | None = None
    with _Watchdog(deadline) as watchdog:
        try:
            conn, target = _connect(url, deadline, watchdog)
            sock = conn.sock
            sock.settimeout(deadline.left())
            conn.request(method, target, body=body, headers=headers)
            sock.settimeout(deadline.left())
            response = conn.getresponse()
            status, location = response.status, response.getheader("Location")
            if status in REDIRECT_STATUS:
                return status, location, b""
            ok = 200 <= status < 300
            data = _read_body(response, sock, deadline, cap if ok else ERROR_DETAIL_BYTES, url, truncate=not ok)
            if watchdog.fired.is_set():  # a reply read "to the end" may have ended only because the watchdog cut it
                raise TimeoutError("deadline passed")
            return status, location, data
        except (OSError, http.client.HTTPException) as exc:
            if watchdog.fired.is_set() or isinstance(exc, TimeoutError):  # socket timeouts are the time left
                raise Retryable(f"TimeoutError: no complete reply within the {deadline.seconds:g} s timeout") from None
            raise Retryable(f"{type(exc).__name__}: {exc}") from None
        finally:
            if conn is not None:
                conn.close()


def redirect_target(url: str, location: str | None, method: str, status: int) -> str:
    """Where a redirect may go: same origin only, and never turning a POST into a GET; else LLMError."""
    if not location:
        raise LLMError(f"{url}: HTTP {status} redirect without a Location header")
    try:
        target = urljoin(url, location.strip())
        same = origin(target) == origin(url)
    except ValueError:
        raise LLMError(f"{url}: HTTP {status} redirect to a malformed URL {location!r}") from None
    if not same:
        raise LLMError(f"{url}: HTTP {status} redirect to another origin {target!r} refused "
                       "(the API key is never sent elsewhere); use that URL as base_url if you trust it")
    if method != "GET" and status not in KEEP_METHOD_STATUS:
        raise LLMError(f"{url}: HTTP {status} redirect to {target!r} would turn {method} into GET and drop the "
                       "request; use that URL as base_url")
    return target


def http_call(url: str, method: str, body: bytes | None, headers: dict[str, str], limits: Limits) -> bytes:
    """The body of a 2xx reply to one attempt, redirects included, within ``limits``.

    Raises Retryable for timeouts, connection errors and HTTP 408/429/5xx; LLMError for everything a
    retry cannot fix (other HTTP errors, an oversized reply, a refused or endless redirect).
    """
    deadline = _Deadline(limits.timeout)
    current = url
    for _ in range(limits.max_redirects + 1):
        status, location, data = _exchange(current, method, body, headers, deadline, limits.max_reply_bytes)
        if status in REDIRECT_STATUS:
            nxt = redirect_target(current, location, method, status)
            logger.debug("%s: HTTP %d redirect to %s", current, status, nxt)
            current = nxt
            continue
        if 200 <= status < 300:
            return data
        detail = data[:300].decode("utf-8", "replace")
        if status in RETRY_STATUS:
            raise Retryable(f"HTTP {status}: {detail}")
        raise LLMError(f"{current}: HTTP {status}: {detail}")
    raise LLMError(f"{url}: more than max_redirects={limits.max_redirects} redirects (the last to {current})")


def backoff_delay(backoff: float, attempt: int, cap: float = 30.0) -> float:
    """Seconds to wait before retry ``attempt`` (1-based): exponential, at most ``cap``."""
    return min(cap, backoff * 2.0 ** min(attempt - 1, 60))
