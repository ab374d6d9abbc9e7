"""`servecmp shadow replay` from a PostgreSQL shadow database (a real server: tests/_pg.py starts it).

- requests recorded into PostgreSQL replay as they were sent, in order, one per request (the secondary's
  rows repeat them), and read back the same as from an SQLite database recording the same requests;
- a hash-only PostgreSQL database is one error line;
- a missing driver names the extra; bad and unreachable URLs are one line without the password.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from servecmp._cli.main import build_app
from servecmp.errors import MissingExtra, UserError
from servecmp.shadow.replay import ReplayRequest, load_requests
from tests._pg import pg_server, pg_url, query
from tests.stub_shadow import ServerThread, StubControl, build_stub_app

#: The session's PostgreSQL fixtures, used here (named so the imports count as used).
FIXTURES = (pg_server, pg_url)
ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "hunter2-replay-7734"  # trust authentication ignores it; it must still never be shown

#: The recorded requests, in the order they were sent: chat and completions, one streamed.
BODIES: list[dict[str, Any]] = [
    {"model": "stub-model", "messages": [{"role": "user", "content": "first question"}]},
    {"model": "stub-model", "prompt": "Tell me a tale", "max_tokens": 8},
    {"model": "stub-model", "messages": [{"role": "user", "content": "second question"}], "stream": True},
    {"model": "stub-model", "prompt": "Once upon a time", "temperature": 0},
    {"model": "stub-model", "messages": [{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": "third question"}]},
]
PATHS = ["/v1/chat/completions", "/v1/completions", "/v1/chat/completions", "/v1/completions",
         "/v1/chat/completions"]
EXPECTED = [ReplayRequest(path, json.dumps(body).encode()) for path, body in zip(PATHS, BODIES, strict=True)]


def with_password(url: str) -> str:
    return url.replace("postgresql://servecmp@", f"postgresql://servecmp:{PASSWORD}@")


@pytest.fixture(scope="module")
def stubs() -> Iterator[tuple[ServerThread, ServerThread, ServerThread, StubControl]]:
    pctl = StubControl()
    with ServerThread(build_stub_app(pctl)) as p, \
            ServerThread(build_stub_app(StubControl(variant=1, model="cand-model"))) as c, \
            ServerThread(build_stub_app(StubControl())) as s:
        yield p, c, s, pctl


def _jsonl(path: Path) -> Path:
    path.write_text("".join(json.dumps(b) + "\n" for b in BODIES))
    return path


def _replay(stubs: tuple[ServerThread, ServerThread, ServerThread, StubControl], source: str, db: str,
            *extra: str) -> str:
    """``shadow replay SOURCE --db DB`` in-process, one request at a time (so rows are stored, and
    replayed, in the order they were sent); the command's output."""
    p, c, s, _ = stubs
    res = CliRunner().invoke(build_app(), ["shadow", "replay", source, "--baseline", p.url, "--candidate", c.url,
                                           "--secondary", s.url, "--db", db, "--send-rps", "50",
                                           "--concurrency", "1", "--no-teacher-forced", *extra])
    assert res.exit_code == 0, res.output
    return res.output


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "servecmp", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


def test_replay_from_postgres_sends_the_recorded_requests_in_order(
    tmp_path: Path, pg_url: str, stubs: tuple[ServerThread, ServerThread, ServerThread, StubControl]
) -> None:
    pg = with_password(pg_url)
    _replay(stubs, str(_jsonl(tmp_path / "q.jsonl")), pg)
    _replay(stubs, str(tmp_path / "q.jsonl"), str(tmp_path / "recorded.db"))
    # Two rows per request (candidate and secondary); replay reads one per request.
    assert query(pg_url, "SELECT target, COUNT(*) FROM pairs GROUP BY target ORDER BY target") == [
        ("candidate", 5), ("secondary", 5)]

    # The same requests from PostgreSQL as from SQLite, as sent, and --limit's first N.
    assert load_requests(pg) == EXPECTED
    assert load_requests(tmp_path / "recorded.db") == EXPECTED
    assert load_requests(pg, limit=2) == EXPECTED[:2]

    # The CLI replays them from the URL into a new database, in order, and never shows the password.
    _, _, _, pctl = stubs
    pctl.paths.clear()
    out = _replay(stubs, pg, str(tmp_path / "again.db"))
    assert PASSWORD not in out
    assert list(pctl.paths) == PATHS
    conn = sqlite3.connect(tmp_path / "again.db")
    try:
        rows = conn.execute("SELECT source, endpoint, request_json, prompt FROM pairs WHERE target = 'candidate' "
                            "ORDER BY ts, id").fetchall()
    finally:
        conn.close()
    assert [json.loads(r[2]) for r in rows] == BODIES
    assert [(r[0], r[1]) for r in rows] == [("replay", "chat"), ("replay", "completions"), ("replay", "chat"),
                                            ("replay", "completions"), ("replay", "chat")]
    assert [r[3] for r in rows] == [
        '[{"content":"first question","role":"user"}]',
        "Tell me a tale",
        '[{"content":"second question","role":"user"}]',
        "Once upon a time",
        '[{"content":"Be brief.","role":"system"},{"content":"third question","role":"user"}]',
    ]

    # --limit applies to a PostgreSQL source as to a file.
    pctl.paths.clear()
    _replay(stubs, pg, str(tmp_path / "limited.db"), "--limit", "3")
    assert list(pctl.paths) == PATHS[:3]


def test_hash_only_postgres_database_is_one_error_line(
    tmp_path: Path, pg_url: str, stubs: tuple[ServerThread, ServerThread, ServerThread, StubControl]
) -> None:
    p, c, _, _ = stubs
    _replay(stubs, str(_jsonl(tmp_path / "q.jsonl")), pg_url, "--hash-only")
    with pytest.raises(UserError) as err:
        load_requests(pg_url)
    assert str(err.value) == f"{pg_url} was recorded with --hash-only: it holds no requests to replay"

    proc = _cli("shadow", "replay", with_password(pg_url), "--baseline", p.url, "--candidate", c.url,
                "--db", str(tmp_path / "out.db"))
    assert proc.returncode == 2, proc.stderr
    assert [ln for ln in proc.stderr.splitlines() if ln.strip()] == [
        f"servecmp: error: {with_password(pg_url).replace(PASSWORD, '***')} was recorded with --hash-only: "
        "it holds no requests to replay"]
    assert PASSWORD not in proc.stderr + proc.stdout
    assert not (tmp_path / "out.db").exists()  # nothing to replay: no run was started


def test_missing_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # what `import psycopg` sees when it is not installed
    with pytest.raises(MissingExtra) as err:
        load_requests(f"postgresql://servecmp:{PASSWORD}@127.0.0.1:1/x")
    assert err.value.extra == "postgres"
    assert str(err.value) == ("a PostgreSQL shadow database needs the Python package 'psycopg': "
                              "pip install 'servecmp[postgres]'")
