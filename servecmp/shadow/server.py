"""Serving `shadow serve`'s proxy and `shadow collect`'s receiver on uvicorn (its h11 protocol).

servecmp keeps no HTTP implementation in the user's path: parsing, framing, keep-alive, pipelining,
``Expect: 100-continue`` and the Host rules of HTTP/1.1 are uvicorn's and h11's. Why h11 and not
uvicorn's protocol on the llhttp C parser, checked on the raw socket (tests/test_shadow_http_hygiene.py):
h11 refuses a request without Host or with two, and HTTP/0.9, and drops request trailers; the
llhttp protocol accepts the first three and appends trailers to the request's header list. The
CPU it costs is in the README ("Shadow: benchmark").

What this module adds is configuration and the bounds uvicorn does not have as settings: a deadline
for a request's head (`HeadTimeoutH11`: uvicorn's keep-alive timer only runs between requests, so a
head trickled one byte at a time was never cut off), a streamed body limit and a body deadline
(`read_body`), the header hygiene of a proxy (`forwardable`: hop-by-hop and Connection-listed
headers never cross), and an access log whose fields are escaped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import socket
import traceback
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from servecmp.errors import UserError

log = logging.getLogger("servecmp.shadow")
access_log = logging.getLogger("servecmp.shadow.access")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

#: Headers that describe one hop of a connection, never forwarded (RFC 9110 §7.6.1), in either direction.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"proxy-connection",
    b"te", b"trailer", b"trailers", b"transfer-encoding", b"upgrade",
})
#: Not forwarded from the client either: Host names the proxy, the body's length is the upstream
#: client's to state (aiohttp sends the body whole), an Expect was answered by the server already.
REQUEST_DROP = HOP_BY_HOP | {b"host", b"content-length", b"expect"}

#: How long a stopping server lets requests in progress finish (a second Ctrl-C cuts them at once).
SHUTDOWN_GRACE_S = 30.0
#: A request line plus headers larger than this is refused by h11 (uvicorn answers 400).
MAX_REQUEST_HEAD = 64 * 1024


@dataclass(frozen=True)
class Limits:
    """The bounds of one server; defaults are `ShadowConfig`'s (README "Shadow: limits")."""

    max_body: int = 16 * 1024 * 1024
    max_connections: int = 1000
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    keepalive_s: float = 5.0

    @classmethod
    def of(cls, cfg: Any) -> Limits:
        """From a `ShadowConfig`."""
        return cls(max_body=int(cfg.max_body_mb * 1024 * 1024), max_connections=cfg.max_connections,
                   header_timeout_s=cfg.header_timeout_s, body_timeout_s=cfg.body_timeout_s,
                   keepalive_s=cfg.keepalive_s)


def describe_failure(exc: BaseException) -> str:
    """Exception type and where it was raised, without its message: a message can quote the payload."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames[-4:]))
    return f"{type(exc).__name__} at {where}" if where else type(exc).__name__


def error_body(message: str, kind: str, status: int) -> bytes:
    """An OpenAI-style JSON error, as the proxy's own answers carry them."""
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": status}}).encode()


def forwardable(headers: Iterable[tuple[bytes, bytes]], drop: frozenset[bytes] = HOP_BY_HOP
                ) -> list[tuple[bytes, bytes]]:
    """``headers`` without hop-by-hop ones, those in ``drop``, and those the Connection header names
    (RFC 9110 §7.6.1), in their order, repeated ones kept."""
    pairs = [(n, v, n.lower()) for n, v in headers]
    listed = [v for _, v, low in pairs if low == b"connection"]
    if listed:  # rare on the proxied routes: a set of the names they list
        drop = drop | {t.strip().lower() for v in listed for t in v.split(b",")}
    return [(n, v) for n, v, low in pairs if low not in drop]


async def respond(send: Send, status: int, body: bytes, *, content_type: bytes = b"application/json",
                  headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    """A whole answer of the server's own (errors, /metrics, 202); h11 leaves the body out for HEAD."""
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", b"%d" % len(body)), *headers]})
    await send({"type": "http.response.body", "body": body})


class BodyRefused(Exception):
    """The request body is over the limit (413) or did not arrive in time (408)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ClientGone(Exception):
    """The client disconnected before its request body was read whole."""


async def read_body(scope: Scope, receive: Receive, limits: Limits) -> bytes:
    """The request body, whole. Refused (`BodyRefused`) at once when its Content-Length is over the
    limit, or as soon as the bytes read pass it (never buffered beyond), or when it takes longer than
    the body timeout; h11 then closes the connection (the rest of the body is never read)."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limits.max_body:
            raise BodyRefused(413, f"request body over the limit of {limits.max_body} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(limits.body_timeout_s):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone()
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limits.max_body:
                    raise BodyRefused(413, f"request body over the limit of {limits.max_body} bytes")
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
    except TimeoutError:
        raise BodyRefused(408, f"request body not received within {limits.body_timeout_s:g} s") from None


async def answer_locally(scope: Scope, send: Send, routes: Mapping[str, str], *, what: str,
                         metrics: Callable[[], tuple[bytes, str]] | None) -> bool:
    """Answer here what an app does not pass on: ``GET /metrics`` (``metrics()`` gives the body and
    its content type; None: no such route), 404 for a path not in ``routes`` (path -> method; the
    message says it is not ``what``), 405 with Allow for a wrong method (HEAD goes where GET does).
    True when it answered."""
    path, method = scope["path"], scope["method"]
    allowed = routes.get(path)
    if allowed is not None and (method == allowed or (allowed == "GET" and method == "HEAD")):
        return False
    if allowed is not None:
        allow = allowed + (", HEAD" if allowed == "GET" else "")
        await respond(send, 405, error_body(f"{method} is not allowed on {path}", "method_not_allowed", 405),
                      headers=((b"allow", allow.encode()),))
    elif path == "/metrics" and method in ("GET", "HEAD") and metrics is not None:
        data, content_type = metrics()
        await respond(send, 200, data, content_type=content_type.encode())
    else:
        await respond(send, 404, error_body(f"{_printable(path)} is not {what} by servecmp shadow", "not_found", 404))
    return True


def _printable(text: str) -> str:
    """``text`` with control characters, backslash and quote escaped: one log line stays one line."""
    return text.encode("unicode_escape").decode("ascii").replace('"', "\\x22")


# ---- the server ----------------------------------------------------------------------------------


class App(Protocol):
    """What `AppServer` serves: `shadow serve`'s proxy and `shadow collect`'s receiver."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None: ...

    async def startup(self) -> None: ...

    async def shutdown(self) -> None: ...


class HeadTimeoutH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline on each request's head: from the connection's start,
    or the end of the previous answer, until the next request's head is whole. uvicorn's own
    keep-alive timer only runs while a connection is idle between requests, and is reset by every
    byte, so a head trickled a byte at a time held a connection (and a file descriptor) forever."""

    head_timeout_s = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_head_deadline()

    def _arm_head_deadline(self) -> None:
        if not self.transport.is_closing():
            self.loop.call_later(self.head_timeout_s, self._head_deadline, self.cycle)

    def _head_deadline(self, armed: Any) -> None:
        # Still the cycle of the arming (no request head completed since) and none in progress.
        if self.cycle is armed and (armed is None or armed.response_complete) and not self.transport.is_closing():
            self.transport.close()


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handling: `run_app` (or the test's thread) decides when
    to stop, and the app's own shutdown (the mirror draining) runs after the server's."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class _Logged:
    """The app, with one access log line per request: peer, request line, status; every field
    escaped (a ``%0a`` in a path stays those three characters; a control byte is written as \\xNN)."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        status = 0

        async def logged_send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, logged_send)
        finally:
            client = scope.get("client") or ("-", 0)
            target = scope.get("raw_path", b"") + (b"?" + scope["query_string"] if scope.get("query_string") else b"")
            access_log.info('%s:%s "%s %s HTTP/%s" %d', _printable(str(client[0])), client[1],
                            _printable(scope["method"]), _printable(target.decode("latin-1")),
                            scope["http_version"], status)


class AppServer:
    """An `App` on uvicorn: start, stop (requests in progress finish, then the app shuts down)."""

    def __init__(self, app: App, *, access_log: bool = False, limits: Limits | None = None, **overrides: Any) -> None:
        self.app = app
        # One set of bounds for the server and the app (which reads bodies under them): given, or
        # the app's own (from its settings), with single ones overridden (e.g. keepalive_s=1.0).
        lim = limits or getattr(app, "limits", None) or Limits()
        if overrides:
            lim = Limits(**{**lim.__dict__, **overrides})
        if hasattr(app, "limits"):
            app.limits = lim
        self.limits = lim
        protocol = type("ShadowH11", (HeadTimeoutH11,), {"head_timeout_s": lim.header_timeout_s})
        self.config = uvicorn.Config(
            _Logged(app) if access_log else app, http=protocol, interface="asgi3", lifespan="off",
            log_config=None, access_log=False, proxy_headers=False, server_header=False, date_header=False,
            limit_concurrency=lim.max_connections, timeout_keep_alive=lim.keepalive_s,  # type: ignore[arg-type]
            h11_max_incomplete_event_size=MAX_REQUEST_HEAD, timeout_graceful_shutdown=int(SHUTDOWN_GRACE_S),
        )
        self.server = _Server(self.config)
        self._task: asyncio.Task[None] | None = None

    async def start(self, *, host: str | None = None, port: int | None = None, sock: Any = None) -> None:
        if sock is None:
            sock = bind(host or "127.0.0.1", port or 0)
        await self.app.startup()
        self._task = asyncio.create_task(self.server.serve(sockets=[sock]))
        while not self.server.started:
            if self._task.done():
                await self.app.shutdown()
                self._task.result()
                raise UserError("shadow: the HTTP server did not start")
            await asyncio.sleep(0.01)

    async def stop(self, grace_s: float = SHUTDOWN_GRACE_S, *, app: bool = True) -> None:
        self.config.timeout_graceful_shutdown = max(0, int(grace_s))
        self.server.should_exit = True
        if self._task is not None:
            await self._task
        if app:
            await self.app.shutdown()


def bind(host: str, port: int) -> socket.socket:
    """A listening socket's address taken now, so a port in use is one line, not uvicorn's exit."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        raise UserError(f"shadow: cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    return sock


def _loop_factory() -> Any:
    """uvloop when installed (uvicorn's default too): its transports cost less CPU per request."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_app(app: App, *, host: str, port: int, access_log: bool = False, limits: Limits | None = None) -> None:
    """Serve until SIGINT or SIGTERM: then requests in progress get `SHUTDOWN_GRACE_S` to finish and
    the app shuts down (the mirror drains); a second signal cuts the requests at once."""
    if access_log:
        _log_access()
    sock = bind(host, port)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = AppServer(app, access_log=access_log, limits=limits)

        def on_signal() -> None:
            if server.server.should_exit:
                server.server.force_exit = True
            server.server.should_exit = True

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        await server.start(sock=sock)
        assert server._task is not None
        with contextlib.suppress(asyncio.CancelledError):
            await server._task
        await app.shutdown()

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(main())


def _log_access() -> None:
    """--access-log: one line per request (peer, request line, status; never a body) on stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
    access_log.propagate = False
