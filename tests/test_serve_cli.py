"""`servecmp serve` and `servecmp models` from the command line, with fake servers in the config."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.stub_openai import free_port
from tests.test_serve_process import FAKE, pid_alive, wait_gone

ROOT = Path(__file__).resolve().parents[1]


def write_config(tmp_path: Path, baseline_port: int, candidate_port: int, *cand_extra: str) -> Path:
    def section(role: str, port: int, extra: tuple[str, ...]) -> str:
        cmd = [sys.executable, FAKE, "--port", "{port}", "--name", "{served_name}", *extra]
        return (f"[serve.{role}]\nmodel = {json.dumps(str(tmp_path))}\nserved_name = \"{role}-model\"\n"
                f"port = {port}\ncommand = {json.dumps(cmd)}\n\n")

    cfg = tmp_path / "servecmp.toml"
    cfg.write_text("[serve]\nstop_timeout_s = 5\n\n" + section("baseline", baseline_port, ())
                   + section("candidate", candidate_port, cand_extra))
    return cfg


def default_sigint() -> None:
    """Ctrl-C as a terminal delivers it: a child started while the test process ignores SIGINT (a CI
    job started in the background, or a library that set SIG_IGN) would inherit the ignore and never
    see the signal these tests send."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def servecmp(*args: str, **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "servecmp", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, preexec_fn=default_sigint,
                            env={**os.environ, "COLUMNS": "200"}, **kw)  # type: ignore[call-overload]


def test_serve_prints_both_urls_and_ctrl_c_stops_both(tmp_path: Path) -> None:
    port_flag, cand_port = free_port(), free_port()
    cfg = write_config(tmp_path, free_port(), cand_port)
    proc = servecmp("serve", "--config", str(cfg), "--runs-dir", str(tmp_path / "runs"),
                    "--baseline-port", str(port_flag))
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        assert lines[0].split()[:2] == ["baseline", f"http://127.0.0.1:{port_flag}/v1"]
        assert lines[1].split()[:2] == ["candidate", f"http://127.0.0.1:{cand_port}/v1"]
        assert "model=candidate-model" in lines[1]
        (run_dir,) = (tmp_path / "runs").iterdir()
        servers = json.loads((run_dir / "servers.json").read_text())
        pids = [servers["baseline"]["pid"], servers["candidate"]["pid"]]
        assert all(pid_alive(p) for p in pids)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert f"stopped both servers (logs in {run_dir})" in err
        assert wait_gone(pids) == []
        assert (run_dir / "baseline.log").read_text().startswith("fake server starting")
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_server_failing_at_startup_is_one_line_and_exit_2(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, free_port(), free_port(), "--mode", "exit", "--message",
                       "ValueError: To serve at least one request ... which is larger than the available "
                       "KV cache memory (0.5 GiB)")
    proc = servecmp("serve", "--config", str(cfg), "--runs-dir", str(tmp_path / "runs"))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in err
    (line,) = [ln for ln in err.splitlines() if "error" in ln]
    assert "candidate server exited during start-up" in line
    assert "not enough memory for the KV cache" in line


def test_config_with_only_one_server_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "servecmp.toml"
    cfg.write_text(f'[serve.baseline]\nmodel = "{tmp_path}"\nport = {free_port()}\n')
    proc = servecmp("serve", "--config", str(cfg))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "configures only one server: add a serve.candidate section too (or neither)" in err


def test_a_typo_in_a_server_section_names_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "servecmp.toml"
    cfg.write_text(f'[serve.baseline]\nmodel = "{tmp_path}"\nprot = 8001\n')
    proc = servecmp("serve", "--config", str(cfg))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "serve.baseline.port: Field required" in err or "serve.baseline.prot" in err


def test_unknown_candidate_scheme_is_refused() -> None:
    proc = servecmp("models", "build", "--candidate-scheme", "w2a2")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "unknown candidate scheme 'w2a2' (known: w8a8, w8a8-tensor, w4a16, rtn-intB (B 2-8, simulated), " in err




def test_an_old_flag_name_still_works_with_one_deprecation_line() -> None:
    proc = servecmp("models", "build", "--scheme", "w2a2")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines[0] == "servecmp: --scheme is deprecated; use --candidate-scheme"
    assert "unknown candidate scheme 'w2a2'" in err
    help_proc = servecmp("models", "build", "--help")
    out, _ = help_proc.communicate(timeout=60)
    assert "--candidate-scheme" in out and "--scheme " not in out.replace("--candidate-scheme", "")
