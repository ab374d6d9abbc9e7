"""`servecmp shadow replay`: request files, replay against stub endpoints, replay of a recorded database."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from servecmp._cli.main import build_app
from servecmp.config import ShadowConfig
from servecmp.errors import UserError
from servecmp.shadow.replay import load_requests, parse_request_line, replay
from servecmp.shadow.wiring import ShadowEndpoints
from tests.stub_shadow import ServerThread, StubControl, build_stub_app


@pytest.fixture(scope="module")
def endpoints() -> Iterator[tuple[ServerThread, ServerThread, StubControl, StubControl]]:
    pctl, cctl = StubControl(), StubControl(variant=1, model="cand-model")
    with ServerThread(build_stub_app(pctl)) as p, ServerThread(build_stub_app(cctl)) as c:
        yield p, c, pctl, cctl


def test_parse_request_line_forms() -> None:
    r = parse_request_line('{"model": "m", "messages": [{"role": "user", "content": "x"}]}', "f:1")
    assert r.path == "/v1/chat/completions"
    assert parse_request_line('{"model": "m", "prompt": "x"}', "f:2").path == "/v1/completions"
    r = parse_request_line('{"url": "http://h/v1/completions", "body": {"prompt": "x"}}', "f:3")
    assert (r.path, json.loads(r.body)) == ("/v1/completions", {"prompt": "x"})
    assert parse_request_line('{"url": "/chat/completions", "body": {"messages": []}}', "f:4").path == (
        "/v1/chat/completions"
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"f:7: not valid JSON \(Expecting property name enclosed in double quotes at column 2\)"),
        ("[1, 2]", "f:7: expected a JSON object"),
        ('{"model": "m"}', "needs messages"),
        ('{"url": "/v1/embeddings", "body": {"prompt": "x"}}', "is not /v1/chat/completions"),
    ],
)
def test_parse_request_line_errors(line: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        parse_request_line(line, "f:7")


def _jsonl(path: Path, n: int) -> Path:
    lines: list[dict[str, Any]] = []
    for i in range(n):
        if i % 2:
            lines.append({"url": "/v1/completions", "body": {"model": "stub-model", "prompt": f"Tell me {i}",
                                                             "stream": i % 4 == 1}})
        else:
            lines.append({"model": "stub-model", "messages": [{"role": "user", "content": f"q{i}"}]})
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    return path


def test_replay_records_the_same_measures(
    tmp_path: Path, endpoints: tuple[ServerThread, ServerThread, StubControl, StubControl]
) -> None:
    p, c, _, _ = endpoints
    requests = load_requests(_jsonl(tmp_path / "reqs.jsonl", 6), limit=5)
    assert len(requests) == 5
    cfg = ShadowConfig(db=str(tmp_path / "r.db"))
    outcome = asyncio.run(replay(cfg, ShadowEndpoints.of(p.url, c.url), requests, send_rps=200, max_in_flight=2))
    assert (outcome.sent, outcome.compared, outcome.primary_failed) == (5, 5, 0)
    conn = sqlite3.connect(cfg.db)
    rows = conn.execute("SELECT source, endpoint, stream, target, other_error, kl_mean, edit_distance FROM pairs "
                        "ORDER BY ts").fetchall()
    counters = dict(conn.execute("SELECT name, value FROM counters").fetchall())
    conn.close()
    assert len(rows) == 5
    assert {r[0] for r in rows} == {"replay"} and {r[3] for r in rows} == {"candidate"}
    assert sorted(r[1] for r in rows) == ["chat", "chat", "chat", "completions", "completions"]
    assert sum(r[2] for r in rows) == 1  # one streamed request
    assert all(r[4] is None and r[5] is not None and r[6] is not None for r in rows)
    assert (counters["requests"], counters["mirrored"]) == (5, 5)

    # A database recorded with text replays its requests.
    again = load_requests(Path(cfg.db))
    assert sorted(json.loads(r.body).get("prompt", "chat") for r in again) == sorted(
        json.loads(r.body).get("prompt", "chat") for r in requests
    )


def test_replay_cli_and_hash_only_database(
    tmp_path: Path, endpoints: tuple[ServerThread, ServerThread, StubControl, StubControl]
) -> None:
    p, c, _, _ = endpoints
    app = build_app()
    db = tmp_path / "h.db"
    res = CliRunner().invoke(app, ["shadow", "replay", str(_jsonl(tmp_path / "q.jsonl", 3)), "--baseline", p.url,
                                   "--candidate", c.url, "--db", str(db), "--send-rps", "100", "--hash-only",
                                   "--no-teacher-forced"])
    assert res.exit_code == 0, res.output
    with pytest.raises(UserError, match="hash-only"):
        load_requests(db)
    res = CliRunner().invoke(app, ["shadow", "replay", str(tmp_path / "none.jsonl"), "--baseline", p.url,
                                   "--candidate", c.url, "--db", str(db)])
    assert isinstance(res.exception, UserError)
    res = CliRunner().invoke(app, ["shadow", "replay", str(tmp_path / "q.jsonl"), "--baseline", p.url,
                                   "--candidate", c.url, "--db", str(db), "--send-rps", "0"])
    assert isinstance(res.exception, UserError)


def test_replay_with_primary_down(tmp_path: Path, endpoints: tuple[ServerThread, ServerThread, StubControl,
                                                                           StubControl]) -> None:
    from tests.stub_shadow import free_port

    _, c, _, _ = endpoints
    cfg = ShadowConfig(db=str(tmp_path / "d.db"))
    down = ShadowEndpoints.of(f"http://127.0.0.1:{free_port()}", c.url)
    outcome = asyncio.run(replay(cfg, down, load_requests(_jsonl(tmp_path / "q.jsonl", 2)), send_rps=100))
    assert (outcome.sent, outcome.compared, outcome.primary_failed) == (2, 0, 2)


def test_load_requests_reads_no_further_than_its_limit(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"prompt": "b"}\nnot json\n')
    assert [r.body for r in load_requests(path, limit=2)] == [b'{"prompt": "a"}', b'{"prompt": "b"}']
    with pytest.raises(UserError, match=rf"^{re.escape(str(path))}:4: not valid JSON \(Expecting value at column 1\)$"):
        load_requests(path)
