"""`servecmp shadow` on the command line: endpoints from servecmp.toml's shared `[baseline]` /
`[candidate]` sections with flags on top, `--primary` as the old name of `--baseline`, key variables
(the key reaches its endpoint, never the database), bad input as one line, renamed flags."""

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
from servecmp.errors import UserError
from tests.stub_shadow import ServerThread, StubControl, build_stub_app, free_port

ROOT = Path(__file__).resolve().parents[1]
Stubs = tuple[ServerThread, StubControl, ServerThread, StubControl]


@pytest.fixture(scope="module")
def stubs() -> Iterator[Stubs]:
    pctl, cctl = StubControl(), StubControl(variant=1, model="cand-model")
    with ServerThread(build_stub_app(pctl)) as p, ServerThread(build_stub_app(cctl)) as c:
        yield p, pctl, c, cctl


@pytest.fixture(autouse=True)
def _fresh(stubs: Stubs) -> None:
    for ctl in (stubs[1], stubs[3]):
        ctl.authorizations.clear()
        ctl.paths.clear()
        ctl.models.clear()


def requests_file(path: Path, n: int = 2) -> Path:
    lines = [{"model": "stub-model", "messages": [{"role": "user", "content": f"question {i}"}]} for i in range(n)]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # bound once, then closed: connection refused


def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(build_app(), list(args), env=env)


def db_rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def db_bytes(db: Path) -> bytes:
    return b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))


def test_replay_from_the_config_file_alone(tmp_path: Path, stubs: Stubs) -> None:
    p, pctl, c, cctl = stubs
    db = tmp_path / "cfg.db"
    toml = write_toml(tmp_path / "servecmp.toml", f"""
[baseline]
url = "{p.url}/v1"

[candidate]
url = "{c.url}"
model = "cand-model"

[shadow]
db = "{db}"
teacher_forced = false
""")
    res = invoke("shadow", "replay", str(requests_file(tmp_path / "q.jsonl", 3)), "-c", str(toml), "--send-rps", "100")
    assert res.exit_code == 0, res.output
    ((primary_url, candidate_url, secondary_url, settings),) = db_rows(
        db, "SELECT primary_url, candidate_url, secondary_url, settings FROM runs")
    assert (primary_url, candidate_url, secondary_url) == (f"{p.url}/v1", f"{c.url}/v1", None)
    stored = json.loads(settings)
    assert (stored["candidate_model"], stored["baseline_model"]) == ("cand-model", None)
    assert stored["teacher_forced"] is False
    errors = db_rows(db, "SELECT target, other_error FROM pairs")
    assert errors == [("candidate", None)] * 3
    assert list(pctl.paths) == ["/v1/chat/completions"] * 3
    assert list(cctl.models) == ["cand-model"] * 3  # the candidate's own model, from [candidate]


def test_flags_override_the_config_file_and_primary_is_baseline(tmp_path: Path, stubs: Stubs) -> None:
    p, pctl, c, _ = stubs
    toml = write_toml(tmp_path / "servecmp.toml", f"""
[baseline]
url = "{dead_url()}"

[candidate]
url = "{dead_url()}"
""")
    q = requests_file(tmp_path / "q.jsonl")
    for flag in ("--primary", "--baseline"):
        db = tmp_path / f"{flag.strip('-')}.db"
        res = invoke("shadow", "replay", str(q), "-c", str(toml), flag, p.url, "--candidate", c.url, "--db", str(db),
                     "--send-rps", "100", "--no-teacher-forced")
        assert res.exit_code == 0, res.output
        assert db_rows(db, "SELECT primary_url, candidate_url FROM runs") == [(f"{p.url}/v1", f"{c.url}/v1")]
        assert db_rows(db, "SELECT other_error, primary_error FROM pairs") == [(None, None)] * 2


def test_serve_takes_its_endpoints_from_the_config_file_and_flags(
    tmp_path: Path, stubs: Stubs, monkeypatch: pytest.MonkeyPatch
) -> None:
    import servecmp.shadow.server

    p, _, c, _ = stubs
    served: list[Any] = []
    monkeypatch.setattr(servecmp.shadow.server, "run_app", lambda proxy, **kw: served.append((proxy, kw)))
    monkeypatch.setenv("SHADOW_TEST_CAND_KEY", "sk-cand-from-config")
    toml = write_toml(tmp_path / "servecmp.toml", f"""
[baseline]
url = "{p.url}"
model = "base-model"

[candidate]
url = "{c.url}/v1/chat/completions"
api_key_env = "SHADOW_TEST_CAND_KEY"

[shadow]
port = 8765
""")
    for extra in ([], ["--primary", dead_url(), "--candidate-model", "flag-model"]):
        db = tmp_path / f"serve{len(served)}.db"
        res = invoke("shadow", "serve", "-c", str(toml), "--in-process", "--db", str(db), *extra)
        assert res.exit_code == 0, res.output
        proxy, kw = served[-1]
        targets = proxy.mirror.parts.targets
        try:
            assert kw["port"] == 8765
            assert proxy.primary.url == (extra[1] if extra else p.url)
            assert proxy.primary.model == "base-model"
            assert targets["candidate"].url == c.url  # the pasted route is cut back to the server root
            assert targets["candidate"].model == ("flag-model" if extra else None)
            assert targets["candidate"].authorization == "Bearer sk-cand-from-config"
            assert "secondary" not in targets
        finally:
            proxy.mirror.parts.writer.close()
        assert b"sk-cand-from-config" not in db_bytes(db)


def test_key_variables_reach_their_endpoint_and_never_the_database(
    tmp_path: Path, stubs: Stubs, monkeypatch: pytest.MonkeyPatch
) -> None:
    p, pctl, c, cctl = stubs
    monkeypatch.setenv("SHADOW_TEST_BASE", "sk-baseline-4417")
    monkeypatch.setenv("SHADOW_TEST_CAND", "sk-candidate-9023")
    db = tmp_path / "keys.db"
    res = invoke("shadow", "replay", str(requests_file(tmp_path / "q.jsonl")), "--baseline", p.url, "--candidate",
                 c.url, "--baseline-key-env", "SHADOW_TEST_BASE", "--candidate-key-env", "SHADOW_TEST_CAND",
                 "--db", str(db), "--send-rps", "100")
    assert res.exit_code == 0, res.output
    assert cctl.authorizations and set(cctl.authorizations) == {"Bearer sk-candidate-9023"}
    assert pctl.authorizations and set(pctl.authorizations) == {"Bearer sk-baseline-4417"}
    raw = db_bytes(db)
    assert len(db_rows(db, "SELECT id FROM pairs")) == 2  # the check below looks at a database with rows
    assert b"sk-baseline-4417" not in raw and b"sk-candidate-9023" not in raw
    assert "sk-" not in res.output


def test_an_unset_key_variable_is_one_error_before_anything_runs(tmp_path: Path, stubs: Stubs) -> None:
    p, _, c, cctl = stubs
    db = tmp_path / "none.db"
    res = invoke("shadow", "replay", str(requests_file(tmp_path / "q.jsonl")), "--baseline", p.url, "--candidate",
                 c.url, "--candidate-key-env", "SHADOW_TEST_NOT_SET_ANYWHERE", "--db", str(db))
    assert isinstance(res.exception, UserError)
    assert str(res.exception) == "environment variable SHADOW_TEST_NOT_SET_ANYWHERE (candidate API key) is not set"
    assert not db.exists() and not cctl.paths


def test_baseline_model_names_the_primary_model_in_replay(tmp_path: Path, stubs: Stubs) -> None:
    p, pctl, c, cctl = stubs
    res = invoke("shadow", "replay", str(requests_file(tmp_path / "q.jsonl")), "--baseline", p.url,
                 "--baseline-model", "base-x", "--candidate", c.url, "--db", str(tmp_path / "m.db"),
                 "--send-rps", "100", "--no-teacher-forced")
    assert res.exit_code == 0, res.output
    assert list(pctl.models) == ["base-x", "base-x"]
    # Unset --candidate-model: the candidate's only served model replaces the request's.
    assert list(cctl.models) == ["cand-model", "cand-model"]


def test_invalid_url_fails_at_once_with_one_line(tmp_path: Path, stubs: Stubs) -> None:
    db = tmp_path / "bad.db"
    proc = subprocess.run(
        [sys.executable, "-m", "servecmp", "shadow", "replay", str(requests_file(tmp_path / "q.jsonl")),
         "--baseline", "not-a-url", "--candidate", stubs[2].url, "--db", str(db)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == ["servecmp: error: 'not-a-url' is not an endpoint URL (expected http[s]://host[:port][/v1])"]
    assert not db.exists()
    # The same from servecmp.toml, for serve as for replay.
    toml = write_toml(tmp_path / "servecmp.toml", '[baseline]\nurl = "http://ok:1"\n[candidate]\nurl = "ftp://x"\n')
    for cmd in (["serve"], ["replay", str(tmp_path / "q.jsonl")]):
        res = invoke("shadow", *cmd, "-c", str(toml), "--db", str(db))
        assert isinstance(res.exception, UserError), res.output
        assert "'ftp://x' is not an endpoint URL" in str(res.exception)
    assert not db.exists()


def test_missing_endpoint_names_the_flag_and_the_section(tmp_path: Path) -> None:
    res = invoke("shadow", "replay", str(requests_file(tmp_path / "q.jsonl")), "--baseline", "http://127.0.0.1:1",
                 "-c", str(write_toml(tmp_path / "empty.toml", "")))
    assert isinstance(res.exception, UserError)
    assert str(res.exception) == (
        "no candidate endpoint: pass --candidate URL or set [candidate] url in servecmp.toml"
    )


def test_old_shadow_endpoint_keys_say_where_they_went(tmp_path: Path) -> None:
    toml = write_toml(tmp_path / "old.toml", '[shadow]\nprimary = "http://h:1"\ncandidate_api_key_env = "K"\n')
    res = invoke("shadow", "replay", str(requests_file(tmp_path / "q.jsonl")), "-c", str(toml))
    assert isinstance(res.exception, UserError)
    assert str(res.exception) == (
        "servecmp.toml: [shadow] primary is now [baseline] url, [shadow] candidate_api_key_env is now "
        "[candidate] api_key_env (the endpoint sections every command shares)"
    )


def test_replay_rps_is_now_send_rps(tmp_path: Path) -> None:
    res = invoke("shadow", "replay", str(requests_file(tmp_path / "q.jsonl")), "--baseline", "http://127.0.0.1:1",
                 "--candidate", "http://127.0.0.1:2", "--rps", "5")
    assert isinstance(res.exception, UserError)
    assert "--send-rps" in str(res.exception)


def test_the_command_module_imports_nothing_heavy() -> None:
    # `servecmp --help` imports every command module; the heavy parts wait for the command to run.
    code = ("import sys, servecmp._cli.shadow; "
            "print(sorted(m for m in ('pydantic', 'aiohttp', 'uvicorn', 'openai', 'rich', 'starlette', "
            "'servecmp.config', 'servecmp.shadow') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_serve_bounds_and_renamed_flags(tmp_path: Path, stubs: Stubs, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bounds reach the server (`Limits`) and the mirror; the old names (--primary, --queue-size,
    --mirror-concurrency) still work with one note each on stderr, and are gone from --help."""
    import servecmp.shadow.server

    p, _, c, _ = stubs
    served: list[Any] = []
    monkeypatch.setattr(servecmp.shadow.server, "run_app", lambda proxy, **kw: served.append((proxy, kw)))
    new = invoke("shadow", "serve", "--baseline", p.url, "--candidate", c.url, "--db", str(tmp_path / "a.db"),
                 "--in-process", "--max-queued", "5", "--max-queued-mb", "2", "--concurrency", "3",
                 "--max-body-mb", "1", "--max-connections", "7", "--max-upstream-connections", "4",
                 "--header-timeout", "2.5", "--body-timeout", "9", "--keepalive", "1.5")
    old = invoke("shadow", "serve", "--primary", p.url, "--candidate", c.url, "--db", str(tmp_path / "b.db"),
                 "--in-process", "--queue-size", "5", "--mirror-concurrency", "3")
    assert new.exit_code == old.exit_code == 0, (new.output, old.output)
    assert new.stderr.count("deprecated") == 0
    assert [line for line in old.stderr.splitlines() if "deprecated" in line] == [
        "servecmp: --primary is deprecated; use --baseline",
        "servecmp: --queue-size is deprecated; use --max-queued",
        "servecmp: --mirror-concurrency is deprecated; use --concurrency",
    ]
    (proxy_new, kw_new), (proxy_old, _) = served
    try:
        lim = kw_new["limits"]
        assert (lim.max_body, lim.max_connections, lim.header_timeout_s, lim.body_timeout_s, lim.keepalive_s) == (
            1024 * 1024, 7, 2.5, 9.0, 1.5)
        assert proxy_new.primary.max_connections == 4
        mirror = proxy_new.mirror
        assert (mirror._queue.maxsize, mirror._n_workers, mirror.queue_bytes) == (5, 3, 2 * 1024 * 1024)
        assert (proxy_old.primary.url, proxy_old.mirror._queue.maxsize, proxy_old.mirror._n_workers) == (p.url, 5, 3)
    finally:
        proxy_new.mirror.parts.writer.close()
        proxy_old.mirror.parts.writer.close()
    disagree = invoke("shadow", "serve", "--baseline", p.url, "--primary", dead_url(), "--candidate", c.url)
    assert isinstance(disagree.exception, UserError)
    helped = invoke("shadow", "serve", "--help").stdout
    assert "--concurrency" in helped and "--max-queued" in helped
    assert all(old not in helped for old in ("--primary", "--queue-size", "--mirror-concurrency"))


def test_replay_concurrency_and_its_old_name(tmp_path: Path, stubs: Stubs) -> None:
    p, _, c, _ = stubs
    q = requests_file(tmp_path / "q.jsonl")
    for flag in ("--concurrency", "--max-in-flight"):
        res = invoke("shadow", "replay", str(q), "--baseline", p.url, "--candidate", c.url, "--db",
                     str(tmp_path / f"{flag}.db"), "--send-rps", "100", "--no-teacher-forced", flag, "1")
        assert res.exit_code == 0, res.output
        assert ("deprecated" in res.stderr) == (flag == "--max-in-flight")
        assert db_rows(tmp_path / f"{flag}.db", "SELECT COUNT(*) FROM pairs") == [(2,)]
