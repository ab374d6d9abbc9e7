"""HTTP/1.1 for the shadow proxy's request path: a server and a keep-alive client pool written on
asyncio protocols and httptools' C parser (llhttp, the parser uvicorn and Node use).

Why not uvicorn + aiohttp, as before: measured with ``scripts/bench_shadow.py`` on this project's
2-core machine, that pair cost 0.77 ms of CPU per proxied request (half of them streamed) against
a target of 0.3 ms, spread over uvicorn's ASGI messages and aiohttp's client objects, per request
and per streamed chunk; servecmp's own code was a few percent. Here one request costs a parse on
the way in, one write to a pooled connection, a parse of the answer, and one write to the client
per packet the primary sends (the chunks of one packet are framed together); the relaying happens
in the protocol callbacks, with no task switch per chunk.

What it implements, and no more: HTTP/1.1 and 1.0 clients with keep-alive, pipelining (answered in
order), ``Expect: 100-continue``, Content-Length and chunked bodies both ways; upstream keep-alive
with one retry when a pooled connection turns out closed before any byte of the answer; a connect
and a between-reads timeout; flow control (a client that reads slowly pauses the primary's
connection, not the proxy's memory); a client that hangs up aborts the primary's request, as it
would have directly. Upgrades (WebSocket) and HTTP/2 are refused: the proxied OpenAI routes use
neither.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import re
import signal
import ssl
import time
import traceback
import urllib.parse
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, Protocol

import httptools

from servecmp._http import KEEPALIVE_S
from servecmp.errors import UserError

log = logging.getLogger("servecmp.shadow")
access_log = logging.getLogger("servecmp.shadow.access")

#: Headers that describe one hop of a connection, never forwarded (RFC 9110 §7.6.1).
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)
#: Not forwarded from the client either: Host names the proxy; the body's length is the proxy's to
#: state (it is sent whole); an Expect was answered by the proxy already.
REQUEST_DROP = HOP_BY_HOP | {b"host", b"content-length", b"expect"}

#: An idle client connection is closed after this long (uvicorn's default).
CLIENT_KEEPALIVE_S = 5.0
#: A client's request body larger than this is refused (413) instead of held in memory: far above
#: any OpenAI request a model can take (vLLM's own limit is its context length).
MAX_REQUEST_BODY = 64 * 1024 * 1024
#: A request line plus headers larger than this is refused (431): llhttp sets no limit of its own.
MAX_REQUEST_HEAD = 64 * 1024
#: After refusing a request it has not read whole, the proxy reads (and drops) what the client still
#: sends for this long before closing: closing on unread data would reset the connection, and the
#: reset can destroy the refusal before the client reads it (a "lingering close", as nginx does).
LINGER_S = 2.0

_PHRASES = {s.value: s.phrase.encode() for s in HTTPStatus}

# How a `Forward` ended (`Forward.run`'s result).
COMPLETE = "complete"  # the whole answer went to the client
DROPPED = "dropped"  # the primary broke off (or went silent) after its head: the client was cut off too
CLIENT_LEFT = "client_left"  # the client hung up first: the primary's request was aborted
UNREACHABLE = "unreachable"  # no answer head (refused, reset, invalid HTTP): the caller answers 502
TIMEOUT = "timeout"  # connect or first-byte timeout: the caller answers 504
_LOST_EARLY = "lost_early"  # closed before any byte: retried once on a fresh connection if pooled


def describe_failure(exc: BaseException) -> str:
    """Exception type and where it was raised, without its message: a message can quote the payload."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames[-4:]))
    return f"{type(exc).__name__} at {where}" if where else type(exc).__name__


#: The answer head's fields the proxy acts on (the rest pass as they are); "\n" also finds them in a
#: head with bare-LF line ends.
_HEAD_FIELDS = re.compile(
    rb"\n(content-type|content-encoding|content-length|transfer-encoding|connection|keep-alive|"
    rb"proxy-[!-9;-~]*|te|trailers?|upgrade)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)
#: Hop-by-hop lines of a head, without and with Transfer-Encoding (kept when the body is relayed raw).
_HOP_LINES = re.compile(rb"\r?\n(?:connection|keep-alive|proxy-[!-9;-~]*|te|trailers?|upgrade)[ \t]*:[^\r\n]*",
                        re.IGNORECASE)
_HOP_LINES_TE = re.compile(
    rb"\r?\n(?:connection|keep-alive|proxy-[!-9;-~]*|te|trailers?|upgrade|transfer-encoding)[ \t]*:[^\r\n]*",
    re.IGNORECASE)


def _head_end(buf: bytes, start: int) -> tuple[int, int]:
    """Where the head starting at ``start`` ends: (end of its last line, start of the body)."""
    i = buf.find(b"\r\n\r\n", start)
    if i >= 0:
        return i, i + 4
    i = buf.find(b"\n\n", start)  # bare LF line ends (llhttp accepts them)
    return (i, i + 2) if i >= 0 else (len(buf), len(buf))


def error_body(message: str, kind: str, status: int) -> bytes:
    """An OpenAI-style JSON error, as the proxy's own answers carry them."""
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": status}}).encode()


def status_line(status: int, reason: bytes = b"") -> bytes:
    return b"HTTP/1.1 %d %s\r\n" % (status, reason or _PHRASES.get(status, b"Unknown"))


# ---- the upstream side -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Origin:
    """Where an upstream listens, and what requests to it carry: Host and a path prefix."""

    host: str
    port: int
    tls: bool
    host_header: bytes
    prefix: bytes

    @classmethod
    def parse(cls, url: str) -> Origin:
        parts = urllib.parse.urlsplit(url)
        tls = parts.scheme == "https"
        host = parts.hostname or "127.0.0.1"
        port = parts.port or (443 if tls else 80)
        shown = f"[{host}]" if ":" in host else host
        host_header = shown if port == (443 if tls else 80) else f"{shown}:{port}"
        return cls(host, port, tls, host_header.encode("idna"), parts.path.rstrip("/").encode())


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to the upstream, carrying one `Forward` at a time."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        #: The exchange its bytes belong to (None while idle in the pool).
        self.sink: Forward | None = None
        self.closed = False
        self.released_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        sink = self.sink
        if sink is None:  # bytes nobody asked for: the connection's framing cannot be trusted
            self.abort()
            return
        sink.received(data)

    def eof_received(self) -> bool:
        return False  # close our side too: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        sink, self.sink = self.sink, None
        if sink is not None:
            sink.upstream_lost()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class UpstreamPool:
    """Keep-alive connections to one upstream, most recently used first (warm, least likely expired)."""

    def __init__(self, url: str, *, connect_timeout_s: float, read_timeout_s: float,
                 keepalive_s: float = KEEPALIVE_S) -> None:
        self.origin = Origin.parse(url)
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.keepalive_s = keepalive_s
        self._ssl = ssl.create_default_context() if self.origin.tls else None
        self._idle: list[UpstreamConnection] = []

    def take_idle(self) -> UpstreamConnection | None:
        """A pooled connection, or None."""
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.closed:
                continue
            if now - conn.released_at > self.keepalive_s:
                conn.abort()
                continue
            return conn
        return None

    async def connect(self) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.connect_timeout_s):
            _, conn = await loop.create_connection(
                lambda: UpstreamConnection(self), self.origin.host, self.origin.port, ssl=self._ssl,
                server_hostname=self.origin.host if self._ssl is not None else None,
            )
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        if not conn.closed:
            conn.released_at = time.monotonic()
            self._idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        with contextlib.suppress(ValueError):
            self._idle.remove(conn)

    def close(self) -> None:
        for conn in self._idle:
            conn.abort()
        self._idle.clear()


@dataclass(slots=True)
class Request:
    """One client request, whole (the proxied bodies are JSON, read before forwarding)."""

    method: bytes
    target: bytes  # as the client sent it: path and query, never re-encoded
    path: str
    #: The client's header lines to forward ("Name: value\r\n" each), hop-by-hop ones left out.
    forward_headers: bytes
    body: bytes
    http11: bool
    keep_alive: bool


class Forward:
    """One client request sent to the primary and its answer passed back to the client.

    Driven by callbacks: the primary's bytes are parsed and written to the client as they arrive
    (`received`), and ``on_end`` is told how it ended. The answer's status line and headers go to
    the client unchanged except hop-by-hop ones. Its body goes raw (the bytes as they came, framing
    included) when the client can read the primary's framing; otherwise (an HTTP/1.0 client and a
    chunked answer, an answer without a length, bare-LF heads) it is decoded and framed again.
    """

    __slots__ = (
        "pool", "client", "request", "loop", "conn", "parser", "capture", "capture_limit",
        "size", "status", "head_buf", "interims", "content_type", "content_encoding", "head_done",
        "received_any", "complete", "reuse", "finished", "client_left", "chunked_out", "close_client",
        "has_length", "chunked_in", "raw", "out", "last_read", "paused", "added_s", "t_end", "on_end",
        "retried", "pooled", "data",
    )

    def __init__(self, pool: UpstreamPool, client: ClientConnection, request: Request,
                 capture_limit: int | None, on_end: Callable[[Forward, str], None]) -> None:
        self.pool = pool
        self.client = client
        self.request = request
        self.loop = client.loop
        #: Called once with how it ended (`COMPLETE`, ...), from the callback that ended it.
        self.on_end = on_end
        self.retried = False
        self.pooled = False
        #: The proxy's own time on the request path (s): up to sending the request, and handling the
        #: packets up to the one that completed the answer's head.
        self.added_s = 0.0
        #: Body bytes kept for the comparison (decoded from the transfer framing), or None.
        self.capture: list[bytes] | None = [] if capture_limit is not None else None
        self.capture_limit = capture_limit or 0
        self.size = 0
        self.status = 0
        self.content_type: bytes | None = None
        self.content_encoding: bytes | None = None
        self.client_left = False
        self.t_end = 0.0
        self.conn: UpstreamConnection | None = None
        self.data = b""
        self._reset()

    def _reset(self) -> None:
        # The parser holds this object for its callbacks: a reference cycle, cut in `_finish` so
        # that a finished exchange (and the answer it kept) is freed at once, not by the collector.
        self.parser: Any = httptools.HttpResponseParser(self)
        #: The answer's bytes until its head is complete.
        self.head_buf = b""
        self.interims = 0
        self.head_done = self.received_any = self.complete = self.reuse = self.finished = False
        self.chunked_out = self.close_client = self.has_length = self.chunked_in = self.raw = False
        self.paused = False
        self.out: list[bytes] = []

    def request_bytes(self) -> bytes:
        req, origin = self.request, self.pool.origin
        parts = [req.method, b" ", origin.prefix, req.target, b" HTTP/1.1\r\nHost: ", origin.host_header, b"\r\n",
                 req.forward_headers]
        if req.body or req.method not in (b"GET", b"HEAD"):
            parts.append(b"Content-Length: %d\r\n" % len(req.body))
        parts.append(b"\r\n")
        parts.append(req.body)
        return b"".join(parts)

    def start(self, t_entry: float) -> None:
        """Send the request (``t_entry``, ``time.perf_counter()``: when the proxy got it, for `added_s`).

        No task per request: a pooled connection is written to at once and the answer's callbacks
        do the rest; only a new connection waits in a task. Measured, a task, a future and its
        wake-up per request were a tenth of the proxy's CPU per request.
        """
        self.data = self.request_bytes()
        self.added_s = time.perf_counter() - t_entry
        self._acquire(fresh=False)

    def _acquire(self, *, fresh: bool) -> None:
        conn = None if fresh else self.pool.take_idle()
        if conn is not None:
            self._begin(conn, pooled=True)
        else:
            self.client.server.spawn(self._connect())

    async def _connect(self) -> None:
        try:
            conn = await self.pool.connect()
        except TimeoutError:
            self._end(TIMEOUT)
            return
        except OSError:
            self._end(UNREACHABLE)
            return
        except asyncio.CancelledError:
            self._end(CLIENT_LEFT)  # shutting down
            raise
        if self.client_left:
            self.pool.release(conn)
            self._end(CLIENT_LEFT)
            return
        self._begin(conn, pooled=False)

    def _begin(self, conn: UpstreamConnection, *, pooled: bool) -> None:
        self.pooled = pooled
        self.conn = conn
        conn.sink = self
        assert conn.transport is not None
        conn.transport.write(self.data)
        self.last_read = self.loop.time()
        self.client.server.forwards.add(self)  # the read timeout: `HttpServer._sweep`

    # -- the primary's bytes

    def received(self, data: bytes) -> None:
        self.received_any = True
        self.last_read = self.loop.time()
        if self.head_done:  # the body: in raw mode the bytes go on as they came, framing and all
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                self.reuse = False
                self._drop()
                return
            if self.raw:
                if not self.client_left:
                    self.client.write(data)
            elif self.out:
                self._flush()
            if self.complete:
                self._finish(COMPLETE)
            return
        t0 = time.perf_counter()
        self.head_buf += data
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.reuse = False
            if not self.head_done:
                self._finish(UNREACHABLE)
                return
            self._flush()
            self._drop()
            return
        if self.head_done:
            self.head_buf = b""
            self._flush()
        self.added_s += time.perf_counter() - t0
        if self.complete:
            self._finish(COMPLETE)

    def _flush(self) -> None:
        if self.out:
            if not self.client_left:
                self.client.write(b"".join(self.out))
            self.out.clear()

    # httptools callbacks (no on_header: the head is read from its bytes, see on_headers_complete)

    def on_message_begin(self) -> None:
        if self.complete:  # bytes after the answer's end: this connection is not reused
            self.reuse = False

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:  # an interim answer (e.g. 100): not passed on, the final one follows
            self.interims += 1
            return
        self.status = self.client.status = status
        self.head_done = True
        self.reuse = self.parser.should_keep_alive()
        # The answer's head as the primary wrote it (after any interim ones).
        buf, start = self.head_buf, 0
        for _ in range(self.interims):
            start = _head_end(buf, start)[1]
        end, body_at = _head_end(buf, start)
        head = buf[start:end]
        hop = te = False
        for name, value in _HEAD_FIELDS.findall(head):
            low = name.lower()
            if low == b"content-type":
                self.content_type = value.strip()
            elif low == b"content-encoding":
                self.content_encoding = value.strip()
            elif low == b"content-length":
                self.has_length = True
            elif low == b"transfer-encoding":
                te = True
                self.chunked_in = value.strip().lower().endswith(b"chunked")
            else:
                hop = True
        req = self.request
        bodyless = req.method == b"HEAD" or status in (204, 304)
        # Raw: the body's bytes go to the client exactly as they arrive (one write per packet, no
        # re-framing), when the client can read the primary's framing as it is.
        self.raw = (not self.interims and body_at - end == 4
                    and (bodyless or (self.has_length and not te) or (self.chunked_in and req.http11)))
        if self.raw:
            if hop:
                head = _HOP_LINES.sub(b"", head)
        else:
            if hop or te:
                head = _HOP_LINES_TE.sub(b"", head)
            if not bodyless and not self.has_length:
                if req.http11:
                    self.chunked_out = True
                    head += b"\r\ntransfer-encoding: chunked"
                else:
                    self.close_client = True  # an HTTP/1.0 client reads to the end of the connection
        if not req.keep_alive or self.close_client:
            self.close_client = True
            head += b"\r\nconnection: close"
        self.out.append(head + b"\r\n\r\n")
        if self.raw:
            self.out.append(buf[body_at:])  # this packet's part of the body, as it came
        if req.method == b"HEAD":  # the parser cannot know a HEAD answer has no body
            self.complete, self.reuse = True, False

    def on_body(self, body: bytes) -> None:
        if self.capture is not None and self.size <= self.capture_limit:
            self.size += len(body)
            if self.size > self.capture_limit:
                self.capture.clear()  # too large to compare: freed now rather than at the end
            else:
                self.capture.append(body)
        if self.raw:
            return
        if self.chunked_out:
            self.out.append(b"%x\r\n%s\r\n" % (len(body), body))
        else:
            self.out.append(body)

    def on_message_complete(self) -> None:
        if not self.head_done:  # the end of an interim answer
            return
        if self.chunked_out:
            self.out.append(b"0\r\n\r\n")
        self.complete = True

    # -- endings

    def upstream_lost(self) -> None:
        """The primary's connection closed (connection_lost)."""
        if self.finished:
            return
        if not self.received_any:
            self._finish(_LOST_EARLY)
        elif not self.head_done:
            self._finish(UNREACHABLE)
        elif not self.has_length and not self.chunked_in and not self.complete:
            # A body without a length ends with the connection.
            if self.chunked_out:
                self.out.append(b"0\r\n\r\n")
            self.complete = True
            self._flush()
            self._finish(COMPLETE)
        else:
            self._drop()

    def check_read(self, now: float) -> None:
        """The between-reads timeout (called by the server's sweep, a few times a second)."""
        if self.finished or self.paused or now < self.last_read + self.pool.read_timeout_s:
            return
        if not self.head_done:
            self._finish(TIMEOUT)
        else:
            self._drop()  # silent mid-body: what aiohttp's sock_read did, a broken answer

    def _drop(self) -> None:
        """The answer broke off after its head: what arrived has gone out; the client is cut off the same way."""
        self._finish(DROPPED)
        self.client.abort()

    def client_lost(self) -> None:
        """The client hung up: abort the primary's request unless its answer is already whole."""
        self.client_left = True
        if self.conn is not None and not self.finished and not self.complete:
            self._finish(CLIENT_LEFT)

    def pause(self) -> None:
        if self.conn is not None and not self.finished and self.conn.transport is not None:
            self.paused = True
            self.conn.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.conn is not None and not self.finished and self.conn.transport is not None:
            self.paused = False
            self.last_read = self.loop.time()
            self.conn.transport.resume_reading()

    def _finish(self, outcome: str) -> None:
        if self.finished:
            return
        self.finished = True
        self.parser = None
        self.t_end = time.perf_counter()
        self.client.server.forwards.discard(self)
        conn = self.conn
        if conn is not None:
            conn.sink = None
            if outcome == COMPLETE and self.reuse:
                self.pool.release(conn)
            else:
                conn.abort()  # unfinished (or unreusable): closing it aborts the primary's request
        if outcome == _LOST_EARLY:
            if self.pooled and not self.retried and not self.client_left:
                # A keep-alive connection the primary had closed: not the client's error; once more
                # on a new connection.
                self.retried = True
                self._reset()
                self._acquire(fresh=True)
                return
            outcome = UNREACHABLE
        self._end(outcome)

    def _end(self, outcome: str) -> None:
        self.finished = True
        self.on_end(self, outcome)


# ---- the client side -------------------------------------------------------------------------------

#: Answers a request: at once (``conn.respond``) or later; either way it calls ``conn.done(request)``
#: once, when the answer has gone out (or the exchange ended otherwise).
Handler = Callable[["ClientConnection", Request], None]


class ClientConnection(asyncio.Protocol):
    """One client's connection: requests parsed here are answered by the handler, in order."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        # A reference cycle with the parser (its callbacks are this object): cut at connection_lost.
        self.parser: Any = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: list[bytes] = []
        self._size = self._head_size = 0
        self._in_head = False
        self._expect = False
        #: Refused and lingering: what still arrives is dropped.
        self._discard = False
        self._body: list[bytes] = []
        self._queue: collections.deque[Request] = collections.deque()
        self.busy = False
        self.gone = False
        self.closing = False
        #: The forward in progress: told about a hang-up and about flow control.
        self.current: Forward | None = None
        #: Whether the current request's answer has started (then an error can only cut the connection).
        self.started = False
        #: The current answer's status (for the access log).
        self.status = 0
        #: When the connection last received bytes or finished an answer: the sweep closes it after
        #: `HttpServer.keepalive_s` of neither (between requests, or a request that stopped arriving).
        self.idle_since = 0.0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.add(self)
        self.idle_since = self.loop.time()

    def data_received(self, data: bytes) -> None:
        if self._discard:
            return
        # A request still arriving is not idle (a slow upload is not cut at the keep-alive timeout).
        self.idle_since = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400, "upgrades are not supported by the shadow proxy")
        except httptools.HttpParserError:
            if self._size > self.server.max_body:
                self._refuse(413, "request body over the shadow proxy's limit")
            else:
                self._refuse(400, "invalid HTTP request")
            return
        if self._in_head:
            # A head still arriving (llhttp buffers it without a limit of its own): counted by the
            # packets that carried it, so one check per packet, none per header.
            self._head_size += len(data)
            if self._head_size > MAX_REQUEST_HEAD:
                self._in_head = False
                if self.busy:
                    self.abort()  # a pipelined request behind one in progress: nothing to answer it on
                else:
                    self._refuse(431, "request headers over the shadow proxy's limit")

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone = True
        self.parser = None
        self.server.connections.discard(self)
        self._queue.clear()
        if self.current is not None:
            self.current.client_lost()

    def pause_writing(self) -> None:
        if self.current is not None:
            self.current.pause()

    def resume_writing(self) -> None:
        if self.current is not None:
            self.current.resume()

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._body = []
        self._size = self._head_size = 0
        self._in_head = True
        self._expect = False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # Sorted here, once: what is forwarded is kept as it will be written.
        low = name.lower()
        if low in REQUEST_DROP:
            if low == b"expect" and value.lower() == b"100-continue":
                self._expect = True
        else:
            self._headers += (name, b": ", value, b"\r\n")

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._expect and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self.server.max_body:
            # Stops the parser: a body this large is refused (413) rather than held in memory.
            raise ValueError("request body too large")
        self._body.append(body)

    def on_message_complete(self) -> None:
        target = self._url
        path = target.split(b"?", 1)[0]
        if b"%" in path:
            path = urllib.parse.unquote_to_bytes(path)
        request = Request(
            method=self.parser.get_method(),
            target=target,
            path=path.decode("latin-1"),
            forward_headers=b"".join(self._headers),
            body=b"".join(self._body),
            http11=self.parser.get_http_version() == "1.1",
            keep_alive=self.parser.should_keep_alive(),
        )
        if self.busy:  # pipelined: answered after the one in progress; read no more meanwhile
            self._queue.append(request)
            if self.transport is not None:
                self.transport.pause_reading()
        else:
            self._start(request)

    # requests

    def _start(self, request: Request) -> None:
        self.busy = True
        self.started = False
        self.status = 0
        try:
            self.server.handler(self, request)
        except Exception as exc:
            log.error("shadow: request failed: %s", describe_failure(exc))
            if not self.started:
                self.respond(500, error_body("internal error in the shadow proxy", "internal_error", 500),
                             close=True)
            else:
                self.abort()
            self.done(request)

    def done(self, request: Request) -> None:
        """The answer to ``request`` is out (or the exchange is over): on to the next one, or close."""
        if not self.busy:
            return
        self.busy = False
        self.current = None
        if self.server.access_log:
            access_log.info('%s "%s %s HTTP/%s" %s', self._peer(), request.method.decode("latin-1"),
                            request.path, "1.1" if request.http11 else "1.0", self.status or "-")
        if self.gone or self.transport is None:
            return
        if not request.keep_alive or self.closing:
            self.transport.close()
            return
        self.idle_since = self.loop.time()
        if self._queue:
            self.transport.resume_reading()
            self._start(self._queue.popleft())

    def _peer(self) -> str:
        peer = self.transport.get_extra_info("peername") if self.transport is not None else None
        return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "-"

    def _refuse(self, status: int, message: str) -> None:
        if not self.busy:
            kind = "request_too_large" if status in (413, 431) else "bad_request"
            self.respond(status, error_body(message, kind, status), close=True)
        elif self.transport is not None:
            self.closing = True  # garbage after a request in progress: answer it, then close

    # writing

    def write(self, data: bytes) -> None:
        self.started = True
        if self.transport is not None and not self.gone:
            self.transport.write(data)

    def respond(self, status: int, body: bytes, *, headers: tuple[tuple[bytes, bytes], ...] = (),
                content_type: bytes = b"application/json", close: bool = False, head: bool = False) -> None:
        """A whole answer made by the proxy itself (errors, /metrics)."""
        if close:
            self.closing = True
        self.status = status
        lines = [status_line(status), b"content-type: %s\r\ncontent-length: %d\r\n" % (content_type, len(body))]
        lines += [b"%s: %s\r\n" % h for h in headers]
        if close:
            lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        if not head:
            lines.append(body)
        self.write(b"".join(lines))
        if close and self.transport is not None and not self.busy:
            self._linger()

    def _linger(self) -> None:
        """Close after a refusal: our side at once (the client reads the answer, then the end), the
        connection after `LINGER_S` of dropping what the client still sends."""
        self._discard = True
        if self.transport is None:
            return
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)

    def abort(self) -> None:
        """Cut the connection (what a client sees when the primary's answer broke off)."""
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def shutdown(self) -> None:
        """Close when idle; a request in progress finishes first."""
        self.closing = True
        if not self.busy and self.transport is not None:
            self.transport.close()


class HttpServer:
    """Listens and hands each request to ``handler``; `shutdown` lets requests in progress finish.

    Timeouts are checked by one sweep a few times a second (`SWEEP_S`) rather than a timer per
    request and per connection: arming and cancelling two timers per request was measurable.
    """

    SWEEP_S = 0.25

    def __init__(self, handler: Handler, *, keepalive_s: float = CLIENT_KEEPALIVE_S,
                 access_log: bool = False, max_body: int = MAX_REQUEST_BODY) -> None:
        self.handler = handler
        self.max_body = max_body
        self.keepalive_s = keepalive_s
        self.access_log = access_log
        self.connections: set[ClientConnection] = set()
        #: Exchanges waiting on the primary (for the read timeout).
        self.forwards: set[Forward] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    async def start(self, *, host: str | None = None, port: int | None = None, sock: Any = None) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: ClientConnection(self), host=host, port=port, sock=sock, backlog=2048,
            reuse_address=True if sock is None else None,
        )
        self._sweeper = loop.call_later(self.SWEEP_S, self._sweep)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as a task the server keeps (and cancels at shutdown)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for fwd in list(self.forwards):
            fwd.check_read(now)
        idle_before = now - self.keepalive_s
        for conn in list(self.connections):
            if not conn.busy and conn.idle_since < idle_before and conn.transport is not None:
                conn.transport.close()
        self._sweeper = loop.call_later(self.SWEEP_S, self._sweep)

    async def shutdown(self, timeout_s: float) -> None:
        """Stop accepting, close idle connections, wait up to ``timeout_s`` for the others, cut the rest."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.shutdown()
        deadline = time.monotonic() + timeout_s
        try:
            while self.connections and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        finally:
            for conn in list(self.connections):
                conn.abort()
            for task in list(self._tasks):
                task.cancel()
            if self._sweeper is not None:
                self._sweeper.cancel()
        await asyncio.sleep(0)  # let the aborted connections' connection_lost run


def answer_locally(conn: ClientConnection, req: Request, routes: Mapping[str, bytes], *, what: str,
                   metrics: Callable[[], tuple[bytes, str]] | None) -> bool:
    """Answer here what an app does not pass on: ``GET /metrics`` (``metrics()`` gives the body and
    its content type; None: no such route), 404 for a path not in ``routes`` (path -> method; the
    message says it is not ``what``), 405 with Allow for a wrong method (HEAD goes where GET does).
    True when it answered (the request is then done)."""
    path, method = req.path, req.method
    allowed = routes.get(path)
    if allowed is not None and (method == allowed or (allowed == b"GET" and method == b"HEAD")):
        return False
    if allowed is not None:
        allow = allowed + (b", HEAD" if allowed == b"GET" else b"")
        conn.respond(405, error_body(f"{method.decode('latin-1')} is not allowed on {path}", "method_not_allowed",
                                     405), headers=((b"allow", allow),))
    elif path == "/metrics" and method in (b"GET", b"HEAD") and metrics is not None:
        data, content_type = metrics()
        conn.respond(200, data, content_type=content_type.encode(), head=method == b"HEAD")
    else:
        conn.respond(404, error_body(f"{path} is not {what} by servecmp shadow", "not_found", 404),
                     head=method == b"HEAD")
    conn.done(req)
    return True


# ---- running an app ----------------------------------------------------------------------------------

#: How long a stopping server lets requests in progress finish (a second Ctrl-C cuts them at once).
SHUTDOWN_GRACE_S = 30.0


class App(Protocol):
    """What `AppServer` serves: `shadow serve`'s proxy and `shadow collect`'s receiver."""

    def handle(self, conn: ClientConnection, req: Request) -> None: ...

    async def startup(self) -> None: ...

    async def shutdown(self) -> None: ...


class AppServer:
    """An `App` listening: start, stop (requests in progress finish, then the app shuts down)."""

    def __init__(self, app: App, *, access_log: bool = False, keepalive_s: float = CLIENT_KEEPALIVE_S,
                 max_body: int = MAX_REQUEST_BODY) -> None:
        self.app = app
        self.http = HttpServer(app.handle, access_log=access_log, keepalive_s=keepalive_s, max_body=max_body)

    async def start(self, *, host: str | None = None, port: int | None = None, sock: Any = None) -> None:
        await self.app.startup()
        try:
            await self.http.start(host=host, port=port, sock=sock)
        except OSError as exc:
            await self.app.shutdown()
            raise UserError(f"shadow: cannot listen on {host}:{port} ({exc.strerror or exc})") from None

    async def stop(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        await self.http.shutdown(grace_s)
        await self.app.shutdown()


def _loop_factory() -> Any:
    """uvloop when installed (uvicorn's default too): its transports cost less CPU per request."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_app(app: App, *, host: str, port: int, access_log: bool = False) -> None:
    """Serve until SIGINT or SIGTERM: then requests in progress get `SHUTDOWN_GRACE_S` to finish and
    the app shuts down (the mirror drains); a second signal cuts the requests at once."""
    if access_log:
        _log_access()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        server = AppServer(app, access_log=access_log)
        stop_task: asyncio.Task[None] | None = None

        def on_signal() -> None:
            if not stopping.is_set():
                stopping.set()
            elif stop_task is not None:
                stop_task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        await server.start(host=host, port=port)
        await stopping.wait()
        stop_task = asyncio.create_task(server.http.shutdown(SHUTDOWN_GRACE_S))
        with contextlib.suppress(asyncio.CancelledError):
            await stop_task
        for c in list(server.http.connections):
            c.abort()
        await app.shutdown()

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(main())


def _log_access() -> None:
    """--access-log: one line per request (method, path, version; never a body) on stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
    access_log.propagate = False
