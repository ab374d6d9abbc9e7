"""The HTTP transports under `servecmp.endpoints.EndpointClient`: one request in, (status, body) out.

`Http1Pool` is a minimal keep-alive HTTP/1.1 client over asyncio, for plain ``http://`` endpoints
reached without a proxy (a local or in-cluster vLLM: the MCQ hot path, thousands of small requests).
Per request it writes one pre-built header block plus the JSON body and parses one response
(Content-Length, chunked, or read-until-close); that is a fraction of the CPU of httpx
(~0.4 ms per request on this project's 2-core machine) or of the openai SDK, which also builds
pydantic objects for every top logprob (~1.4 ms per request).

`HttpxTransport` serves everything else (``https://``, endpoints behind a proxy named by the
environment): httpx does TLS and proxies, and the CPU per request matters little there.

Both raise the same three exceptions, which the client's retry loop classifies:
`RequestTimeout`, `ConnectFailed` (no connection: refused, unknown host, ...) and
`ConnectionDropped` (the connection broke or the server closed it before a whole response; also a
response that is not HTTP). The underlying error, when there is one, is the ``__cause__``.

Not aiohttp: after a dropped connection it kept reusing the dead socket, and it reports refused
connections as timeouts (tests/test_client.py checks both on every transport).
"""

from __future__ import annotations

import asyncio
import contextlib
import select
from typing import Any, Protocol
from urllib.parse import urlsplit

#: A response head larger than this is not an OpenAI-compatible server's.
_MAX_HEAD = 64 * 1024


class TransportError(Exception):
    """The request got no complete HTTP response."""


class RequestTimeout(TransportError):
    """No complete response within the request's timeout (connecting included)."""


class ConnectFailed(TransportError):
    """No connection could be made (refused, unreachable, unknown host, TLS failure, ...)."""


class ConnectionDropped(TransportError):
    """The connection broke, or the server closed it, before a whole response arrived."""


class Transport(Protocol):
    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """`path` is relative to the base URL (e.g. ``/completions``); returns (status, body)."""
        ...

    async def aclose(self) -> None: ...


def make_transport(base_url: str, headers: dict[str, str], timeout_s: float) -> Transport:
    """`Http1Pool` for plain http without a proxy, else `HttpxTransport`."""
    parts = urlsplit(base_url)
    if parts.scheme == "http" and not _proxied(base_url):
        return Http1Pool(base_url, headers, timeout_s)
    return HttpxTransport(base_url, headers, timeout_s)


def _proxied(url: str) -> bool:
    """Whether the environment routes `url` through a proxy (HTTP_PROXY/ALL_PROXY and NO_PROXY), as
    httpx would: those endpoints go through httpx, which speaks to proxies."""
    import urllib.request  # noqa: PLC0415 - only when a client is made, never on import

    proxies = urllib.request.getproxies()
    if not (proxies.get("http") or proxies.get("all")):
        return False
    host = urlsplit(url).netloc
    return not urllib.request.proxy_bypass(host)


class _Connection(asyncio.Protocol):
    """One keep-alive connection; at most one request in flight (no pipelining)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.closed = False
        self.reusable = True
        self.loop: asyncio.AbstractEventLoop | None = None
        self._reset_response()

    def _reset_response(self) -> None:
        self.status = 0
        self.body_start = -1  # where the body starts in buf, once the head is parsed
        self.length = -1  # Content-Length, or -1
        self.chunked = False
        self.until_close = False  # neither: the body ends when the server closes the connection

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.loop = asyncio.get_running_loop()

    def data_received(self, data: bytes) -> None:
        if self.waiter is None or self.waiter.done():
            # Bytes nobody asked for: this connection is in an unknown state.
            self.close()
            return
        self.buf += data
        try:
            self._parse()
        except ConnectionDropped as exc:
            self._fail(exc)

    def eof_received(self) -> bool:
        self._closed_by_peer(None)
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed_by_peer(exc)

    # -- requests --------------------------------------------------------------------------------

    def start(self, payload: bytes) -> asyncio.Future[tuple[int, bytes]]:
        assert self.transport is not None
        self.buf.clear()
        self._reset_response()
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(payload)
        return self.waiter

    def usable(self) -> bool:
        return self.reusable and not self.closed and self.transport is not None and not self.transport.is_closing()

    def idle_and_open(self) -> bool:
        """Whether a pooled connection can carry the next request. Besides what the event loop has
        seen, asks the socket: a server that answered and then closed (uvicorn after a 500) has its
        FIN waiting there before the loop reads it, and writing to it would fail the request."""
        if not self.usable():
            return False
        assert self.transport is not None
        sock = self.transport.get_extra_info("socket")
        if sock is None:
            return True
        try:
            poller = select.poll()
            poller.register(sock.fileno(), select.POLLIN)
            return not poller.poll(0)  # readable while idle: EOF, or bytes nobody asked for
        except (OSError, ValueError):
            return False

    def close(self) -> None:
        self.closed = True
        self.reusable = False
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()

    def _closed_by_peer(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if self.until_close and self.body_start >= 0:
            self._finish(bytes(self.buf[self.body_start :]))
            return
        dropped = ConnectionDropped("server closed the connection before a complete response")
        dropped.__cause__ = exc
        waiter.set_exception(dropped)

    def _fail(self, exc: BaseException) -> None:
        self.reusable = False
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def _finish(self, body: bytes) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((self.status, body))

    # -- parsing ---------------------------------------------------------------------------------

    def _parse(self) -> None:
        buf = self.buf
        while self.body_start < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEAD:
                    raise ConnectionDropped("response head too large")
                return
            self._parse_head(bytes(buf[:end]))
            if 100 <= self.status < 200:  # an interim response (100 Continue): the real one follows
                del buf[: end + 4]
                self._reset_response()
                continue
            self.body_start = end + 4
        if self.length >= 0:
            stop = self.body_start + self.length
            if len(buf) >= stop:
                if len(buf) > stop:
                    self.reusable = False
                self._finish(bytes(buf[self.body_start : stop]))
        elif self.chunked:
            body = self._dechunk()
            if body is not None:
                self._finish(body)

    def _parse_head(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        status_line = lines[0].split(" ", 2)
        if len(status_line) < 2 or not status_line[0].startswith("HTTP/1.") or not status_line[1].isdigit():
            raise ConnectionDropped(f"not an HTTP/1.x response: {lines[0][:80]!r}")
        self.status = int(status_line[1])
        if status_line[0] == "HTTP/1.0":
            self.reusable = False
        length = -1
        chunked = False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                try:
                    length = int(value.strip())
                except ValueError:
                    raise ConnectionDropped(f"bad Content-Length {value.strip()!r}") from None
            elif name == "transfer-encoding":
                chunked = "chunked" in value.lower()
            elif name == "connection" and "close" in value.lower():
                self.reusable = False
        if self.status in (204, 304):
            length = 0
        if chunked:
            self.chunked = True
        elif length >= 0:
            self.length = length
        else:
            self.until_close = True
            self.reusable = False

    def _dechunk(self) -> bytes | None:
        """The whole body once the last chunk is in, else None."""
        buf = self.buf
        pos = self.body_start
        parts: list[bytes] = []
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            size_text = bytes(buf[pos:eol]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ConnectionDropped(f"bad chunk size {size_text[:20]!r}") from None
            if size == 0:
                # Optional trailer lines, then an empty line.
                pos = eol + 2
                while True:
                    eol = buf.find(b"\r\n", pos)
                    if eol < 0:
                        return None
                    if eol == pos:
                        break
                    pos = eol + 2
                if len(buf) > eol + 2:
                    self.reusable = False
                return b"".join(parts)
            start = eol + 2
            if len(buf) < start + size + 2:
                return None
            parts.append(bytes(buf[start : start + size]))
            pos = start + size + 2


class Http1Pool:
    """Keep-alive HTTP/1.1 connections to one ``http://host:port``; a connection carries one request
    at a time and goes back to the pool after a complete response (the caller caps concurrency)."""

    def __init__(self, base_url: str, headers: dict[str, str], timeout_s: float) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"Http1Pool serves http:// URLs, not {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.prefix = parts.path.rstrip("/")
        self.timeout_s = timeout_s
        host_header = parts.netloc.rsplit("@", 1)[-1]
        fixed = {"Host": host_header, "Accept": "application/json", "User-Agent": "servecmp", **headers}
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in fixed.items())
        self._idle: list[_Connection] = []
        self._closed = False

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        head = f"{method} {self.prefix}{path} HTTP/1.1\r\n{self._fixed}"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        payload = (head + "\r\n").encode("latin-1") + (body or b"")
        conn: _Connection | None = None
        try:
            async with asyncio.timeout(self.timeout_s):
                conn, reused = await self._acquire()
                try:
                    status, data = await conn.start(payload)
                except ConnectionDropped:
                    if not (reused and not conn.buf):
                        raise
                    # A kept-alive connection the server had closed before our request reached it
                    # (the close raced our reuse): say it again on a new connection, once. Nothing
                    # of the request was answered, so nothing is counted as a retry.
                    conn.abort()
                    conn = None
                    conn = await self._connect()
                    status, data = await conn.start(payload)
        except TimeoutError as exc:
            if conn is not None:
                conn.abort()
            raise RequestTimeout("request timed out") from exc
        except BaseException:
            if conn is not None:
                conn.abort()
            raise
        if conn.usable() and not self._closed:
            self._idle.append(conn)
        else:
            conn.close()
        return status, data

    async def _acquire(self) -> tuple[_Connection, bool]:
        """An idle connection that still looks open (reused=True), else a new one."""
        loop = asyncio.get_running_loop()
        while self._idle:
            conn = self._idle.pop()
            if conn.loop is loop and conn.idle_and_open():
                return conn, True
            with contextlib.suppress(RuntimeError):  # left from an earlier asyncio.run(): its loop is closed
                conn.close()
        return await self._connect(), False

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(_Connection, self.host, self.port)
        except TimeoutError:
            raise
        except OSError as exc:
            raise ConnectFailed(str(exc)) from exc
        return conn

    async def aclose(self) -> None:
        self._closed = True
        while self._idle:
            with contextlib.suppress(RuntimeError):
                self._idle.pop().close()


class HttpxTransport:
    """httpx for ``https://`` and proxied endpoints; same exceptions as `Http1Pool`."""

    def __init__(self, base_url: str, headers: dict[str, str], timeout_s: float) -> None:
        import httpx  # noqa: PLC0415 - only for endpoints that need it

        self._httpx = httpx
        self._base = base_url.rstrip("/")
        self._headers = {"Accept": "application/json", **headers}
        self._timeout_s = timeout_s
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _client_for_this_loop(self) -> Any:
        # An httpx.AsyncClient's pooled connections belong to the loop that opened them.
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client = self._httpx.AsyncClient(timeout=self._timeout_s, headers=self._headers)
            self._loop = loop
        return self._client

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        httpx = self._httpx
        extra: dict[str, Any] = {}
        if body is not None:
            extra = {"content": body, "headers": {"Content-Type": "application/json"}}
        try:
            resp = await self._client_for_this_loop().request(method, self._base + path, **extra)
        except httpx.TimeoutException as exc:
            raise RequestTimeout("request timed out") from exc
        except httpx.ConnectError as exc:
            raise ConnectFailed(str(exc)) from exc
        except httpx.TransportError as exc:
            raise ConnectionDropped(str(exc)) from exc
        return resp.status_code, resp.content

    async def aclose(self) -> None:
        if self._client is not None and self._loop is asyncio.get_running_loop():
            await self._client.aclose()
        self._client = None
