"""RFC 9110/9112 hygiene of the shadow proxy and collector, on the raw socket.

Each test is a defect the hand-written relay (servecmp/shadow/relay.py, removed in issue 21) had; on
uvicorn (h11) + aiohttp, some are the libraries' behaviour and some the proxy's own header handling
(`server.forwardable`): either way the observable bytes are checked here, with a scripted raw
primary (`RawPrimary`) that records what reached it.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from servecmp.config import ShadowConfig
from servecmp.shadow.collect import build_receiver
from servecmp.shadow.wiring import ShadowEndpoints
from tests.stub_shadow import ServerThread, StubControl
from tests.test_shadow_cli import db_rows, invoke
from tests.test_shadow_proxy import (
    CHAT,
    AppThread,
    _reset_primary,
    candidate,
    candidate_server,
    chat_body,
    make_proxy,
    post,
    primary,
)
from tests.test_shadow_relay import (
    ANSWER,
    json_answer,
    port_of,
    post_bytes,
    proxy_for,
    raw_primary,
    raw_request,
    read_response,
)

FIXTURES = (_reset_primary, candidate, candidate_server, make_proxy, primary, raw_primary)

MODELS = json.dumps({"object": "list", "data": [{"id": "m", "object": "model"}]}).encode()


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (a bound of 20 s for a hung test)."""
    sock.settimeout(20)
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def test_request_trailers_never_become_headers(
    tmp_path: Path, raw_primary: Any, candidate: tuple[str, StubControl]
) -> None:
    raw = raw_primary(lambda c, n, seen: (json_answer(ANSWER), "keep"))
    proxy = proxy_for(tmp_path, raw.url, candidate[0])
    body = json.dumps(chat_body()).encode()
    try:
        with raw_request(port_of(proxy.url), b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nTrailer: Authorization\r\n"
                         b"\r\n%x\r\n%s\r\n0\r\nAuthorization: Bearer from-a-trailer\r\nX-Trailer: 1\r\n\r\n"
                         % (len(body), body)) as sock:
            status, _, got = read_response(sock.makefile("rb"))
    finally:
        proxy.stop()
    assert (status, got) == (b"HTTP/1.1 200 OK", ANSWER)
    (seen,) = raw.seen
    assert seen.body == body
    names = [line.split(b":", 1)[0].lower() for line in seen.head.split(b"\r\n")[1:] if line]
    assert b"authorization" not in names and b"x-trailer" not in names and b"trailer" not in names


def test_headers_the_connection_header_names_are_removed_both_ways(
    tmp_path: Path, raw_primary: Any, candidate: tuple[str, StubControl]
) -> None:
    raw = raw_primary(lambda c, n, seen: (json_answer(
        ANSWER, extra=b"Connection: X-Hop-Answer, Keep-Alive\r\nX-Hop-Answer: 1\r\nX-Kept: 2\r\n"), "keep"))
    proxy = proxy_for(tmp_path, raw.url, candidate[0])
    body = json.dumps(chat_body()).encode()
    try:
        with raw_request(port_of(proxy.url), post_bytes(
                CHAT, body, extra=b"Connection: keep-alive, X-Hop-Request\r\nX-Hop-Request: secret\r\n"
                                  b"X-Client: 3\r\n")) as sock:
            status, headers, got = read_response(sock.makefile("rb"))
    finally:
        proxy.stop()
    assert (status, got, headers[b"x-kept"]) == (b"HTTP/1.1 200 OK", ANSWER, b"2")
    assert b"x-hop-answer" not in headers
    (seen,) = raw.seen
    names = [line.split(b":", 1)[0].lower() for line in seen.head.split(b"\r\n")[1:] if line]
    assert b"x-client" in names
    assert b"x-hop-request" not in names and b"connection" not in names


def test_bytes_past_the_answers_framing_never_reach_the_client(
    tmp_path: Path, raw_primary: Any, candidate: tuple[str, StubControl]
) -> None:
    # The primary sends bytes past its Content-Length, and a body to HEAD: on a kept-alive client
    # connection either would read as (part of) the next answer, as the old relay passed them on.
    smuggled = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nforged"

    def script(c: int, n: int, seen: Any) -> tuple[bytes, str]:
        if seen.head.startswith(b"HEAD"):
            return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s%s" % (
                len(MODELS), MODELS, smuggled), "close"
        if seen.head.startswith(b"GET"):
            return json_answer(MODELS), "close"
        return json_answer(ANSWER) + b"EXTRA" + smuggled, "close"

    raw = raw_primary(script)
    proxy = proxy_for(tmp_path, raw.url, candidate[0])
    body = json.dumps(chat_body()).encode()
    try:
        with raw_request(port_of(proxy.url), post_bytes(CHAT, body) + b"HEAD /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
                         b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n") as sock:
            f = sock.makefile("rb")
            post_status, _, post_body = read_response(f)
            head = b""
            while (line := f.readline()) not in (b"\r\n", b""):  # HEAD: its Content-Length is not its body's
                head += line
            last = read_response(f)
            rest = f.read()
    finally:
        proxy.stop()
    # The POST's answer is the primary's, or 502 (aiohttp may refuse the primary's stream as invalid
    # HTTP): never the bytes after it.
    assert (post_status, post_body) == (b"HTTP/1.1 200 OK", ANSWER) or post_status == b"HTTP/1.1 502 Bad Gateway"
    # The HEAD answer: a head (its Content-Length the primary's, or a 502's), no body; the GET's
    # answer follows it directly.
    assert head.startswith((b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 502 Bad Gateway\r\n"))
    assert b"content-length: " in head.lower()
    assert (last[0], last[2], rest) == (b"HTTP/1.1 200 OK", MODELS, b"")
    assert all(b"forged" not in part and b"EXTRA" not in part for part in (post_body, last[2]))


def test_no_interim_answer_inside_a_streamed_body(
    primary: tuple[ServerThread, StubControl], candidate: tuple[str, StubControl], make_proxy: Any
) -> None:
    proxy = make_proxy(candidate[0], teacher_forced=False)
    streamed = json.dumps(chat_body("stream me", stream=True)).encode()
    second = json.dumps(chat_body("second")).encode()
    direct = post(primary[0].url, CHAT, chat_body("stream me", stream=True)).content
    # A streamed answer, and pipelined behind it a request that asks for 100-continue.
    with raw_request(port_of(proxy.url), post_bytes(CHAT, streamed) + post_bytes(
            CHAT, second, extra=b"Expect: 100-continue\r\n")) as sock:
        f = sock.makefile("rb")
        status, headers, got = read_response(f)
        following = f.readline()
    assert (status, headers[b"transfer-encoding"], got) == (b"HTTP/1.1 200 OK", b"chunked", direct)
    assert b"100 Continue" not in got
    # What follows the first answer's last chunk is a status line (an interim one or the answer).
    assert following in (b"HTTP/1.1 100 Continue\r\n", b"HTTP/1.1 200 OK\r\n")


def test_connect_gets_one_answer(
    primary: tuple[ServerThread, StubControl], candidate: tuple[str, StubControl], make_proxy: Any
) -> None:
    proxy = make_proxy(candidate[0], teacher_forced=False)
    primary[1].paths.clear()
    with raw_request(port_of(proxy.url), b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
                     b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n") as sock:
        data = read_all(sock)
    statuses = re.findall(rb"HTTP/1\.1 \d{3} [A-Za-z ]+", data)
    # The CONNECT is refused once (not proxied), then the pipelined GET is answered: two answers.
    assert len(statuses) == 2 and statuses[0] in (b"HTTP/1.1 404 Not Found", b"HTTP/1.1 405 Method Not Allowed")
    assert statuses[1] == b"HTTP/1.1 200 OK"
    assert list(primary[1].paths) == ["/v1/models"]


@pytest.mark.parametrize("request_bytes", [
    b"GET /v1/models HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
    b"GET /v1/models HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",  # two Host headers
    b"GET /v1/models\r\n\r\n",  # HTTP/0.9
], ids=["no-host", "two-hosts", "http09"])
def test_host_rules_and_http09(
    request_bytes: bytes, primary: tuple[ServerThread, StubControl], candidate: tuple[str, StubControl],
    make_proxy: Any,
) -> None:
    proxy = make_proxy(candidate[0], teacher_forced=False)
    primary[1].paths.clear()
    with raw_request(port_of(proxy.url), request_bytes) as sock:
        data = read_all(sock)
    assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert list(primary[1].paths) == []  # never forwarded


def test_http10_without_host_is_still_served(
    primary: tuple[ServerThread, StubControl], candidate: tuple[str, StubControl], make_proxy: Any
) -> None:
    proxy = make_proxy(candidate[0], teacher_forced=False)
    with raw_request(port_of(proxy.url), b"GET /v1/models HTTP/1.0\r\n\r\n") as sock:
        data = read_all(sock)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")


def test_access_log_fields_cannot_forge_a_line(
    primary: tuple[ServerThread, StubControl], candidate: tuple[str, StubControl], tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="servecmp.shadow.access")
    from servecmp.shadow.proxy import build_proxy

    cfg = ShadowConfig(db=str(tmp_path / "s.db"), mirror_process=False, teacher_forced=False)
    server = AppThread(build_proxy(cfg, ShadowEndpoints.of(primary[0].url, candidate[0])), access_log=True)
    try:
        with raw_request(port_of(server.url), b"GET /x%0a127.0.0.1:1%20%22GET%20/forged HTTP/1.1\r\nHost: x\r\n"
                         b"Connection: close\r\n\r\n") as sock:
            data = read_all(sock)
    finally:
        server.stop()
    assert data.startswith(b"HTTP/1.1 404 Not Found\r\n")
    lines = [r.getMessage() for r in caplog.records if r.name == "servecmp.shadow.access"]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert lines[0].split(" ", 1)[1] == '"GET /x%0a127.0.0.1:1%20%22GET%20/forged HTTP/1.1" 404'
    # The 404's message names the path decoded, escaped: one line too.
    assert b"\\n127.0.0.1" in data


def test_credentials_in_urls_are_redacted_in_metrics_database_log_and_report(
    tmp_path: Path, primary: tuple[ServerThread, StubControl], candidate: tuple[str, StubControl],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import servecmp.shadow.server

    served: list[Any] = []
    monkeypatch.setattr(servecmp.shadow.server, "run_app", lambda app, **kw: served.append(app))
    host_p = primary[0].url.split("//", 1)[1]
    host_c = candidate[0].split("//", 1)[1]
    db = tmp_path / "s.db"
    for command in ("serve", "collect"):
        res = invoke("shadow", command, "--baseline", f"http://alice:pw-primary-1@{host_p}",
                     "--candidate", f"http://bob:pw-candidate-2@{host_c}", "--secondary",
                     f"http://carol:pw-secondary-3@{host_c}", "--db", str(db), "--in-process")
        assert res.exit_code == 0, res.output
        assert "pw-" not in res.output and "***@" in res.output
    for app in served:
        text, _ = app.metrics()
        assert b"pw-" not in text and b"***@" in text  # no model names given: the URLs are the labels
    rows = db_rows(db, "SELECT primary_url, candidate_url, secondary_url, settings FROM runs")
    assert len(rows) == 2 and all("pw-" not in str(v) for row in rows for v in row)
    assert rows[0][:3] == (f"http://***@{host_p}/v1", f"http://***@{host_c}/v1", f"http://***@{host_c}/v1")
    report = invoke("shadow", "report", "--db", str(db), "--json")
    assert report.exit_code == 0, report.output
    assert "pw-" not in report.output
    conn = sqlite3.connect(db)
    try:
        assert all(b"pw-" not in bytes(str(r), "utf-8") for r in conn.execute("SELECT * FROM runs"))
    finally:
        conn.close()


def test_the_collector_keeps_the_same_hygiene(
    tmp_path: Path, raw_primary: Any, candidate: tuple[str, StubControl]
) -> None:
    raw = raw_primary(lambda c, n, seen: (json_answer(ANSWER), "keep"))
    cfg = ShadowConfig(db=str(tmp_path / "c.db"), mirror_process=False, teacher_forced=False)
    server = AppThread(build_receiver(cfg, ShadowEndpoints.of(raw.url, candidate[0])))
    body = json.dumps(chat_body()).encode()
    try:
        with raw_request(port_of(server.url), post_bytes(
                CHAT, body, extra=b"Connection: X-Hop\r\nX-Hop: 1\r\n") + b"GET /v1/models HTTP/1.1\r\n\r\n") as sock:
            data = read_all(sock)
        assert httpx.get(server.url + "/metrics").status_code == 200
    finally:
        server.stop()
    assert data.startswith(b"HTTP/1.1 202 Accepted\r\n") and b"HTTP/1.1 400 Bad Request\r\n" in data
    (seen,) = raw.seen
    assert b"x-hop" not in seen.head.lower()


def test_forwardable_drops_hop_by_hop_and_connection_listed_names_keeping_order_and_repeats() -> None:
    from servecmp.shadow.server import REQUEST_DROP, forwardable

    headers = [(b"Connection", b"close, X-A"), (b"X-A", b"1"), (b"x-b", b"2"), (b"Keep-Alive", b"t"),
               (b"X-B", b"3"), (b"connection", b" x-c "), (b"X-C", b"4"), (b"Host", b"h")]
    assert forwardable(headers) == [(b"x-b", b"2"), (b"X-B", b"3"), (b"Host", b"h")]
    assert forwardable(headers, REQUEST_DROP) == [(b"x-b", b"2"), (b"X-B", b"3")]
    assert forwardable([(b"a", b"1"), (b"A", b"2")]) == [(b"a", b"1"), (b"A", b"2")]
