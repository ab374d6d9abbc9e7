"""A throwaway PostgreSQL 15 server for the shadow store tests (session-scoped fixture).

Import the fixtures into a test module (``from tests._pg import pg_server, pg_url  # noqa: F401``).
`pg_server` starts one server per test session: initdb into a temporary directory owned by the
``postgres`` user (initdb and pg_ctl refuse to run as root), trust authentication for a ``servecmp``
superuser, listening on 127.0.0.1 only, a free port, its socket in the data directory's parent;
`pg_url` gives each test a fresh database on it. The server is stopped (``pg_ctl stop -m fast``) at
the end of the session.

No PostgreSQL binaries (or no ``runuser``, or not root): the tests skip locally and FAIL when
CI=true, so CI never passes by silently skipping the database tests.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

PG_BIN = Path(os.environ.get("SERVECMP_PG_BIN", "/usr/lib/postgresql/15/bin"))
USER = "servecmp"


@dataclass(frozen=True)
class PgServer:
    host: str
    port: int
    user: str
    data_dir: Path

    def url(self, dbname: str = "postgres", password: str | None = None) -> str:
        auth = f"{self.user}:{password}" if password else self.user
        return f"postgresql://{auth}@{self.host}:{self.port}/{dbname}"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"PostgreSQL tests cannot run: {reason} (CI=true: refusing to skip)", pytrace=False)
    pytest.skip(f"PostgreSQL tests need a local PostgreSQL 15: {reason}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres(*cmd: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", "postgres", "--", *cmd], capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    missing = [p for p in (PG_BIN / "initdb", PG_BIN / "pg_ctl") if not p.exists()]
    if missing:
        _unavailable(f"{', '.join(map(str, missing))} not found (apt-get install postgresql)")
    if shutil.which("runuser") is None or os.geteuid() != 0:
        _unavailable("the set-up runs initdb as the postgres user, which needs root and runuser")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("psycopg is not installed (pip install 'servecmp[postgres]')")
    root = Path(tempfile.mkdtemp(prefix="servecmp-pg-"))
    shutil.chown(root, "postgres", "postgres")
    data = root / "data"
    port = _free_port()
    init = _as_postgres(str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", USER)
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        _unavailable(f"initdb failed: {init.stderr.strip()[-500:]}")
    # fsync off: a test server's durability across an OS crash is not under test (a process killed
    # with -9 loses nothing either way; the OS still has every committed write).
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50"
    start = _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w",
                         "start")
    if start.returncode != 0:
        log = (root / "log").read_text() if (root / "log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        _unavailable(f"pg_ctl start failed: {start.stderr.strip()[-300:]} {log[-500:]}")
    server = PgServer("127.0.0.1", port, USER, data)
    try:
        _wait_ready(server)
        yield server
    finally:
        _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def _wait_ready(server: PgServer, timeout_s: float = 30) -> None:
    import psycopg

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with psycopg.connect(server.url(), connect_timeout=2):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """A fresh, empty database on the session's server, dropped after the test."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.url(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield pg_server.url(name)
    with psycopg.connect(pg_server.url(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def query(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url) as conn:
        return list(conn.execute(sql, params).fetchall())
