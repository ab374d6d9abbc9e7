"""The shadow reverse proxy: an ASGI app that answers every client from the primary, unchanged, and
hands a copy of each exchange to the mirror after the response has been sent.

Path of a request (the only work the client waits for): read the body, send it with the client's
headers (minus hop-by-hop ones) to the primary on a pooled keep-alive connection, and pass status,
headers and raw body bytes back as they arrive (aiohttp with decompression off, so content-encoding
and bytes are the primary's). While passing through, the bytes are also kept (up to a cap) for the
comparison. Mirroring, parsing, measuring and storing all happen after the response, in the mirror
(by default a separate lower-priority process, see `workers`); the proxy's only extra step is a
non-blocking hand-off (batched for the process), and one histogram observation of the time it added
(``/metrics``).

The proxied routes are served as raw ASGI (`ShadowProxy.serve`), without Starlette's request and
response objects: see there for why.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from servecmp.config import ShadowConfig
from servecmp.shadow.metrics import Telemetry, build_registry, exposition
from servecmp.shadow.mirror import MirrorJob
from servecmp.shadow.payloads import PATH_KINDS, EndpointKind, is_event_stream
from servecmp.shadow.store import Counters, RunInfo
from servecmp.shadow.upstream import HOP_BY_HOP, REQUEST_DROP, UPSTREAM_ERRORS, Upstream
from servecmp.shadow.wiring import (
    ShadowEndpoints,
    build_comparison,
    capture_bytes,
    metrics_collector,
    primary_upstream,
    start_run,
)
from servecmp.shadow.workers import LocalMirror, MirrorSink, ProcessMirror

_REQUEST_DROP = frozenset(h.encode("latin-1") for h in REQUEST_DROP)
_HOP_BY_HOP = frozenset(h.encode("latin-1") for h in HOP_BY_HOP)

#: Non-streamed bodies up to this size are read whole and sent in one piece; larger or unknown
#: lengths are streamed through chunk by chunk.
BUFFER_LIMIT = 1024 * 1024


class PrimaryDropped(Exception):
    """The primary's connection broke mid-body: the client's connection is aborted the same way."""


async def _read_body(receive: Any) -> bytes:
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientDisconnect()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    chunks = [body]
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


class _Watch:
    """Whether the client has gone, and the request's task to interrupt while that matters."""

    __slots__ = ("task", "active", "gone")

    def __init__(self, task: asyncio.Task[Any] | None) -> None:
        self.task = task
        #: True while a disconnect should interrupt the request (waiting for the primary, streaming).
        self.active = True
        self.gone = False

    def taken_back(self) -> bool:
        """Whether a CancelledError is this watcher's (asked once per cancellation): then the task's
        cancellation is undone and the request ends as a client that left; otherwise it is someone
        else's (shutdown) and goes on."""
        if not self.gone or self.task is None:
            return False
        self.task.uncancel()
        self.task = None  # the watcher cancels once; any later cancellation is not the client's
        return True


async def _watch_disconnect(receive: Any, watch: _Watch) -> None:
    """Returns when the client disconnects (the request body has been read already)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    watch.gone = True
    if watch.active and watch.task is not None:
        watch.active = False
        watch.task.cancel()


SSE_DONE = b"data: [DONE]"


def _sse_done(chunks: list[bytes]) -> bool:
    """Whether the kept bytes end with the SSE end marker (its last event is complete)."""
    return b"".join(chunks[-2:]).rstrip().endswith(SSE_DONE)


def _error(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": status}}, status)


@dataclass
class _Exchange:
    """What the proxy keeps of one mirrored exchange while the response is going out."""

    kind: EndpointKind
    path: str
    body: bytes
    t0: float
    capture_limit: int
    ts: float = field(default_factory=time.time)
    status: int = 0
    content_type: str | None = None
    content_encoding: str | None = None
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    complete: bool = False
    dropped: bool = False
    latency_s: float = 0.0

    def keep(self, chunk: bytes) -> None:
        if self.size <= self.capture_limit:
            self.size += len(chunk)
            if self.size > self.capture_limit:
                self.chunks.clear()  # too large to compare; free it now rather than at the end
            else:
                self.chunks.append(chunk)


@dataclass
class ShadowProxy:
    """Shared state of one proxy: the primary, where comparisons go, counters."""

    primary: Upstream
    mirror: MirrorSink | None
    counters: Counters
    sample_rate: float = 1.0
    capture_limit: int = 8 * 1024 * 1024
    drain_timeout_s: float = 10.0
    rng: random.Random = field(default_factory=random.Random)
    telemetry: Telemetry = field(default_factory=Telemetry)
    #: The app's own prometheus CollectorRegistry (None: no /metrics).
    registry: Any = None
    #: The run this process records (servecmp_shadow_run_info's run_id).
    run_id: str = ""

    def _sampled(self, kind: EndpointKind) -> bool:
        self.counters.inc("requests", route=kind)
        if self.mirror is None:
            return False
        if self.sample_rate >= 1.0 or self.rng.random() < self.sample_rate:
            return True
        self.counters.inc("sampled_out", route=kind)
        return False

    def _after_response(self, ex: _Exchange) -> None:
        """Runs once the response has been sent: hand the exchange to the mirror, or count why not."""
        if not ex.complete:
            return
        if ex.size > ex.capture_limit:
            self.counters.inc("dropped_too_large", route=ex.kind)
            return
        assert self.mirror is not None
        self.mirror.submit(
            MirrorJob(
                request_id=uuid.uuid4().hex,
                ts=ex.ts,
                kind=ex.kind,
                path=ex.path,
                body=ex.body,
                primary_status=ex.status,
                primary_body=b"".join(ex.chunks),
                primary_content_type=ex.content_type,
                primary_content_encoding=ex.content_encoding,
                primary_latency_s=ex.latency_s,
            )
        )

    async def serve(self, scope: Any, receive: Any, send: Any) -> None:
        """One proxied request, as a raw ASGI call.

        Why not Starlette's Request/Response here: building them, and the anyio task group a
        StreamingResponse starts per response to listen for a disconnect (uvicorn says ASGI 2.3),
        cost more CPU than the rest of the proxy's own work. One watcher task per request does that
        listening for both phases (waiting for the primary, then streaming to the client).
        """
        body = await _read_body(receive)
        path = scope["path"]
        kind = PATH_KINDS.get(path)
        # From here to the upstream send, and from the upstream's end to the response going out,
        # is the proxy's own time on the request path: the "added latency" histogram.
        t_entry = time.perf_counter()
        ex: _Exchange | None = None
        if kind is not None and self._sampled(kind):
            ex = _Exchange(kind, path, body, time.perf_counter(), self.capture_limit)
        url = f"{self.primary.url}{path}"
        query = scope["query_string"]
        if query:
            url = f"{url}?{query.decode('latin-1')}"
        # uvicorn gives header names lower-cased.
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"] if k not in _REQUEST_DROP]
        watch = _Watch(asyncio.current_task())
        watcher = asyncio.ensure_future(_watch_disconnect(receive, watch))
        try:
            await self._forward(scope, receive, send, url, headers, body, ex, t_entry, kind, watch)
        except asyncio.CancelledError:
            # The client left just as the primary failed (the cancel landed on the error response).
            if not watch.taken_back():
                raise
        finally:
            watch.active = False
            watcher.cancel()

    async def _forward(
        self, scope: Any, receive: Any, send: Any, url: str, headers: list[tuple[str, str]], body: bytes,
        ex: _Exchange | None, t_entry: float, kind: EndpointKind | None, watch: _Watch,
    ) -> None:
        t_send = time.perf_counter()
        try:
            upstream = await self._send(scope["method"], url, headers, body)
        except TimeoutError:
            watch.active = False
            self.counters.inc("primary_unreachable", route=kind)
            await _error(504, "primary endpoint timed out", "gateway_timeout")(scope, receive, send)
            return
        except aiohttp.ClientError as exc:
            watch.active = False
            self.counters.inc("primary_unreachable", route=kind)
            await _error(502, f"primary endpoint unreachable ({type(exc).__name__})", "bad_gateway")(
                scope, receive, send
            )
            return
        except asyncio.CancelledError:
            # Cancelling the request closed the upstream connection (aiohttp does on cancel).
            if not watch.taken_back():
                raise
            await self._client_left(ex, kind, scope, receive, send)
            return
        t_upstream = time.perf_counter()

        # The primary's headers exactly (repeated ones too), never computed ones.
        raw_headers = [(k.lower(), v) for k, v in upstream.raw_headers if k.lower() not in _HOP_BY_HOP]
        content_type = upstream.headers.get("Content-Type")
        status = upstream.status
        if ex is not None:
            ex.status = status
            ex.content_type = content_type
            ex.content_encoding = upstream.headers.get("Content-Encoding")
        length = upstream.headers.get("Content-Length")
        start = {"type": "http.response.start", "status": status, "headers": raw_headers}

        buffered = length is not None and length.isdigit() and int(length) <= BUFFER_LIMIT
        if buffered and not is_event_stream(content_type):
            chunks: list[bytes] = []
            try:
                async for chunk in upstream.content.iter_any():
                    chunks.append(chunk)
            except UPSTREAM_ERRORS:
                upstream.close()
                watch.active = False
                self.counters.inc("primary_dropped", route=kind)
                # What arrived goes out, then the connection is aborted (the exception reaches
                # uvicorn after the response started), as the primary's broken one was.
                await send(start)
                for chunk in chunks:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                raise PrimaryDropped("primary closed the connection before the end of the body") from None
            except asyncio.CancelledError:
                upstream.close()  # the client left: abort the primary's request too
                if not watch.taken_back():
                    raise
                await self._client_left(ex, kind, scope, receive, send)
                return
            watch.active = False
            upstream.release()
            t_upstream = time.perf_counter()
            data = b"".join(chunks)
            if ex is not None:
                ex.latency_s = time.perf_counter() - ex.t0
                ex.keep(data)
                ex.complete = True
            self.telemetry.observe_latency((t_send - t_entry) + (time.perf_counter() - t_upstream), kind)
            await send(start)
            await send({"type": "http.response.body", "body": data, "more_body": False})
            if ex is not None:
                self._after_response(ex)
            return

        self.telemetry.observe_latency((t_send - t_entry) + (time.perf_counter() - t_upstream), kind)
        if await self._relay(upstream, ex, start, send, watch):
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        if ex is not None:
            self._after_response(ex)  # also after a client left: complete if it left after [DONE]

    async def _client_left(
        self, ex: _Exchange | None, kind: EndpointKind | None, scope: Any, receive: Any, send: Any
    ) -> None:
        """The client hung up before the primary answered: the primary's request was aborted, as it
        would have been for the client itself."""
        if ex is not None:
            self.counters.inc("client_disconnected", route=kind)
        await Response(status_code=499)(scope, receive, send)  # nobody is left to read it

    async def _send(
        self, method: str, url: str, headers: list[tuple[str, str]], body: bytes
    ) -> aiohttp.ClientResponse:
        """Send to the primary; once more if a pooled keep-alive connection turns out closed.

        A ``ServerDisconnectedError`` before any response byte is what a keep-alive connection the
        primary closed in the meantime looks like; failing the client for it would be an error the
        proxy added. (Pooled connections also expire before uvicorn/vLLM's 5 s keep-alive does.)
        """
        session = self.primary.session
        try:
            return await session.request(method, url, headers=headers, data=body)
        except aiohttp.ServerDisconnectedError:
            return await session.request(method, url, headers=headers, data=body)

    async def _relay(
        self, upstream: aiohttp.ClientResponse, ex: _Exchange | None, start: dict[str, Any], send: Any,
        watch: _Watch,
    ) -> bool:
        """Pass the primary's body on as it arrives; False if the client left before its end."""
        left = False
        try:
            await send(start)
            async for chunk in upstream.content.iter_any():
                if ex is not None:
                    ex.keep(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if ex is not None:
                ex.latency_s = time.perf_counter() - ex.t0
                ex.complete = True
        except UPSTREAM_ERRORS:
            # Re-raised so the server aborts the client's connection, which is what the client
            # would have seen talking to the primary directly.
            self.counters.inc("primary_dropped", route=ex.kind if ex is not None else None)
            if ex is not None:
                ex.dropped = True
            raise
        except asyncio.CancelledError:
            if not watch.taken_back():
                raise
            left = True
        finally:
            # The openai SDK stops reading at the SSE "data: [DONE]" event and closes the
            # connection, often before the primary's final empty chunk arrives: the answer is whole
            # then, so it is compared rather than counted as a client that left.
            done_early = ex is not None and not ex.complete and not ex.dropped and _sse_done(ex.chunks)
            if ex is not None and not ex.complete and not ex.dropped and not done_early:
                self.counters.inc("client_disconnected", route=ex.kind)
            # Finished: the connection goes back to the pool. Not finished (client gone, error, or
            # gone after [DONE] with the end of the body unread): closing it aborts the primary's
            # request, as a client hanging up directly would, and never pools a half-read connection.
            if ex is not None and ex.complete or ex is None and upstream.content.at_eof():
                upstream.release()
            else:
                upstream.close()
            if done_early:
                assert ex is not None
                ex.latency_s = time.perf_counter() - ex.t0
                ex.complete = True
        return not left

    async def metrics(self, request: Request) -> Response:
        if self.registry is None:
            return await self.not_found(request)
        data, content_type = exposition(self.registry)
        return Response(data, headers={"Content-Type": content_type})

    async def not_found(self, request: Request) -> Response:
        return _error(404, f"{request.url.path} is not proxied by servecmp shadow", "not_found")

    async def startup(self) -> None:
        if self.mirror is not None:
            self.mirror.start()
        # Everything imported and built so far (~100k objects: numpy, scipy, pydantic, the app)
        # lives as long as the process: out of the collector's reach, a full collection no longer
        # walks it (~0.1 s each on this project's machine, paid on the request path).
        gc.freeze()

    async def shutdown(self) -> None:
        if self.mirror is not None:
            await self.mirror.stop(self.drain_timeout_s)
        await self.primary.aclose()


def build_proxy(
    cfg: ShadowConfig, endpoints: ShadowEndpoints, *, rng: random.Random | None = None
) -> ShadowProxy:
    """A proxy wired from the `[shadow]` settings and the endpoints; registers the run in the database."""
    run = start_run(cfg, endpoints, mode="serve")
    mirror, counters, telemetry = build_mirror(cfg, endpoints, run)
    return ShadowProxy(
        primary=primary_upstream(cfg, endpoints),
        mirror=mirror,
        counters=counters,
        sample_rate=cfg.sample_rate,
        capture_limit=capture_bytes(cfg),
        drain_timeout_s=cfg.drain_timeout_s,
        rng=rng or random.Random(),
        telemetry=telemetry,
        registry=build_registry(metrics_collector(endpoints, run, counters, telemetry)),
        run_id=run.run_id,
    )


def build_mirror(
    cfg: ShadowConfig, endpoints: ShadowEndpoints, run: RunInfo
) -> tuple[LocalMirror | ProcessMirror, Counters, Telemetry]:
    """Where comparisons of a run go (a niced process, or this event loop), with its counters and
    telemetry (in shared memory for the process)."""
    if cfg.mirror_process:
        process_mirror = ProcessMirror(cfg, endpoints, run)
        return process_mirror, process_mirror.counters, process_mirror.telemetry
    counters, telemetry = Counters(), Telemetry()
    parts = build_comparison(cfg, endpoints, run, counters, telemetry)
    return LocalMirror(parts, counters, queue_size=cfg.queue_size, workers=cfg.mirror_concurrency), counters, telemetry


#: The proxied routes and their methods: served by `ShadowApp`'s direct path.
PROXIED = {"/v1/chat/completions": "POST", "/v1/completions": "POST", "/v1/models": "GET"}


class ShadowApp:
    """The proxy's ASGI app: proxied routes go straight to `ShadowProxy.serve`; everything else
    (``/metrics``, 404s, lifespan) to a Starlette app.

    Why not a Starlette route for the proxied paths too: routing plus Starlette's two exception
    middlewares cost ~0.05-0.1 ms of CPU per request on this project's machine, for nothing the proxy
    uses (an exception in `serve` reaches uvicorn either way, which answers 500 before the response
    starts and aborts the connection after, as the primary's broken stream requires).
    """

    def __init__(self, proxy: ShadowProxy, fallback: Starlette) -> None:
        self.proxy = proxy
        self.fallback = fallback
        self.state = fallback.state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and PROXIED.get(scope["path"]) == scope["method"]:
            await self.proxy.serve(scope, receive, send)
            return
        await self.fallback(scope, receive, send)


class _Forward:
    """`ShadowProxy.serve` as a Starlette route's ASGI endpoint (e.g. HEAD on a GET route)."""

    def __init__(self, proxy: ShadowProxy) -> None:
        self.proxy = proxy

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.proxy.serve(scope, receive, send)


def build_app(proxy: ShadowProxy) -> ShadowApp:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await proxy.startup()
        try:
            yield
        finally:
            await proxy.shutdown()

    # The proxied routes are here too (reached only through a path ShadowApp does not send
    # straight on, e.g. a wrong method: Starlette's 405).
    routes = [Route("/metrics", proxy.metrics, methods=["GET"])]
    routes += [Route(path, _Forward(proxy), methods=[method]) for path, method in PROXIED.items()]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_route("/{path:path}", proxy.not_found, methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    app.state.shadow = proxy
    return ShadowApp(proxy, app)
