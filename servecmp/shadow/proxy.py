"""The shadow reverse proxy: an ASGI app that answers every client from the primary, unchanged, and
hands a copy of each exchange to the mirror after the response has been sent.

Path of a request (the only work the client waits for): read the body, send it with the client's
headers (minus hop-by-hop ones) to the primary on a pooled keep-alive connection, and pass status,
headers and raw body bytes back as they arrive (aiohttp with decompression off, so content-encoding
and bytes are the primary's). While passing through, the bytes are also kept (up to a cap) for the
comparison. Mirroring, parsing, measuring and storing all happen after the response, in the mirror
(by default a separate lower-priority process, see `workers`); the proxy's only extra step is a
non-blocking queue put.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from servecmp.config import ShadowConfig
from servecmp.shadow.mirror import MirrorJob
from servecmp.shadow.payloads import PATH_KINDS, EndpointKind, is_event_stream
from servecmp.shadow.store import Counters
from servecmp.shadow.upstream import HOP_BY_HOP, REQUEST_DROP, UPSTREAM_ERRORS, Upstream
from servecmp.shadow.wiring import ShadowEndpoints, build_comparison, capture_bytes, primary_upstream, start_run
from servecmp.shadow.workers import LocalMirror, MirrorSink, ProcessMirror

#: Non-streamed bodies up to this size are read whole and sent in one piece; larger or unknown
#: lengths are streamed through chunk by chunk.
BUFFER_LIMIT = 1024 * 1024


class PrimaryDropped(Exception):
    """The primary's connection broke mid-body: the client's connection is aborted the same way."""


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (the request body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _broken(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk
    raise PrimaryDropped("primary closed the connection before the end of the body")


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

    def _sampled(self) -> bool:
        self.counters.inc("requests")
        if self.mirror is None:
            return False
        if self.sample_rate >= 1.0 or self.rng.random() < self.sample_rate:
            return True
        self.counters.inc("sampled_out")
        return False

    async def _after_response(self, ex: _Exchange) -> None:
        """Runs once the response has been sent: hand the exchange to the mirror, or count why not."""
        if not ex.complete:
            return
        if ex.size > ex.capture_limit:
            self.counters.inc("dropped_too_large")
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

    async def handle(self, request: Request) -> Response:
        path = request.url.path
        kind = PATH_KINDS.get(path)
        body = await request.body()
        ex: _Exchange | None = None
        if kind is not None and self._sampled():
            ex = _Exchange(kind, path, body, time.perf_counter(), self.capture_limit)
        url = f"{self.primary.url}{path}"
        if request.url.query:
            url = f"{url}?{request.url.query}"
        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in request.headers.raw
            if k.decode("latin-1").lower() not in REQUEST_DROP
        ]
        exchange = asyncio.ensure_future(self._exchange(request.method, url, headers, body, ex))
        watcher = asyncio.ensure_future(_client_gone(request))
        await asyncio.wait((exchange, watcher), return_when=asyncio.FIRST_COMPLETED)
        if not exchange.done():
            # The client hung up before the primary answered: cancelling closes the upstream
            # connection, so the primary stops working on it, as it would for the client itself.
            exchange.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await exchange
            if ex is not None:
                self.counters.inc("client_disconnected")
            return Response(status_code=499)  # nobody is left to read it
        watcher.cancel()
        return exchange.result()

    async def _exchange(
        self, method: str, url: str, headers: list[tuple[str, str]], body: bytes, ex: _Exchange | None
    ) -> Response:
        try:
            upstream = await self._send(method, url, headers, body)
        except TimeoutError:
            self.counters.inc("primary_unreachable")
            return _error(504, "primary endpoint timed out", "gateway_timeout")
        except aiohttp.ClientError as exc:
            self.counters.inc("primary_unreachable")
            return _error(502, f"primary endpoint unreachable ({type(exc).__name__})", "bad_gateway")

        raw_headers = [
            (k.lower(), v) for k, v in upstream.raw_headers if k.decode("latin-1").lower() not in HOP_BY_HOP
        ]
        content_type = upstream.headers.get("Content-Type")
        if ex is not None:
            ex.status = upstream.status
            ex.content_type = content_type
            ex.content_encoding = upstream.headers.get("Content-Encoding")
        length = upstream.headers.get("Content-Length")
        background = BackgroundTask(self._after_response, ex) if ex is not None else None

        buffered = length is not None and length.isdigit() and int(length) <= BUFFER_LIMIT
        if buffered and not is_event_stream(content_type):
            chunks: list[bytes] = []
            try:
                async for chunk in upstream.content.iter_any():
                    chunks.append(chunk)
            except UPSTREAM_ERRORS:
                upstream.close()
                self.counters.inc("primary_dropped")
                response: Response = StreamingResponse(_broken(chunks), status_code=upstream.status)
                response.raw_headers = raw_headers
                return response
            except asyncio.CancelledError:
                upstream.close()  # the client left: abort the primary's request too
                raise
            upstream.release()
            data = b"".join(chunks)
            if ex is not None:
                ex.latency_s = time.perf_counter() - ex.t0
                ex.keep(data)
                ex.complete = True
            response = Response(data, status_code=upstream.status, background=background)
        else:
            response = StreamingResponse(
                self._relay(upstream, ex), status_code=upstream.status, background=background
            )
        # The primary's headers exactly (repeated ones too), instead of Starlette's computed ones.
        response.raw_headers = raw_headers
        return response

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

    async def _relay(self, upstream: aiohttp.ClientResponse, ex: _Exchange | None) -> AsyncIterator[bytes]:
        try:
            async for chunk in upstream.content.iter_any():
                if ex is not None:
                    ex.keep(chunk)
                yield chunk
            if ex is not None:
                ex.latency_s = time.perf_counter() - ex.t0
                ex.complete = True
        except UPSTREAM_ERRORS:
            # Re-raised so the server aborts the client's connection, which is what the client
            # would have seen talking to the primary directly.
            self.counters.inc("primary_dropped")
            if ex is not None:
                ex.dropped = True
            raise
        finally:
            if ex is not None and not ex.complete and not ex.dropped:
                self.counters.inc("client_disconnected")
            # Finished: the connection goes back to the pool. Not finished (client gone, error):
            # closing it aborts the primary's request, as a client hanging up directly would.
            if ex is not None and ex.complete or ex is None and upstream.content.at_eof():
                upstream.release()
            else:
                upstream.close()

    async def not_found(self, request: Request) -> Response:
        return _error(404, f"{request.url.path} is not proxied by servecmp shadow", "not_found")

    async def startup(self) -> None:
        if self.mirror is not None:
            self.mirror.start()

    async def shutdown(self) -> None:
        if self.mirror is not None:
            await self.mirror.stop(self.drain_timeout_s)
        await self.primary.aclose()


def build_proxy(
    cfg: ShadowConfig, endpoints: ShadowEndpoints, *, rng: random.Random | None = None
) -> ShadowProxy:
    """A proxy wired from the `[shadow]` settings and the endpoints; registers the run in the database."""
    run = start_run(cfg, endpoints, mode="serve")
    mirror: MirrorSink
    if cfg.mirror_process:
        process_mirror = ProcessMirror(cfg, endpoints, run)
        counters = process_mirror.counters
        mirror = process_mirror
    else:
        counters = Counters()
        mirror = LocalMirror(build_comparison(cfg, endpoints, run, counters), counters, queue_size=cfg.queue_size,
                             workers=cfg.mirror_concurrency)
    return ShadowProxy(
        primary=primary_upstream(cfg, endpoints),
        mirror=mirror,
        counters=counters,
        sample_rate=cfg.sample_rate,
        capture_limit=capture_bytes(cfg),
        drain_timeout_s=cfg.drain_timeout_s,
        rng=rng or random.Random(),
    )


def build_app(proxy: ShadowProxy) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await proxy.startup()
        try:
            yield
        finally:
            await proxy.shutdown()

    routes = [
        Route("/v1/chat/completions", proxy.handle, methods=["POST"]),
        Route("/v1/completions", proxy.handle, methods=["POST"]),
        Route("/v1/models", proxy.handle, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_route("/{path:path}", proxy.not_found, methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    app.state.shadow = proxy
    return app
