"""`servecmp shadow collect`: the mirror receiver. Envoy (``request_mirror_policies``) or Istio
(``VirtualService`` ``mirror``) sends it a copy of live requests; nobody waits for its answer.

Path of a mirrored request: read the body, answer ``202 Accepted`` at once (the mesh discards the
answer anyway; the HTTP server is the proxy's: uvicorn, `server`), then, off the response path, send the
request to a baseline replica (the primary here: the user's own answer came from another replica,
which servecmp never sees) and hand the exchange, as a `MirrorJob` with source "mirror", to the
same mirror as the proxy's (`workers.compare_and_store`: candidate, secondary, measures, database,
metrics). So records, counters and ``/metrics`` mean exactly what they mean for `shadow serve`.

Bounded: at most ``max_in_flight`` baseline requests at once; more are dropped and counted
(``dropped_queue_full``), as the proxy drops what its mirror queue cannot take. The mirrored
request's headers (its Authorization included) go to the baseline replica only, as the proxy's do;
the candidate and the secondary get their own keys.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

from yarl import URL

from servecmp.config import ShadowConfig
from servecmp.shadow.mirror import MirrorJob
from servecmp.shadow.payloads import PATH_KINDS, EndpointKind
from servecmp.shadow.proxy import ShadowApp
from servecmp.shadow.server import (
    REQUEST_DROP,
    Receive,
    Scope,
    Send,
    forwardable,
    respond,
)
from servecmp.shadow.upstream import UPSTREAM_ERRORS
from servecmp.shadow.wiring import ShadowEndpoints
from servecmp.shadow.workers import MirrorSink

ACCEPTED = b'{"status":"accepted"}'
#: The routes a mirror sends, and their method.
COLLECTED = {"/v1/chat/completions": "POST", "/v1/completions": "POST"}


@dataclass
class MirrorReceiver(ShadowApp):
    """Shared state of one collector: the baseline replica, the mirror, counters."""

    mirror: MirrorSink
    max_in_flight: int = 64
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer at once (ASGI): 202 for a mirrored request (then fetched and compared off the
        response path), /metrics, or an error."""
        body = await self.accept(scope, receive, send, COLLECTED, "collected")
        if body is None:
            return
        path = scope["path"]
        kind = PATH_KINDS[path]
        self.counters.inc("requests", route=kind)
        if self.sample_rate < 1.0 and self.rng.random() >= self.sample_rate:
            self.counters.inc("sampled_out", route=kind)
        elif len(body) > self.capture_limit:
            self.counters.inc("dropped_too_large", route=kind)
        elif len(self._tasks) >= self.max_in_flight:
            self.counters.inc("dropped_queue_full", route=kind)
        else:
            # The client's headers minus hop-by-hop ones, Host and Content-Length (aiohttp sets those).
            headers = [(n.decode("latin-1"), v.decode("latin-1"))
                       for n, v in forwardable(scope["headers"], REQUEST_DROP)]
            target = scope["raw_path"].decode("latin-1")
            if scope["query_string"]:
                target += "?" + scope["query_string"].decode("latin-1")
            task = asyncio.get_running_loop().create_task(
                self._fetch(kind, path, URL(f"{self.primary.url}{target}", encoded=True), headers, body))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await respond(send, 202, ACCEPTED)

    async def _fetch(self, kind: EndpointKind, path: str, url: URL, headers: list[tuple[str, str]],
                     body: bytes) -> None:
        """The baseline replica's answer to the mirrored request, then the shared comparison path."""
        ts = time.time()
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(self.primary.timeout_s):
                async with self.primary.session.post(url, headers=headers, data=body) as resp:
                    chunks: list[bytes] = []
                    size = 0
                    async for chunk in resp.content.iter_any():
                        size += len(chunk)
                        if size > self.capture_limit:
                            self.counters.inc("dropped_too_large", route=kind)
                            return
                        chunks.append(chunk)
                    status = resp.status
                    content_type = resp.headers.get("Content-Type")
                    content_encoding = resp.headers.get("Content-Encoding")
        except UPSTREAM_ERRORS:
            self.counters.inc("primary_unreachable", route=kind)
            return
        self.mirror.submit(MirrorJob(
            request_id=self._request_id(), ts=ts, kind=kind, path=path, body=body, primary_status=status,
            primary_body=b"".join(chunks), primary_content_type=content_type,
            primary_content_encoding=content_encoding, primary_latency_s=time.perf_counter() - t0,
            source="mirror",
        ))

    async def startup(self) -> None:
        self.mirror.start()

    async def shutdown(self) -> None:
        # Baseline requests in flight finish (up to the drain timeout) and reach the mirror, which
        # then drains its own queue; what is cut off is counted.
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=self.drain_timeout_s)
            for t in pending:
                t.cancel()
            if pending:
                self.counters.inc("dropped_shutdown", len(pending))
                await asyncio.gather(*pending, return_exceptions=True)
        await self.mirror.stop(self.drain_timeout_s)
        await self.primary.aclose()


def build_receiver(
    cfg: ShadowConfig, endpoints: ShadowEndpoints, *, max_in_flight: int = 64, rng: random.Random | None = None
) -> MirrorReceiver:
    """A collector wired from the `[shadow]` settings and the endpoints; registers the run."""
    return MirrorReceiver.wired(cfg, endpoints, mode="collect", rng=rng, max_in_flight=max_in_flight)
