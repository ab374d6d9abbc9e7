"""The shadow reverse proxy: answers every client from the primary, unchanged, and hands a copy of
each exchange to the mirror after the response has been sent.

Path of a request (the only work the client waits for): the request is parsed, sent with the
client's headers (minus hop-by-hop ones) to the primary on a pooled keep-alive connection, and the
primary's status, headers and body bytes are passed back as they arrive (content-encoding and bytes
are the primary's); `relay` does the HTTP. While passing through, the body is also kept (up to a
cap) for the comparison. Mirroring, parsing, measuring and storing all happen after the response,
in the mirror (by default a separate lower-priority process, see `workers`); the proxy's only extra
step is a non-blocking hand-off (batched for the process), and one histogram observation of the
time it added (``/metrics``).
"""

from __future__ import annotations

import gc
import itertools
import random
import time
import uuid
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Self, cast

from servecmp.config import ShadowConfig
from servecmp.shadow.metrics import Telemetry, build_registry, exposition
from servecmp.shadow.mirror import MirrorJob
from servecmp.shadow.payloads import PATH_KINDS, EndpointKind
from servecmp.shadow.relay import (
    CLIENT_LEFT,
    COMPLETE,
    DROPPED,
    TIMEOUT,
    ClientConnection,
    Forward,
    Request,
    UpstreamPool,
    answer_locally,
    error_body,
)
from servecmp.shadow.store import Counters, RunInfo
from servecmp.shadow.upstream import Upstream
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
PROXIED = {"/v1/chat/completions": b"POST", "/v1/completions": b"POST", "/v1/models": b"GET"}

SSE_DONE = b"data: [DONE]"


class _Proxied(Forward):
    """A `Forward` with what the proxy needs when it ends."""

    __slots__ = ("kind", "t_entry", "ts")
    kind: EndpointKind | None
    t_entry: float
    ts: float


def _sse_done(chunks: list[bytes]) -> bool:
    """Whether the kept bytes end with the SSE end marker (its last event is complete)."""
    return b"".join(chunks[-2:]).rstrip().endswith(SSE_DONE)


@dataclass
class ShadowApp:
    """What `shadow serve`'s proxy and `shadow collect`'s receiver share: the primary (the
    baseline), where comparisons go, counters, metrics, the run."""

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
            registry=build_registry(metrics_collector(endpoints, run, counters, telemetry)),
            run_id=run.run_id,
            **extra,
        )

    def __post_init__(self) -> None:
        # Request ids: a random 64-bit prefix per process and a counter, 32 hex digits as a uuid4's,
        # unique across replicas; a uuid4 each (a getrandom call and a UUID object) cost ~4% of the
        # proxy's CPU per request.
        self._id_prefix = uuid.uuid4().hex[:16]
        self._ids = itertools.count()
        #: GET /metrics (None: the route is not there).
        self.metrics = None if self.registry is None else partial(exposition, self.registry)

    def _request_id(self) -> str:
        return f"{self._id_prefix}{next(self._ids):016x}"


@dataclass
class ShadowProxy(ShadowApp):
    """Shared state of one proxy: the primary, where comparisons go, counters."""

    #: Keep-alive connections to the primary (built from `primary` on first use).
    pool: UpstreamPool | None = None

    def _sampled(self, kind: EndpointKind) -> bool:
        self.counters.inc("requests", route=kind)
        if self.mirror is None:
            return False
        if self.sample_rate >= 1.0 or self.rng.random() < self.sample_rate:
            return True
        self.counters.inc("sampled_out", route=kind)
        return False

    def _pool(self) -> UpstreamPool:
        if self.pool is None:
            # No stricter connect limit than the client's own would be: on a stalled host a short
            # connect timeout could fail through the proxy where the direct call would have waited.
            self.pool = UpstreamPool(self.primary.url, connect_timeout_s=self.primary.connect_timeout_s,
                                     read_timeout_s=self.primary.timeout_s)
        return self.pool

    def handle(self, conn: ClientConnection, req: Request) -> None:
        """One request: proxied routes go to the primary; /metrics and errors are answered here."""
        t_entry = time.perf_counter()
        if answer_locally(conn, req, PROXIED, what="proxied", metrics=self.metrics):
            return
        kind = PATH_KINDS.get(req.path)
        sampled = kind is not None and self._sampled(kind)
        fwd = _Proxied(self._pool(), conn, req, self.capture_limit if sampled else None, self._ended)
        fwd.kind, fwd.t_entry, fwd.ts = kind, t_entry, time.time()
        conn.current = fwd
        fwd.start(t_entry)

    def _ended(self, f: Forward, outcome: str) -> None:
        """A forwarded request is over (called from the callback that ended it)."""
        fwd = cast(_Proxied, f)
        kind, conn = fwd.kind, fwd.client
        if fwd.head_done:
            # The proxy's own time on the request path: up to the request going out, and the handling
            # of the packets up to the one that completed the answer's head.
            self.telemetry.observe_latency(fwd.added_s, kind)
        sampled = fwd.capture is not None
        if outcome == COMPLETE:
            if sampled:
                self._after_response(fwd)
        elif outcome == CLIENT_LEFT:
            if sampled:
                # The openai SDK stops reading at the SSE "data: [DONE]" event and closes the
                # connection, often before the primary's final empty chunk arrives: the answer is
                # whole then, so it is compared rather than counted as a client that left.
                if fwd.head_done and _sse_done(cast(list[bytes], fwd.capture)):
                    self._after_response(fwd)
                else:
                    self.counters.inc("client_disconnected", route=kind)
        elif outcome == DROPPED:
            self.counters.inc("primary_dropped", route=kind)
        else:
            self.counters.inc("primary_unreachable", route=kind)
            if outcome == TIMEOUT:
                conn.respond(504, error_body("primary endpoint timed out", "gateway_timeout", 504))
            else:
                conn.respond(502, error_body("primary endpoint unreachable", "bad_gateway", 502))
        conn.done(fwd.request)

    def _after_response(self, fwd: _Proxied) -> None:
        """Runs once the response has been sent: hand the exchange to the mirror, or count why not."""
        assert fwd.capture is not None and fwd.kind is not None and self.mirror is not None
        if fwd.size > self.capture_limit:
            self.counters.inc("dropped_too_large", route=fwd.kind)
            return
        self.mirror.submit(
            MirrorJob(
                request_id=self._request_id(),
                ts=fwd.ts,
                kind=fwd.kind,
                path=fwd.request.path,
                body=fwd.request.body,
                primary_status=fwd.status,
                primary_body=b"".join(fwd.capture),
                primary_content_type=fwd.content_type.decode("latin-1") if fwd.content_type else None,
                primary_content_encoding=fwd.content_encoding.decode("latin-1") if fwd.content_encoding else None,
                primary_latency_s=fwd.t_end - fwd.t_entry,
            )
        )

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
        if self.pool is not None:
            self.pool.close()
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
    return LocalMirror(parts, counters, queue_size=cfg.queue_size, workers=cfg.mirror_concurrency), counters, telemetry


