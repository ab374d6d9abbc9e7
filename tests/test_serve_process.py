"""ServerPair without vLLM: start-up, readiness, failures and clean shutdown, with fake servers.

The fake (tests/fake_vllm_server.py) is launched through `ServerConfig.command`, so these tests
exercise the real process-group, signal and log handling of servecmp.serving.servers in a second or two.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from servecmp.config import ServerConfig
from servecmp.errors import UserError
from servecmp.serving import servers as serve
from servecmp.serving.servers import ServerPair, read_servers_file
from tests.stub_openai import free_port

FAKE = str(Path(__file__).with_name("fake_vllm_server.py"))
ROOT = Path(__file__).resolve().parents[1]


def fake_cfg(model_dir: Path, port: int, *extra: str, name: str = "m") -> ServerConfig:
    return ServerConfig(
        model=str(model_dir),
        served_name=name,
        port=port,
        command=[sys.executable, FAKE, "--port", "{port}", "--name", "{served_name}", *extra],
    )


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes; it only waits for its parent to reap it.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if pid_alive(p)]
        time.sleep(0.05)
    return alive


def read_pid(path: Path, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return int(path.read_text())
        time.sleep(0.02)
    raise AssertionError(f"{path} never written")


def make_pair(tmp_path: Path, servers: dict[str, ServerConfig], **kw: object) -> ServerPair:
    opts: dict[str, object] = {"show_progress": False, "poll_interval_s": 0.05, "stop_timeout_s": 5.0}
    opts.update(kw)
    return ServerPair(servers, run_dir=tmp_path / "run", **opts)  # type: ignore[arg-type]


def test_pair_starts_reports_urls_and_stops_every_process(tmp_path: Path) -> None:
    pb, pc = free_port(), free_port()
    gc_b, gc_c = tmp_path / "gc_b", tmp_path / "gc_c"
    servers = {
        "baseline": fake_cfg(tmp_path, pb, "--grandchild", str(gc_b), name="base"),
        # This grandchild ignores SIGTERM: only the SIGKILL after the grace period ends it.
        "candidate": fake_cfg(tmp_path, pc, "--grandchild", str(gc_c), "--ignore-term", name="cand"),
    }
    pair = make_pair(tmp_path, servers, stop_timeout_s=1.0)
    with pair:
        b, c = pair.handles["baseline"], pair.handles["candidate"]
        assert b.url == f"http://127.0.0.1:{pb}/v1"
        assert c.url == f"http://127.0.0.1:{pc}/v1"
        pids = [b.pid, c.pid, read_pid(gc_b), read_pid(gc_c)]
        assert all(p is not None and pid_alive(p) for p in pids)
        info = read_servers_file(pair.run_dir)
        assert info["candidate"]["served_name"] == "cand"
        assert info["baseline"]["pid"] == b.pid
        assert info["baseline"]["ready_after_s"] is not None
        assert "fake server starting" in b.log_path.read_text()
    assert wait_gone([p for p in pids if p is not None], timeout=5.0) == []


def test_server_dying_at_startup_reports_kv_cache_memory_and_stops_the_other(tmp_path: Path) -> None:
    pid_b = tmp_path / "b.pid"
    msg = "ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization`"
    servers = {
        "baseline": fake_cfg(tmp_path, free_port(), "--mode", "hang", "--pidfile", str(pid_b)),
        "candidate": fake_cfg(tmp_path, free_port(), "--mode", "exit", "--message", msg),
    }
    with pytest.raises(UserError) as err:
        make_pair(tmp_path, servers).start()
    text = str(err.value)
    assert text.startswith("candidate server exited during start-up (exit code 1;")
    assert "not enough memory for the KV cache" in text
    assert "VLLM_CPU_KVCACHE_SPACE" in text
    assert "\n" not in text
    assert wait_gone([read_pid(pid_b)]) == []


def test_unrecognised_startup_failure_quotes_the_log_tail(tmp_path: Path) -> None:
    servers = {
        "baseline": fake_cfg(tmp_path, free_port(), "--mode", "exit", "--message", "RuntimeError: weird thing 42"),
        "candidate": fake_cfg(tmp_path, free_port(), "--mode", "hang"),
    }
    with pytest.raises(UserError, match=r"baseline server exited during start-up .*RuntimeError: weird thing 42"):
        make_pair(tmp_path, servers).start()


def test_startup_timeout_names_the_server_and_kills_it(tmp_path: Path) -> None:
    pid_c = tmp_path / "c.pid"
    servers = {
        "baseline": fake_cfg(tmp_path, free_port()),
        "candidate": fake_cfg(tmp_path, free_port(), "--mode", "hang", "--pidfile", str(pid_c)),
    }
    with pytest.raises(UserError, match=r"^candidate server not ready after 1 s"):
        make_pair(tmp_path, servers, startup_timeout_s=1.0).start()
    assert wait_gone([read_pid(pid_c)]) == []


def test_port_in_use_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        pidfile = tmp_path / "b.pid"
        servers = {
            "baseline": fake_cfg(tmp_path, free_port(), "--pidfile", str(pidfile)),
            "candidate": fake_cfg(tmp_path, port),
        }
        pair = make_pair(tmp_path, servers)
        with pytest.raises(UserError, match=f"^port {port} on 127.0.0.1 is already in use"):
            pair.start()
    assert all(h.process is None for h in pair.handles.values())
    assert not pidfile.exists()


def test_same_port_twice_missing_model_and_missing_vllm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    with pytest.raises(UserError, match=f"both use port {port}"):
        make_pair(tmp_path, {"baseline": fake_cfg(tmp_path, port), "candidate": fake_cfg(tmp_path, port)}).start()
    missing = tmp_path / "no-such-checkpoint"
    with pytest.raises(UserError, match=f"^baseline model path {missing} does not exist$"):
        make_pair(tmp_path, {"baseline": fake_cfg(missing, free_port())}).start()

    real_find_spec = serve.importlib.util.find_spec
    monkeypatch.setattr(
        serve.importlib.util, "find_spec", lambda name: None if name == "vllm" else real_find_spec(name)
    )
    vllm_cfg = ServerConfig(model=str(tmp_path), port=free_port())  # no command: the real vLLM launch
    with pytest.raises(UserError, match="^vLLM is not installed in this Python: pip install"):
        make_pair(tmp_path, {"baseline": vllm_cfg}).start()


def test_sigterm_to_servecmp_stops_the_servers(tmp_path: Path) -> None:
    """The parent is killed politely (SIGTERM) while serving: no server or grandchild survives."""
    gc = tmp_path / "gc"
    ports = (free_port(), free_port())
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        sys.path.insert(0, {str(ROOT)!r})
        from servecmp.config import ServerConfig
        from servecmp.serving.servers import ServerPair
        def cfg(port, *extra):
            return ServerConfig(model={str(tmp_path)!r}, port=port,
                                command=[sys.executable, {FAKE!r}, "--port", "{{port}}", "--name", "{{served_name}}",
                                         *extra])
        servers = {{"baseline": cfg({ports[0]}, "--grandchild", {str(gc)!r}), "candidate": cfg({ports[1]})}}
        with ServerPair(servers, run_dir=Path({str(tmp_path / "run")!r}), show_progress=False,
                        poll_interval_s=0.05, stop_timeout_s=5) as pair:
            pids = [h.pid for h in pair.handles.values()]
            Path({str(tmp_path / "pids")!r}).write_text(" ".join(map(str, pids)))
            while True:
                time.sleep(0.1)
    """))
    parent = subprocess.Popen([sys.executable, str(script)])
    try:
        pids_file = tmp_path / "pids"
        deadline = time.monotonic() + 30
        while not pids_file.exists() and time.monotonic() < deadline:
            assert parent.poll() is None, "parent died before the servers were ready"
            time.sleep(0.05)
        pids = [int(p) for p in pids_file.read_text().split()] + [read_pid(gc)]
        assert all(pid_alive(p) for p in pids)
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=20) == 128 + signal.SIGTERM
        assert wait_gone(pids) == []
    finally:
        if parent.poll() is None:
            parent.kill()


def test_check_alive_reports_a_server_that_died_while_serving(tmp_path: Path) -> None:
    servers = {"baseline": fake_cfg(tmp_path, free_port()), "candidate": fake_cfg(tmp_path, free_port())}
    with make_pair(tmp_path, servers) as pair:
        pair.check_alive()
        proc = pair.handles["candidate"].process
        assert proc is not None
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
        with pytest.raises(UserError, match=r"^candidate server exited while serving \(killed by signal 9;"):
            pair.check_alive()


def test_a_second_interrupt_while_stopping_kills_what_is_left(monkeypatch: pytest.MonkeyPatch) -> None:
    # A child that ignores SIGTERM would outlive the grace period; an interrupt during that wait
    # (a second Ctrl-C, or SIGTERM to servecmp) must SIGKILL it before unwinding, not skip the kill.
    child = subprocess.Popen(
        [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                               "print('ready', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, start_new_session=True,
    )
    assert child.stdout is not None and child.stdout.readline() == b"ready\n"

    class InterruptedClock:
        monotonic = staticmethod(time.monotonic)

        @staticmethod
        def sleep(_: float) -> None:
            raise KeyboardInterrupt

    monkeypatch.setattr(serve, "time", InterruptedClock)  # the servers module's clock only
    with pytest.raises(KeyboardInterrupt):
        serve.stop_processes([child], grace_s=60)
    assert child.wait(timeout=10) == -signal.SIGKILL
