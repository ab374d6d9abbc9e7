"""Mirroring: send a request the primary has answered to the candidate (and secondary), compare.

`Comparer.compare` turns one `MirrorJob` (the request and the primary's complete response) into
one `PairRecord` per other endpoint. Every failure of an other endpoint (down, slow, 5xx, garbage,
dropped connection, oversized body) becomes a field of its record, never an exception. Where the
comparisons run is `workers`' business; replay calls `compare` directly.
"""

from __future__ import annotations

import asyncio
import json
import time
import zlib
from dataclasses import KW_ONLY, dataclass
from typing import Any

from servecmp.shadow.measures import ratio, text_divergence
from servecmp.shadow.payloads import (
    Answer,
    EndpointKind,
    PayloadError,
    is_event_stream,
    parse_answer,
    parse_request,
    prompt_of,
    sha256_hex,
)
from servecmp.shadow.store import PairRecord
from servecmp.shadow.teacher_forcing import TeacherForcer, TfOutcome
from servecmp.shadow.upstream import UPSTREAM_ERRORS, Upstream, error_code


@dataclass
class MirrorJob:
    """A request and the primary's complete response, as the client received it."""

    request_id: str
    ts: float
    kind: EndpointKind
    path: str
    body: bytes
    primary_status: int
    primary_body: bytes
    primary_content_type: str | None
    primary_content_encoding: str | None
    primary_latency_s: float
    source: str = "live"


@dataclass
class TargetResult:
    status: int | None
    latency_s: float | None
    answer: Answer | None
    error: str | None


def decode_body(data: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo gzip/deflate content-encoding (the proxy forwards bytes as the primary sent them)."""
    enc = (encoding or "identity").strip().lower()
    if enc in ("", "identity"):
        return data
    if enc not in ("gzip", "x-gzip", "deflate"):
        raise PayloadError(f"content-encoding {enc}")
    # wbits 47 auto-detects a gzip or zlib header; raw deflate (no header) is the fallback.
    for wbits in (47, -15):
        try:
            d = zlib.decompressobj(wbits)
            out = d.decompress(data, limit + 1)
            if len(out) > limit:
                raise PayloadError("too large")
            return out
        except zlib.error:
            continue
    raise PayloadError("bad compression")


@dataclass(eq=False)
class Comparer:
    """Calls the other endpoints with a mirrored request and measures their divergence."""

    targets: dict[str, Upstream]
    teacher: TeacherForcer | None
    _: KW_ONLY
    run_id: str
    timeout_s: float = 60.0
    max_capture_bytes: int = 8 * 1024 * 1024

    async def call(self, up: Upstream, job: MirrorJob, request: dict[str, Any] | None) -> TargetResult:
        content = job.body
        if request is not None:
            model = await up.resolve_model()
            if model and request.get("model") != model:
                content = json.dumps({**request, "model": model}).encode()
        t0 = time.perf_counter()
        status: int | None = None
        try:
            async with asyncio.timeout(self.timeout_s):
                url = f"{up.url}{job.path}"
                async with up.session.post(url, data=content, headers=up.own_headers()) as resp:
                    status = resp.status
                    chunks: list[bytes] = []
                    size = 0
                    async for chunk in resp.content.iter_any():
                        size += len(chunk)
                        if size > self.max_capture_bytes:
                            return TargetResult(status, None, None, "too_large")
                        chunks.append(chunk)
                    content_type = resp.headers.get("Content-Type")
                    content_encoding = resp.headers.get("Content-Encoding")
            latency = time.perf_counter() - t0
        except UPSTREAM_ERRORS as exc:
            return TargetResult(status, None, None, error_code(exc))
        if status != 200:
            return TargetResult(status, latency, None, f"http_{status}")
        try:
            raw = decode_body(b"".join(chunks), content_encoding, self.max_capture_bytes)
            answer = parse_answer(job.kind, raw, stream=is_event_stream(content_type))
        except PayloadError:
            return TargetResult(status, latency, None, "garbage")
        return TargetResult(status, latency, answer, None)

    async def compare(self, job: MirrorJob) -> list[PairRecord]:
        request = parse_request(job.body)
        prompt = prompt_of(job.kind, request) if request is not None else job.body.decode("utf-8", "replace")
        primary_answer: Answer | None = None
        primary_error: str | None = None
        if job.primary_status == 200:
            try:
                raw = decode_body(job.primary_body, job.primary_content_encoding, self.max_capture_bytes)
                primary_answer = parse_answer(job.kind, raw, stream=is_event_stream(job.primary_content_type))
            except PayloadError:
                primary_error = "garbage"
        else:
            primary_error = f"http_{job.primary_status}"

        names = list(self.targets)
        results = await asyncio.gather(*(self.call(self.targets[n], job, request) for n in names))
        tf: dict[str, TfOutcome] = {}
        if self.teacher is not None and primary_answer is not None and request is not None:
            tf = await self.teacher.compare(job.kind, request, primary_answer, self.targets)

        records = []
        for name, res in zip(names, results, strict=True):
            rec = PairRecord(
                run_id=self.run_id,
                request_id=job.request_id,
                ts=job.ts,
                source=job.source,
                endpoint=job.kind,
                stream=bool(request and request.get("stream")),
                target=name,
                prompt=prompt,
                prompt_sha256=sha256_hex(prompt),
                request_json=job.body.decode("utf-8", "replace") if request is not None else None,
                primary_status=job.primary_status,
                primary_latency_s=job.primary_latency_s,
                primary_error=primary_error,
                primary_answer=primary_answer.text if primary_answer else None,
                primary_sha256=sha256_hex(primary_answer.text) if primary_answer else None,
                other_status=res.status,
                other_error=res.error,
                other_latency_s=res.latency_s,
            )
            if res.latency_s is not None:
                rec.latency_ratio = ratio(res.latency_s, job.primary_latency_s)
            if res.answer is not None:
                rec.other_answer = res.answer.text
                rec.other_sha256 = sha256_hex(res.answer.text)
                if primary_answer is not None:
                    div = text_divergence(
                        primary_answer.text, res.answer.text, primary_answer.tokens, res.answer.tokens
                    )
                    rec.exact_match = div.exact_match
                    rec.first_diff = div.first_diff
                    rec.edit_distance = div.edit_distance
                    rec.length_ratio = div.length_ratio
                    rec.n_tokens_primary = div.n_tokens_primary
                    rec.n_tokens_other = div.n_tokens_other
                    rec.tokenisation = div.tokenisation
            outcome = tf.get(name)
            if outcome is not None:
                rec.tf_error = outcome.error
                rec.tf_source = outcome.source
                if outcome.stats is not None:
                    rec.set_teacher_forced(outcome.stats)
            records.append(rec)
        return records
