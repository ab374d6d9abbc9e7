"""The shadow server's bounds (README "Shadow: limits"), each on the raw socket or at the mirror's
hand-off: head and body deadlines, the streamed body limit, the client and upstream connection caps,
the mirror backlog in bytes and jobs, and /metrics stating them. Waits are bounds for a hung test,
never timing assertions."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from servecmp.config import ShadowConfig
from servecmp.shadow.mirror import MirrorJob
from servecmp.shadow.proxy import build_proxy
from servecmp.shadow.store import Counters
from servecmp.shadow.wiring import ShadowEndpoints, new_run
from servecmp.shadow.workers import LocalMirror, ProcessMirror
from tests.stub_shadow import ServerThread, StubControl
from tests.test_shadow_http_hygiene import read_all
from tests.test_shadow_proxy import (
    CHAT,
    AppThread,
    _reset_primary,
    candidate,
    candidate_server,
    chat_body,
    post,
    primary,
    wait_for,
)
from tests.test_shadow_relay import ANSWER, json_answer, port_of, raw_primary, raw_request, read_response

FIXTURES = (_reset_primary, candidate, candidate_server, primary, raw_primary)


def proxy_with(tmp_path: Path, primary_url: str, candidate_url: str, **settings: Any) -> AppThread:
    cfg = ShadowConfig(db=str(tmp_path / "s.db"), mirror_process=False, teacher_forced=False, **settings)
    return AppThread(build_proxy(cfg, ShadowEndpoints.of(primary_url, candidate_url)))


def test_a_trickled_head_is_cut_off_at_the_header_timeout(
    tmp_path: Path, primary: tuple[ServerThread, StubControl], candidate: tuple[str, StubControl]
) -> None:
    server = proxy_with(tmp_path, primary[0].url, candidate[0], header_timeout_s=1.0, keepalive_s=30.0)
    primary[1].paths.clear()
    try:
        with raw_request(port_of(server.url), b"G") as sock:
            # A byte every 0.2 s (never idle for the keep-alive): the connection is closed anyway,
            # before the head's 300 bytes are sent (60 s at this pace).
            closed = False
            for byte in b"ET /v1/models HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 300:
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    closed = True
                    break
                sock.settimeout(0.2)
                try:
                    if sock.recv(1024) == b"":
                        closed = True
                        break
                except TimeoutError:
                    pass
        assert closed
        # A connection that sends nothing at all is closed too.
        with raw_request(port_of(server.url), b"") as sock:
            assert read_all(sock) == b""
        # One that sends its head in time is served.
        assert httpx.get(server.url + "/v1/models").status_code == 200
    finally:
        server.stop()
    assert list(primary[1].paths) == ["/v1/models"]


def test_a_body_not_received_in_time_is_408(
    tmp_path: Path, primary: tuple[ServerThread, StubControl], candidate: tuple[str, StubControl]
) -> None:
    server = proxy_with(tmp_path, primary[0].url, candidate[0], body_timeout_s=1.0)
    primary[1].paths.clear()
    try:
        with raw_request(port_of(server.url), b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Length: 1000\r\n\r\n{\"model\"") as sock:
            status, headers, body = read_response(sock.makefile("rb"))
    finally:
        server.stop()
    assert (status, headers[b"connection"], json.loads(body)["error"]["type"]) == (
        b"HTTP/1.1 408 Request Timeout", b"close", "request_timeout")
    assert list(primary[1].paths) == []


def test_the_body_limit_refuses_before_reading_past_it(
    tmp_path: Path, primary: tuple[ServerThread, StubControl], candidate: tuple[str, StubControl]
) -> None:
    server = proxy_with(tmp_path, primary[0].url, candidate[0], max_body_mb=1.0)
    primary[1].paths.clear()
    try:
        # Content-Length over 1 MiB: refused at once, from the head alone (no body byte sent).
        with raw_request(port_of(server.url), b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Length: 1048577\r\n\r\n") as sock:
            status, headers, body = read_response(sock.makefile("rb"))
        assert (status, json.loads(body)["error"]["type"]) == (b"HTTP/1.1 413 Request Entity Too Large",
                                                               "request_too_large")
        # Chunked, no length: refused once the bytes read pass 1 MiB (the client sends 1 MiB + 1).
        with raw_request(port_of(server.url), b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n") as sock:
            sock.sendall(b"%x\r\n%s\r\n" % (1024 * 1024 + 1, b"a" * (1024 * 1024 + 1)))
            status, headers, _ = read_response(sock.makefile("rb"))
        assert (status, headers[b"connection"]) == (b"HTTP/1.1 413 Request Entity Too Large", b"close")
        # Exactly 1 MiB is under the limit (the stub answers its JSON error for a non-JSON body, 4xx).
        ok = httpx.post(server.url + CHAT, content=b" " * (1024 * 1024), headers={"content-type": "application/json"})
        assert ok.status_code != 413
    finally:
        server.stop()
    assert list(primary[1].paths) == [CHAT]  # only the last one reached the primary


def test_client_connections_over_the_cap_are_answered_503(
    tmp_path: Path, primary: tuple[ServerThread, StubControl], candidate: tuple[str, StubControl]
) -> None:
    server = proxy_with(tmp_path, primary[0].url, candidate[0], max_connections=2)
    try:
        with raw_request(port_of(server.url), b"") as idle:
            # The idle connection and this one make 2, the cap: refused.
            assert wait_for(lambda: len(server.server.server.server_state.connections) == 1)
            refused = httpx.get(server.url + "/v1/models")
            idle.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            served_idle = read_all(idle)
        assert wait_for(lambda: len(server.server.server.server_state.connections) == 0)
        after = httpx.get(server.url + "/v1/models")
    finally:
        server.stop()
    assert refused.status_code == 503
    assert served_idle.startswith(b"HTTP/1.1 200 OK\r\n")
    assert after.status_code == 200


def test_upstream_connections_are_capped(
    tmp_path: Path, raw_primary: Any, candidate: tuple[str, StubControl]
) -> None:
    release = threading.Event()

    def script(c: int, n: int, seen: Any) -> tuple[bytes, str]:
        if n == 0 and c == 0:
            release.wait(20)
        return json_answer(ANSWER), "keep"

    raw = raw_primary(script)
    server = proxy_with(tmp_path, raw.url, candidate[0], max_upstream_connections=1)
    results: list[int] = []
    threads = [threading.Thread(target=lambda i=i: results.append(post(server.url, CHAT, chat_body(f"q{i}"))
                                                                  .status_code)) for i in range(2)]
    try:
        for t in threads:
            t.start()
        assert wait_for(lambda: len(raw.seen) == 1)
        time.sleep(0.3)  # room for a second connection, if the cap let one open
        during = (raw.connections, len(raw.seen))
        release.set()
        for t in threads:
            t.join(20)
    finally:
        release.set()
        server.stop()
    assert during == (1, 1)
    assert results == [200, 200] and raw.connections == 1 and len(raw.seen) == 2


def job(size: int, kind: str = "chat") -> MirrorJob:
    return MirrorJob(request_id="r", ts=0.0, kind=kind, path=CHAT, body=b"q" * (size // 2),  # type: ignore[arg-type]
                     primary_status=200, primary_body=b"a" * (size - size // 2), primary_content_type=None,
                     primary_content_encoding=None, primary_latency_s=0.0)


def test_the_local_mirror_backlog_is_bounded_in_bytes_and_jobs() -> None:
    counters = Counters()
    mirror = LocalMirror(None, counters, queue_size=3, workers=1, queue_bytes=100)  # type: ignore[arg-type]
    # Not started: nothing is taken off the queue, so everything submitted waits.
    accepted = [mirror.submit(job(size)) for size in (60, 41, 40, 1, 1, 1)]
    # 60 in; 60+41 > 100 out; 40 in (100); 1 over the bytes; then still over bytes.
    assert accepted == [True, False, True, False, False, False]
    assert (mirror.queued_bytes, counters.snapshot()["dropped_queue_full"]) == (100, 4)
    jobs_only = LocalMirror(None, Counters(), queue_size=2, workers=1, queue_bytes=10**6)  # type: ignore[arg-type]
    assert [jobs_only.submit(job(10)) for _ in range(3)] == [True, True, False]


def test_the_process_mirror_backlog_is_bounded_in_bytes(tmp_path: Path) -> None:
    cfg = ShadowConfig(db=str(tmp_path / "s.db"), queue_size=1000, queue_mb=100 / (1024 * 1024))
    endpoints = ShadowEndpoints.of("http://127.0.0.1:9", "http://127.0.0.1:9")
    mirror = ProcessMirror(cfg, endpoints, new_run(cfg, endpoints, mode="serve"))  # never started
    try:
        accepted = [mirror.submit(job(size)) for size in (60, 41, 40, 1)]
        assert accepted == [True, False, True, False]
        assert (mirror.accepted, mirror.accepted_bytes, mirror.counters.snapshot()["dropped_queue_full"]) == (
            2, 100, 2)
    finally:
        mirror._batch.clear()


def test_metrics_state_the_limits(
    tmp_path: Path, primary: tuple[ServerThread, StubControl], candidate: tuple[str, StubControl]
) -> None:
    server = proxy_with(tmp_path, primary[0].url, candidate[0], max_body_mb=2.0, queue_mb=3.0, queue_size=7,
                        max_connections=11, max_upstream_connections=13, header_timeout_s=4.5,
                        body_timeout_s=6.0, keepalive_s=1.5)
    try:
        text = httpx.get(server.url + "/metrics").text
    finally:
        server.stop()
    got = {}
    for line in text.splitlines():
        if line.startswith("servecmp_shadow_limit{"):
            got[line.split('limit="', 1)[1].split('"', 1)[0]] = float(line.rsplit(" ", 1)[1])
    assert got == {"max_body_bytes": 2 * 1048576, "queue_bytes": 3 * 1048576, "queue_jobs": 7,
                   "max_connections": 11, "max_upstream_connections": 13, "header_timeout_seconds": 4.5,
                   "body_timeout_seconds": 6.0, "keepalive_seconds": 1.5, "max_capture_bytes": 8 * 1048576}
