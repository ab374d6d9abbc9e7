"""The shadow reverse proxy: answers every client from the primary, unchanged, and hands a copy of
each exchange to the mirror after the response has been sent.

Path of a request (the only work the client waits for): uvicorn reads it (`server`), the body is
read whole (bounded: `Limits`), sent with the client's headers minus hop-by-hop ones to the primary
by aiohttp's keep-alive pool, and the primary's status, headers (minus hop-by-hop) and body bytes
are passed back as they arrive (content-encoding and bytes are the primary's). While passing
through, the body is also kept (up to a cap) for the comparison. Mirroring, parsing, measuring and
storing all happen after the response, in the mirror (by default a separate lower-priority process,
see `workers`); the proxy's only extra step is a non-blocking hand-off, and one histogram
observation of the time it added (``/metrics``). servecmp writes no HTTP here: no parsing, framing,
keep-alive or pooling of its own.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import random
import time
import uuid
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Self

import aiohttp
from yarl import URL

from servecmp.config import ShadowConfig
from servecmp.shadow.mirror import MirrorJob
from servecmp.shadow.payloads import PATH_KINDS, EndpointKind
from servecmp.shadow.prom import Telemetry, build_registry, exposition
from servecmp.shadow.server import (
    REQUEST_DROP,
    BodyRefused,
    ClientGone,
    Limits,
    Receive,
    Scope,
    Send,
    answer_locally,
    error_body,
    forwardable,
    read_body,
    respond,
)
from servecmp.shadow.store import Counters, RunInfo
from servecmp.shadow.upstream import UPSTREAM_ERRORS, Upstream
from servecmp.shadow.wiring import (
    ShadowEndpoints,
    build_comparison,
    capture_bytes,
    metrics_collector,
    primary_upstream,
    start_run,
)
from servecmp.shadow.workers import LocalMirror, MirrorSink, ProcessMirror

#: The proxied routes and their methods (HEAD too where GET is allowed).
PROXIED = {"/v1/chat/completions": "POST", "/v1/completions": "POST", "/v1/models": "GET"}

SSE_DONE = b"data: [DONE]"


def _sse_done(chunks: list[bytes]) -> bool:
    """Whether the kept bytes end with the SSE end marker (its last event is complete)."""
    return b"".join(chunks[-2:]).rstrip().endswith(SSE_DONE)


async def refuse(send: Send, exc: BodyRefused) -> None:
    """413 or 408 for a body the server will not read further (h11 then closes the connection)."""
    kind = "request_too_large" if exc.status == 413 else "request_timeout"
    await respond(send, exc.status, error_body(str(exc), kind, exc.status), headers=((b"connection", b"close"),))


@dataclass
class ShadowApp:
    """What `shadow serve`'s proxy and `shadow collect`'s receiver share: the primary (the
    baseline), where comparisons go, counters, metrics, the run, the server's bounds."""

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
    limits: Limits = field(default_factory=Limits)

    @classmethod
    def wired(cls, cfg: ShadowConfig, endpoints: ShadowEndpoints, *, mode: str, rng: random.Random | None = None,
              **extra: Any) -> Self:
        """Wired from the `[shadow]` settings and the endpoints; registers the run (``mode``) in the
        database. ``extra``: the subclass's own fields."""
        run = start_run(cfg, endpoints, mode=mode)
        mirror, counters, telemetry = build_mirror(cfg, endpoints, run)
        return cls(
            primary=primary_upstream(cfg, endpoints),
            mirror=mirror,
            counters=counters,
            sample_rate=cfg.sample_rate,
            capture_limit=capture_bytes(cfg),
            drain_timeout_s=cfg.drain_timeout_s,
            rng=rng or random.Random(),
            telemetry=telemetry,
            registry=build_registry(metrics_collector(endpoints, run, counters, telemetry, cfg)),
            run_id=run.run_id,
            limits=Limits.of(cfg),
            **extra,
        )

    def __post_init__(self) -> None:
        # Request ids: a random 64-bit prefix per process and a counter, 32 hex digits as a uuid4's,
        # unique across replicas.
        self._id_prefix = uuid.uuid4().hex[:16]
        self._ids = itertools.count()
        #: GET /metrics (None: the route is not there).
        self.metrics = None if self.registry is None else partial(exposition, self.registry)

    def _request_id(self) -> str:
        return f"{self._id_prefix}{next(self._ids):016x}"

    async def accept(self, scope: Scope, receive: Receive, send: Send, routes: dict[str, str],
                     what: str) -> bytes | None:
        """The body of a request the app passes on; None when it was answered here (/metrics, 404,
        405, a refused body) or the client left."""
        if scope["type"] != "http":
            return None
        if await answer_locally(scope, send, routes, what=what, metrics=self.metrics):
            return None
        try:
            return await read_body(scope, receive, self.limits)
        except BodyRefused as exc:
            await refuse(send, exc)
        except ClientGone:
            pass
        return None


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
    latency_s: float = 0.0

    def keep(self, chunk: bytes) -> None:
        if self.size <= self.capture_limit:
            self.size += len(chunk)
            if self.size > self.capture_limit:
                self.chunks.clear()  # too large to compare; free it now rather than at the end
            else:
                self.chunks.append(chunk)


class PrimaryDropped(Exception):
    """The primary's connection broke mid-body: raised so uvicorn aborts the client's connection,
    which is what the client would have seen talking to the primary directly."""


async def _wait_disconnect(receive: Receive) -> None:
    """Returns when the client disconnects (its request body has been read already)."""
    while (await receive())["type"] != "http.disconnect":
        pass


@dataclass
class ShadowProxy(ShadowApp):
    """Shared state of one proxy: the primary, where comparisons go, counters."""

    def _sampled(self, kind: EndpointKind) -> bool:
        self.counters.inc("requests", route=kind)
        if self.mirror is None:
            return False
        if self.sample_rate >= 1.0 or self.rng.random() < self.sample_rate:
            return True
        self.counters.inc("sampled_out", route=kind)
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One request (ASGI): proxied routes go to the primary; /metrics and errors are answered here."""
        body = await self.accept(scope, receive, send, PROXIED, "proxied")
        if body is None:
            return
        # From here to the upstream send, and from the primary's head to it going out, is the
        # proxy's own time on the request path: the "added latency" histogram.
        t_entry = time.perf_counter()
        path = scope["path"]
        kind = PATH_KINDS.get(path)
        ex = _Exchange(kind, path, body, t_entry, self.capture_limit) if kind and self._sampled(kind) else None
        # The client's target exactly as sent (never re-encoded).
        target = scope["raw_path"].decode("latin-1")
        if scope["query_string"]:
            target += "?" + scope["query_string"].decode("latin-1")
        headers = [(n.decode("latin-1"), v.decode("latin-1"))
                   for n, v in forwardable(scope["headers"], REQUEST_DROP)]
        # One task listens for the client leaving, for both phases (waiting for the primary, then
        # streaming): a client that hangs up aborts the primary's request, as it would directly.
        task = asyncio.current_task()
        assert task is not None
        gone: list[bool] = []

        def client_left(w: asyncio.Future[None]) -> None:
            if not w.cancelled() and w.exception() is None:
                gone.append(True)
                task.cancel()

        watcher = asyncio.ensure_future(_wait_disconnect(receive))
        watcher.add_done_callback(client_left)
        try:
            await self._forward(scope, send, URL(self.primary.url + target, encoded=True), headers, body, ex,
                                t_entry, kind)
        except asyncio.CancelledError:
            if not gone:
                raise  # not the client's leaving: shutdown
            task.uncancel()
            if ex is not None:
                if ex.status and _sse_done(ex.chunks):
                    # The openai SDK stops reading at the SSE "data: [DONE]" event and closes the
                    # connection, often before the primary's final empty chunk arrives: the answer
                    # is whole then, so it is compared rather than counted as a client that left.
                    ex.complete, ex.latency_s = True, time.perf_counter() - ex.t0
                    self._after_response(ex)
                else:
                    self.counters.inc("client_disconnected", route=kind)
        finally:
            watcher.remove_done_callback(client_left)
            watcher.cancel()

    async def _forward(self, scope: Scope, send: Send, url: URL, headers: list[tuple[str, str]], body: bytes,
                       ex: _Exchange | None, t_entry: float, kind: EndpointKind | None) -> None:
        t_send = time.perf_counter()
        try:
            # aiohttp never re-sends a POST on its own (only idempotent methods, RFC 9110 §9.2.2).
            upstream = await self.primary.session.request(scope["method"], url, headers=headers, data=body,
                                                          allow_redirects=False)
        except TimeoutError:
            self.counters.inc("primary_unreachable", route=kind)
            await respond(send, 504, error_body("primary endpoint timed out", "gateway_timeout", 504))
            return
        except aiohttp.ClientError:
            self.counters.inc("primary_unreachable", route=kind)
            await respond(send, 502, error_body("primary endpoint unreachable", "bad_gateway", 502))
            return
        t_head = time.perf_counter()
        try:
            # The primary's headers exactly (repeated ones too) minus hop-by-hop and Connection-listed
            # ones; the framing (Content-Length or chunked) is uvicorn's, from the bytes it is given.
            status = upstream.status
            if ex is not None:
                ex.status = status
                ex.content_type = upstream.headers.get("Content-Type")
                ex.content_encoding = upstream.headers.get("Content-Encoding")
            await send({"type": "http.response.start", "status": status,
                        "headers": forwardable(upstream.raw_headers)})
            self.telemetry.observe_latency((t_send - t_entry) + (time.perf_counter() - t_head), kind)
            try:
                async for chunk in upstream.content.iter_any():
                    if ex is not None:
                        ex.keep(chunk)
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except UPSTREAM_ERRORS:
                self.counters.inc("primary_dropped", route=kind)
                raise PrimaryDropped("the primary closed the connection before the end of its answer") from None
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            # Finished: the connection goes back to the pool; otherwise closing it aborts the
            # primary's request, and a half-read connection is never pooled.
            if upstream.content.at_eof():
                upstream.release()
            else:
                upstream.close()
        if ex is not None:
            ex.complete, ex.latency_s = True, time.perf_counter() - ex.t0
            self._after_response(ex)

    def _after_response(self, ex: _Exchange) -> None:
        """Runs once the response has been sent: hand the exchange to the mirror, or count why not."""
        assert self.mirror is not None
        if ex.size > self.capture_limit:
            self.counters.inc("dropped_too_large", route=ex.kind)
            return
        self.mirror.submit(MirrorJob(
            request_id=self._request_id(), ts=ex.ts, kind=ex.kind, path=ex.path, body=ex.body,
            primary_status=ex.status, primary_body=b"".join(ex.chunks), primary_content_type=ex.content_type,
            primary_content_encoding=ex.content_encoding, primary_latency_s=ex.latency_s,
        ))

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
    return ShadowProxy.wired(cfg, endpoints, mode="serve", rng=rng)


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
    return LocalMirror(parts, counters, queue_size=cfg.queue_size, workers=cfg.mirror_concurrency,
                       queue_bytes=int(cfg.queue_mb * 1024 * 1024)), counters, telemetry


