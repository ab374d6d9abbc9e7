"""The PostgreSQL shadow store against a real PostgreSQL 15 server (tests/_pg.py starts it).

- the same traffic recorded in SQLite and in PostgreSQL gives the same rows, counters and report;
- two proxy processes write to one database at once, and one is killed with SIGKILL (proxy and its
  mirror process): every request it counted as recorded (``servecmp_shadow_recorded_total`` on
  /metrics, raised only after the batch's commit) is in the database;
- the size cap, a missing driver, bad and unreachable URLs (one line, exit 2, password never shown).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from servecmp._cli.main import build_app
from servecmp.config import ShadowConfig
from servecmp.errors import MissingExtra, UserError
from servecmp.shadow.store import PAIR_COLUMNS, open_store
from servecmp.shadow.summary import load_summary
from servecmp.shadow.wiring import ShadowEndpoints
from tests._pg import PgServer, pg_server, pg_url, query
from tests.stub_shadow import ServerThread, StubControl, build_stub_app, free_port
from tests.test_shadow_metrics import scrape, total
from tests.test_shadow_proxy import CHAT, COMPLETIONS, Proxy, chat_body, completion_body, wait_for

#: The session's PostgreSQL fixtures, used here (named so the imports count as used).
FIXTURES = (pg_server, pg_url)
ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "hunter2-pw-5521"  # trust authentication ignores it; it must still never be shown or stored


def with_password(url: str) -> str:
    return url.replace("postgresql://servecmp@", f"postgresql://servecmp:{PASSWORD}@")


@pytest.fixture(scope="module")
def stubs() -> Iterator[tuple[ServerThread, ServerThread, ServerThread]]:
    with ServerThread(build_stub_app(StubControl())) as p, \
            ServerThread(build_stub_app(StubControl(variant=1, model="cand-model"))) as c, \
            ServerThread(build_stub_app(StubControl())) as s:
        yield p, c, s


def drive(proxy: Proxy, n: int) -> None:
    for i in range(n):
        if i % 2:
            r = httpx.post(proxy.url + COMPLETIONS, json=completion_body(f"tale {i}", stream=i % 3 == 0))
        else:
            r = httpx.post(proxy.url + CHAT, json=chat_body(f"q {i}", stream=i % 4 == 0))
        assert r.status_code == 200


VOLATILE = {"id", "run_id", "request_id", "ts", "primary_latency_s", "other_latency_s", "latency_ratio"}


def comparable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]
    return sorted(out, key=lambda r: (r["prompt"], r["target"]))


def test_postgres_records_what_sqlite_records(
    tmp_path: Path, pg_url: str, stubs: tuple[ServerThread, ServerThread, ServerThread]
) -> None:
    p, c, s = stubs
    endpoints = ShadowEndpoints.of(p.url, c.url, s.url)
    loaded = {}
    for name, db in (("sqlite", str(tmp_path / "s.db")), ("pg", with_password(pg_url))):
        proxy = Proxy(ShadowConfig(db=db, mirror_process=False), endpoints)
        try:
            drive(proxy, 8)
        finally:
            proxy.stop()
        conn = open_store(db, readonly=True)
        try:
            loaded[name] = conn.load()
        finally:
            conn.close()
    (lite_rows, lite_counters, _), (pg_rows, pg_counters, pg_runs) = loaded["sqlite"], loaded["pg"]
    assert len(pg_rows) == 16 and list(pg_rows[0]) == ["id", *PAIR_COLUMNS]
    assert comparable(pg_rows) == comparable(lite_rows)
    assert pg_counters == lite_counters
    assert (pg_counters["requests"], pg_counters["mirrored"], pg_counters["recorded"]) == (8, 8, 16)
    # The run's stored settings name the database without its password.
    settings = json.loads(pg_runs[0]["settings"])
    assert settings["db"] == with_password(pg_url).replace(PASSWORD, "***")
    assert not query(pg_url, "SELECT 1 FROM runs WHERE settings LIKE %s", (f"%{PASSWORD}%",))

    # `shadow report URL` reads it as it reads the file: the same numbers.
    runner = CliRunner()
    res = runner.invoke(build_app(), ["shadow", "report", "--db", with_password(pg_url), "--json", "--n-boot", "200"])
    assert res.exit_code == 0, res.output
    assert PASSWORD not in res.output
    from_pg = json.loads(res.stdout)
    from_file = load_summary(tmp_path / "s.db", n_boot=200).model_dump(mode="json")
    assert from_pg["database"] == with_password(pg_url).replace(PASSWORD, "***")
    for key in ("counters", "compared_requests", "has_secondary", "candidate_errors"):
        assert from_pg[key] == from_file[key], key
    # Every measure but the latency ratio (timing differs between the two runs).
    timeless = [[m for m in d["measures"] if m["key"] != "latency_ratio"] for d in (from_pg, from_file)]
    assert timeless[0] == timeless[1] and len(timeless[0]) == 14
    table = runner.invoke(build_app(), ["shadow", "report", "--db", with_password(pg_url)], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and PASSWORD not in table.output and "***" in table.output


def _serve(stubs: tuple[ServerThread, ServerThread, ServerThread], db: str, log: Path) -> tuple[subprocess.Popen[bytes],
                                                                                               str]:
    p, c, _ = stubs
    port = free_port()
    cmd = [sys.executable, "-m", "servecmp", "shadow", "serve", "--baseline", p.url, "--candidate", c.url,
           "--port", str(port), "--db", db, "--no-teacher-forced"]
    # Its own session: SIGKILL to the group takes the proxy and its mirror process at once, as an
    # OOM kill or a node loss would.
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log.open("wb"), start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"proxy exited: {log.read_text()}")
        try:
            return httpx.get(url + "/metrics", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    assert wait_for(ready, 120)
    return proc, url


def _sender(url: str, stop: threading.Event, sent: list[int], limit: int | None = None) -> None:
    i = 0
    with httpx.Client(timeout=30) as client:
        while not stop.is_set() and (limit is None or i < limit):
            try:
                r = client.post(url + CHAT, json=chat_body(f"{url} {i}"))
            except httpx.HTTPError:
                return  # the proxy was killed
            assert r.status_code == 200
            i += 1
            sent[0] = i


def _run_id(samples: dict[Any, float]) -> str:
    (labels,) = [ls for (name, ls) in samples if name == "servecmp_shadow_run_info"]
    return dict(labels)["run_id"]


def test_two_replicas_write_at_once_and_a_killed_one_loses_nothing_it_counted(
    tmp_path: Path, pg_url: str, stubs: tuple[ServerThread, ServerThread, ServerThread]
) -> None:
    db = with_password(pg_url)
    a, a_url = _serve(stubs, db, tmp_path / "a.log")
    b, b_url = _serve(stubs, db, tmp_path / "b.log")
    try:
        run_a, run_b = _run_id(scrape(a_url)), _run_id(scrape(b_url))
        stop_a = threading.Event()
        sent_a, sent_b = [0], [0]
        threads = [threading.Thread(target=_sender, args=(a_url, stop_a, sent_a)),
                   threading.Thread(target=_sender, args=(b_url, threading.Event(), sent_b, 40))]
        for t in threads:
            t.start()
        # Both replicas are committing batches at once; A is killed while traffic still flows to it.
        assert wait_for(lambda: total(scrape(a_url), "servecmp_shadow_recorded_total") >= 10, 120)
        counted = total(scrape(a_url), "servecmp_shadow_recorded_total")  # the last scrape before the kill
        os.killpg(a.pid, signal.SIGKILL)
        a.wait(30)
        stop_a.set()
        threads[1].join(120)
        assert sent_b[0] == 40
        b_done = lambda: total(scrape(b_url), "servecmp_shadow_recorded_total") == 40  # noqa: E731
        assert wait_for(b_done, 60)
        b.send_signal(signal.SIGINT)  # B stops as a replica normally does: drain, store, exit
        assert b.wait(60) == 0
        threads[0].join(30)
    finally:
        for proc in (a, b):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)

    rows = dict(query(pg_url, "SELECT run_id, COUNT(*) FROM pairs GROUP BY run_id"))
    counters = {(r, n): v for r, n, v in query(pg_url, "SELECT run_id, name, value FROM counters")}
    assert set(rows) == {run_a, run_b}
    # Every row A counted as recorded is there; the database's own "recorded" commits with the rows.
    assert rows[run_a] >= counted >= 10
    assert counters[(run_a, "recorded")] == rows[run_a]
    # B finished normally: every request compared and stored, nothing dropped.
    assert rows[run_b] == 40
    assert {n: counters[(run_b, n)] for n in ("requests", "mirrored", "recorded")} == {
        "requests": 40, "mirrored": 40, "recorded": 40}
    assert sum(v for (r, n), v in counters.items() if r == run_b and n.startswith("dropped_")) == 0
    # One report over both replicas.
    summary = load_summary(pg_url, n_boot=200)
    assert summary.compared_requests == rows[run_a] + rows[run_b]
    assert {r.run_id for r in summary.runs} == {run_a, run_b}
    for log in ("a.log", "b.log"):
        assert PASSWORD not in (tmp_path / log).read_text()


def test_size_cap_in_postgres(pg_url: str, stubs: tuple[ServerThread, ServerThread, ServerThread]) -> None:
    p, c, _ = stubs
    cap_mb = 0.5
    proxy = Proxy(ShadowConfig(db=pg_url, mirror_process=False, max_db_mb=cap_mb, teacher_forced=False),
                  ShadowEndpoints.of(p.url, c.url))
    try:
        for i in range(60):
            noise = os.urandom(3000).hex()  # incompressible: TOAST cannot shrink it
            assert httpx.post(proxy.url + CHAT, json=chat_body(f"{i} {noise}")).status_code == 200
            wait_for(lambda i=i: proxy.proxy.counters.get("mirrored") == i + 1)  # one batch per request
    finally:
        proxy.stop()
    ((stored,),) = query(pg_url, "SELECT COUNT(*) FROM pairs")
    counters = dict(query(pg_url, "SELECT name, value FROM counters"))
    assert 0 < stored < 60
    assert counters["dropped_db_full"] == 60 - stored
    assert counters["recorded"] == stored


def test_missing_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # what `import psycopg` sees when it is not installed
    with pytest.raises(MissingExtra) as err:
        open_store("postgresql://servecmp@127.0.0.1:1/x")
    assert err.value.extra == "postgres"
    assert str(err.value) == ("a PostgreSQL shadow database needs the Python package 'psycopg': "
                              "pip install 'servecmp[postgres]'")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "servecmp", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


def test_bad_and_unreachable_urls_are_one_line_without_the_password(
    pg_server: PgServer, pg_url: str, stubs: tuple[ServerThread, ServerThread, ServerThread]
) -> None:
    p, c, _ = stubs
    closed = free_port()
    cases = {
        f"postgresql://servecmp:{PASSWORD}@127.0.0.1:{closed}/x":
            f"servecmp: error: cannot connect to shadow database postgresql://servecmp:***@127.0.0.1:{closed}/x: ",
        f"postgresql://servecmp:{PASSWORD}@127.0.0.1:notaport/x":
            "servecmp: error: cannot connect to shadow database postgresql://servecmp:***@127.0.0.1:notaport/x: ",
        f"postgres://servecmp@127.0.0.1:{pg_server.port}/no_such_db?password={PASSWORD}":
            f"servecmp: error: cannot connect to shadow database postgres://servecmp@127.0.0.1:{pg_server.port}"
            "/no_such_db?password=***: ",
    }
    for url, start in cases.items():
        for args in (["shadow", "serve", "--baseline", p.url, "--candidate", c.url, "--db", url, "--in-process"],
                     ["shadow", "report", "--db", url],
                     # As replay's input (requests recorded in PostgreSQL): tests/test_shadow_replay_pg.py.
                     ["shadow", "replay", url, "--baseline", p.url, "--candidate", c.url, "--db", os.devnull]):
            proc = _cli(*args)
            lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
            assert proc.returncode == 2, proc.stderr
            assert len(lines) == 1 and lines[0].startswith(start), (args, proc.stderr)
            assert PASSWORD not in proc.stderr + proc.stdout
    # A reachable database without servecmp's tables is not a shadow database, to read or to replay.
    for args in (["shadow", "report", "--db", pg_url],
                 ["shadow", "replay", pg_url, "--baseline", p.url, "--candidate", c.url]):
        res = CliRunner().invoke(build_app(), args)
        assert isinstance(res.exception, UserError)
        assert str(res.exception) == f"{pg_url} is not a servecmp shadow database (no pairs table)"


def test_sqlite_and_postgres_share_one_schema(tmp_path: Path, pg_url: str) -> None:
    from servecmp.shadow.store import TABLES

    for db in (str(tmp_path / "s.db"), pg_url):
        open_store(db).close()
    conn = sqlite3.connect(tmp_path / "s.db")
    try:
        lite = {t: [r[1] for r in conn.execute(f"PRAGMA table_info({t})")] for t in TABLES}
    finally:
        conn.close()
    pg = {t: [r[0] for r in query(pg_url, "SELECT column_name FROM information_schema.columns WHERE table_name = %s "
                                  "ORDER BY ordinal_position", (t,))] for t in TABLES}
    assert pg == lite == {t: [name for name, _, _ in cols] for t, (cols, _) in TABLES.items()}
    assert query(pg_url, "SELECT value FROM meta WHERE key = 'schema_version'") == [("3",)]


def test_a_lost_database_connection_costs_at_most_the_batch_in_flight(
    pg_url: str, pg_server: PgServer, stubs: tuple[ServerThread, ServerThread, ServerThread]
) -> None:
    p, c, _ = stubs
    proxy = Proxy(ShadowConfig(db=pg_url, mirror_process=False, teacher_forced=False), ShadowEndpoints.of(p.url, c.url))
    dbname = pg_url.rsplit("/", 1)[1]
    try:
        for i in range(6):
            if i == 3:
                # The server drops the writer's connection (a restart or failover looks the same).
                query(pg_server.url(), "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE datname = %s AND pid <> pg_backend_pid()", (dbname,))
            assert httpx.post(proxy.url + CHAT, json=chat_body(f"r{i}")).status_code == 200
            assert wait_for(lambda i=i: proxy.proxy.counters.get("recorded")
                            + proxy.proxy.counters.get("dropped_db_error") == i + 1, 30)
    finally:
        proxy.stop()
    ((stored,),) = query(pg_url, "SELECT COUNT(*) FROM pairs")
    counters = dict(query(pg_url, "SELECT name, value FROM counters"))
    # At most the one batch that met the dead connection is lost; the writer reconnected for the rest.
    assert counters["dropped_db_error"] <= 1
    assert stored == counters["recorded"] == 6 - counters["dropped_db_error"]
