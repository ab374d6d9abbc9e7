"""`servecmp shadow replay`: send recorded or exported requests to the primary and the candidate (and
the secondary) at a chosen rate, and record the same measures as the live proxy.

Input: OpenAI request JSONL, one request body per line (the endpoint is /v1/chat/completions when
the body has ``messages``, else /v1/completions), or ``{"url": "/v1/chat/completions", "body": {...}}``
per line; or a shadow database recorded without ``--hash-only``, an SQLite file or a ``postgresql://``
URL (its request bodies are replayed, read through the store layer as `shadow report` reads it).
Requests start on a fixed schedule (``send_rps``, the CLI's ``--send-rps``: the rate requests are sent
at, not a per-endpoint cap like ``--rps`` elsewhere), at most ``max_in_flight`` at a time; the
sampling rate does not apply (every request is compared). With a baseline model name
(``--baseline-model``) the requests name it for the primary; otherwise they go as recorded.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from servecmp.config import ShadowConfig
from servecmp.errors import UserError
from servecmp.runstore import parse_json_object, read_jsonl_objects
from servecmp.shadow.mirror import MirrorJob
from servecmp.shadow.payloads import PATH_KINDS
from servecmp.shadow.store import Counters, is_postgres, is_sqlite_file, open_store
from servecmp.shadow.upstream import UPSTREAM_ERRORS, Upstream
from servecmp.shadow.wiring import ComparisonParts, ShadowEndpoints, build_comparison, start_run
from servecmp.shadow.workers import compare_and_store


@dataclass(frozen=True)
class ReplayRequest:
    path: str
    body: bytes


def _path_of(url: str | None, body: dict[str, Any], where: str) -> str:
    if url is None:
        return "/v1/chat/completions" if "messages" in body else "/v1/completions"
    for path in PATH_KINDS:
        if url.rstrip("/").endswith(path) or url.rstrip("/").endswith(path.removeprefix("/v1")):
            return path
    raise UserError(f"{where}: url {url!r} is not /v1/chat/completions or /v1/completions")


def parse_request_line(line: str, where: str) -> ReplayRequest:
    return request_of(parse_json_object(line, where), where)


def request_of(obj: dict[str, Any], where: str) -> ReplayRequest:
    """A replay file's line: a request body, or {"url", "body"}."""
    url = None
    if isinstance(obj.get("body"), dict):
        url = obj.get("url")
        if url is not None and not isinstance(url, str):
            raise UserError(f"{where}: url must be a string")
        obj = obj["body"]
    if "messages" not in obj and "prompt" not in obj:
        raise UserError(f"{where}: a request body needs messages (chat) or prompt (completions)")
    return ReplayRequest(_path_of(url, obj, where), json.dumps(obj).encode())


def _from_store(target: str | Path, limit: int | None) -> list[ReplayRequest]:
    """The requests a shadow database holds. Both backends go through `StoreConn.load_requests`, so
    an SQLite file and a PostgreSQL database replay by the same rules: rows with text only, in the
    order they were recorded, and a hash-only database is one error rather than an empty replay."""
    conn = open_store(target, readonly=True)
    try:
        rows = conn.load_requests()
    finally:
        conn.close()
    if rows and all(body is None for _, body in rows):
        raise UserError(f"{conn.label} was recorded with --hash-only: it holds no requests to replay")
    out = [
        ReplayRequest("/v1/chat/completions" if kind == "chat" else "/v1/completions", body.encode())
        for kind, body in rows
        if body is not None
    ]
    return out[:limit] if limit is not None else out


def load_requests(source: str | Path, limit: int | None = None) -> list[ReplayRequest]:
    """The requests of a JSONL file or a shadow database (an SQLite file or a ``postgresql://``
    URL), at most ``limit``."""
    if isinstance(source, str) and is_postgres(source):
        return _from_store(source, limit)
    path = Path(source)
    if not path.is_file():
        raise UserError(f"replay file {path} not found")
    if is_sqlite_file(path):
        return _from_store(path, limit)
    out: list[ReplayRequest] = []
    # islice stops reading at the limit: a bad line after it is not this replay's concern.
    for n, obj in itertools.islice(read_jsonl_objects(path), limit):
        out.append(request_of(obj, f"{path}:{n}"))
    if not out:
        raise UserError(f"{path} holds no requests")
    return out


@dataclass
class ReplayOutcome:
    sent: int
    compared: int
    primary_failed: int
    run_id: str
    seconds: float


def _for_primary(primary: Upstream, req: ReplayRequest) -> ReplayRequest:
    """The request as the primary gets it: with the baseline's model name, when one was given."""
    if primary.model is None:
        return req
    try:
        body = json.loads(req.body)
    except ValueError:
        return req  # not ours to fix: the primary answers it as it would the client
    if not isinstance(body, dict) or body.get("model") == primary.model:
        return req
    return ReplayRequest(req.path, json.dumps({**body, "model": primary.model}).encode())


async def _send_primary(primary: Upstream, req: ReplayRequest) -> MirrorJob:
    req = _for_primary(primary, req)
    t0 = time.perf_counter()
    async with asyncio.timeout(primary.timeout_s):
        async with primary.session.post(f"{primary.url}{req.path}", data=req.body,
                                        headers=primary.own_headers()) as resp:
            body = await resp.read()
            return MirrorJob(
                request_id=uuid.uuid4().hex,
                ts=time.time(),
                kind=PATH_KINDS[req.path],
                path=req.path,
                body=req.body,
                primary_status=resp.status,
                primary_body=body,
                primary_content_type=resp.headers.get("Content-Type"),
                primary_content_encoding=resp.headers.get("Content-Encoding"),
                primary_latency_s=time.perf_counter() - t0,
                source="replay",
            )


async def replay(
    cfg: ShadowConfig,
    endpoints: ShadowEndpoints,
    requests: list[ReplayRequest],
    *,
    send_rps: float,
    max_in_flight: int = 8,
) -> ReplayOutcome:
    """Replay ``requests`` against ``endpoints`` and store the comparisons in ``cfg.db``."""
    if send_rps <= 0:
        raise UserError("--send-rps must be positive")
    run = start_run(cfg, endpoints, mode="replay")
    counters = Counters()
    parts: ComparisonParts = build_comparison(cfg, endpoints, run, counters)
    parts.writer.start()
    slots = asyncio.Semaphore(max(1, max_in_flight))
    failed = 0

    async def one(req: ReplayRequest) -> None:
        nonlocal failed
        try:
            try:
                job = await _send_primary(parts.primary, req)
            except UPSTREAM_ERRORS:
                failed += 1
                counters.inc("primary_unreachable", route=PATH_KINDS[req.path])
                return
            await compare_and_store(parts, counters, job)  # the proxy's and the collector's path
        finally:
            slots.release()

    t_start = time.perf_counter()
    tasks = []
    try:
        for i, req in enumerate(requests):
            delay = t_start + i / send_rps - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await slots.acquire()  # a slow endpoint slows the schedule rather than piling up requests
            counters.inc("requests", route=PATH_KINDS[req.path])
            tasks.append(asyncio.create_task(one(req)))
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.to_thread(parts.writer.close)
        await parts.aclose()
    return ReplayOutcome(len(tasks), counters.get("mirrored"), failed, run.run_id, time.perf_counter() - t_start)
