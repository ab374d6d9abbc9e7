"""Run a model-written Python program under limits, and say whether it passed.

Model code runs only when the user asked for it (`require_code_execution`). Each program runs in
its own process, started through a small trusted launcher (`_LAUNCHER`, run with ``python -I -c``)
that sets everything up and then ``execv``'s the interpreter on the program, so no untrusted code
runs before the limits are in place and the parent (an asyncio process with threads) never runs
setup code between fork and exec. The launcher, in order:

1. network: ``unshare(CLONE_NEWNET)`` (as root), or ``unshare(CLONE_NEWUSER | CLONE_NEWNET)``
   with the caller's own uid mapped (unprivileged, where user namespaces are enabled): the program
   sees a network namespace with only a loopback interface that is down, so it can reach nothing,
   not even the host's 127.0.0.1. Where neither is permitted the program runs with the host's
   network and `ExecResult.network_isolated` says so (`network_isolation_available()` tells in
   advance);
2. limits: RLIMIT_CPU (CPU seconds; SIGXCPU then SIGKILL), RLIMIT_AS (address space, so a large
   allocation fails with MemoryError), RLIMIT_FSIZE (largest file written), RLIMIT_NOFILE,
   RLIMIT_CORE 0, and RLIMIT_NPROC for "no new processes";
3. identity: as root, RLIMIT_NPROC does not apply (the kernel exempts uid 0), so the launcher
   switches to a uid of its own (`_sandbox_uid`: no other process has it, so RLIMIT_NPROC = 1
   means "this process only" and fork/clone fail with EAGAIN); as another user it sets
   RLIMIT_NPROC = 0, which the user's existing processes already exceed, to the same effect.
   Threads count as processes too, so the program cannot start threads either. When the Python
   installation is not readable by that uid (pyenv under /root, mode 700), the launcher shows it
   read-only inside the program's directory through a mount namespace of the program's own;
4. the program runs on the base interpreter with ``-I -S -B`` (standard library only), in a fresh
   temporary directory (owned by that uid, removed afterwards) as working directory and HOME, with
   an environment of PATH/HOME/LANG only (no API keys), stdin from /dev/null.

The parent enforces the wall-time limit (the whole process group is killed) and bounds the output
it keeps. What this does not protect against is in the README ("Code execution").
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from servecmp.errors import UserError

#: Exit code of the launcher when it could not set up what was required (before the program ran).
LAUNCH_FAILED = 97
#: Exit code of the launcher when network isolation was required but is not permitted.
NO_NETWORK_ISOLATION = 98

# Runs as `python -I -c _LAUNCHER JSON` (JSON: see `_launcher_argv`), as the child's first code.
# Plain stdlib, no servecmp import (-I ignores PYTHONPATH, and the launcher must not depend on the
# parent's environment). Exit 98: network isolation not permitted; 97: any other setup failure.
_LAUNCHER = r"""
import ctypes, json, os, resource, sys
cfg = json.loads(sys.argv[1])
CLONE_NEWNET, CLONE_NEWUSER, CLONE_NEWNS = 0x40000000, 0x10000000, 0x00020000
MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 32, 4096, 16384, 1 << 18
libc = ctypes.CDLL(None, use_errno=True)
def fail(code, msg):
    os.write(2, ("servecmp-sandbox: " + msg + "\n").encode())
    os._exit(code)
def check(ret, code, what):
    if ret != 0:
        fail(code, what + " failed: " + os.strerror(ctypes.get_errno()))
python = cfg["python"]
if cfg["net"] == "user":
    real_uid, real_gid = os.getuid(), os.getgid()
    check(libc.unshare(CLONE_NEWUSER | CLONE_NEWNET), 98, "unshare(CLONE_NEWUSER|CLONE_NEWNET)")
    # Map our own ids so files keep their owner; setgroups must be denied first.
    for name, text in (("setgroups", "deny"), ("uid_map", f"{real_uid} {real_uid} 1"),
                       ("gid_map", f"{real_gid} {real_gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)
elif cfg["net"] == "root":
    check(libc.unshare(CLONE_NEWNET), 98, "unshare(CLONE_NEWNET)")
if cfg["bind_prefix"]:
    # The interpreter lives where the sandbox uid cannot read (e.g. pyenv under /root, mode 700):
    # show it, read-only, inside the program's directory, in a mount namespace of its own.
    src, dst = cfg["bind_prefix"]
    check(libc.unshare(CLONE_NEWNS), 97, "unshare(CLONE_NEWNS)")
    check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), 97, "making mounts private")
    check(libc.mount(src.encode(), dst.encode(), None, MS_BIND | MS_REC, None), 97, "bind-mounting " + src)
    check(libc.mount(None, dst.encode(), None, MS_REMOUNT | MS_BIND | MS_RDONLY, None), 97, "remounting read-only")
env = dict(cfg["env"])
try:
    for which, soft, hard in cfg["limits"]:
        resource.setrlimit(getattr(resource, which), (soft, hard))
    uid = cfg["uid"]
    if uid >= 0:
        # Drop root: NPROC counts processes of the real uid, and uid 0 is exempt from it.
        resource.setrlimit(resource.RLIMIT_NPROC, (1, 1))
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    else:
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    os.chdir(cfg["cwd"])
    os.execve(python, [python, "-I", "-S", "-B", cfg["program"]], env)
except OSError as exc:
    fail(97, f"{type(exc).__name__}: {exc}")
"""


@dataclass(frozen=True)
class ExecLimits:
    """Limits of one program run. Defaults suit HumanEval (its tests finish in well under a second)."""

    cpu_seconds: int = 10
    wall_seconds: float = 20.0
    memory_bytes: int = 1 << 30
    file_bytes: int = 16 << 20
    open_files: int = 64
    #: Bytes of stdout/stderr kept each (the rest is drained and dropped).
    output_bytes: int = 64 << 10


@dataclass(frozen=True)
class ExecResult:
    passed: bool
    #: "passed", or why not: "wall-time limit (20 s)", "CPU limit (10 s)", "memory limit",
    #: "process creation refused", "exit code 1: AssertionError", ...
    reason: str
    returncode: int | None
    network_isolated: bool
    stdout: str = ""
    stderr: str = ""


def require_code_execution(allowed: bool) -> None:
    """UserError unless the user passed --allow-code-execution."""
    if not allowed:
        raise UserError("this task runs model-written code: pass --allow-code-execution to allow it "
                        "(each program runs in its own process with CPU, memory, time and process limits; "
                        "see the README for what that does not protect against)")


def _net_mode() -> str:
    return "root" if os.geteuid() == 0 else "user"


def _others_can_reach(path: Path) -> bool:
    """Whether a user with no special rights can traverse to ``path`` and read inside it (the
    o+x bit on every ancestor, o+rx on the directory itself)."""
    try:
        for parent in [*reversed(path.parents), path]:
            if not parent.stat().st_mode & 0o001:
                return False
        return bool(path.stat().st_mode & 0o004)
    except OSError:
        return False


def _interpreter() -> tuple[Path, Path]:
    """(base installation prefix, interpreter binary inside it). The program runs on the base
    interpreter with -I -S: the standard library only, no venv or user site-packages."""
    prefix = Path(sys.base_prefix).resolve()
    binary = Path(sys.executable).resolve()
    if prefix not in binary.parents:
        binary = prefix / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    return prefix, binary


def _launcher_argv(program: Path, workdir: Path, lim: ExecLimits, *, net: str, uid: int) -> list[str]:
    prefix, binary = _interpreter()
    bind: list[str] | None = None
    python = binary
    env = _clean_env(str(workdir))
    if uid >= 0 and not _others_can_reach(prefix):
        shown = workdir / ".python"
        shown.mkdir(mode=0o755)
        bind = [str(prefix), str(shown)]
        python = shown / binary.relative_to(prefix)
        # A RUNPATH to the hidden prefix (pyenv builds) would not resolve for the sandbox uid.
        env["LD_LIBRARY_PATH"] = str(shown / "lib")
    cfg = {
        "program": str(program), "cwd": str(workdir), "python": str(python), "net": net, "uid": uid,
        "bind_prefix": bind, "env": env,
        "limits": [("RLIMIT_CPU", lim.cpu_seconds, lim.cpu_seconds + 1),
                   ("RLIMIT_AS", lim.memory_bytes, lim.memory_bytes),
                   ("RLIMIT_FSIZE", lim.file_bytes, lim.file_bytes),
                   ("RLIMIT_NOFILE", lim.open_files, lim.open_files),
                   ("RLIMIT_CORE", 0, 0)],
    }
    return [sys.executable, "-I", "-c", _LAUNCHER, json.dumps(cfg)]


@functools.cache
def network_isolation_available() -> bool:
    """Whether this machine lets the launcher put a program in its own network namespace (tried
    once, with a program that does nothing, under the same identity as real programs)."""
    result = _execute("pass\n", ExecLimits(cpu_seconds=5, wall_seconds=30), net=_net_mode())
    return result.passed


_uid_counter = itertools.count()
_uid_lock = threading.Lock()
#: Sandbox uids: a block far above ordinary users; each program gets the next one (see the module
#: docstring for why a uid of its own).
_UID_BASE = 1_500_000_000
_UID_SPAN = 100_000_000


def _sandbox_uid() -> int:
    with _uid_lock:
        n = next(_uid_counter)
    # The parent's pid spreads concurrent servecmp processes over the block.
    return _UID_BASE + (os.getpid() * 10_007 + n) % _UID_SPAN


def _clean_env(home: str) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}


def run_program(source: str, limits: ExecLimits | None = None, *, isolate_network: bool | None = None) -> ExecResult:
    """Run ``source`` (a whole Python program) under `limits`; it passes when it exits with 0.

    ``isolate_network``: None = where the OS allows it (`network_isolation_available`); True =
    required (UserError if not permitted); False = not attempted.
    """
    lim = limits or ExecLimits()
    if isolate_network is None:
        isolate_network = network_isolation_available()
    elif isolate_network and not network_isolation_available():
        raise UserError("network isolation of model code was required, but this machine does not permit "
                        "network namespaces (unshare)")
    return _execute(source, lim, net=_net_mode() if isolate_network else "none")


def _execute(source: str, lim: ExecLimits, *, net: str) -> ExecResult:
    root = os.geteuid() == 0
    workdir = Path(tempfile.mkdtemp(prefix="servecmp-exec-"))
    try:
        workdir.chmod(0o755)
        program = workdir / "program.py"
        program.write_text(source, encoding="utf-8")
        uid = _sandbox_uid() if root else -1
        argv = _launcher_argv(program, workdir, lim, net=net, uid=uid)
        if root:
            os.chown(workdir, uid, uid)
            os.chown(program, uid, uid)
        return _run(argv, str(workdir), lim, network_isolated=net != "none")
    finally:
        if root:
            # Files the program made belong to its uid and may be read-only directories; reclaim
            # them so the removal cannot fail halfway.
            for path in [workdir, *workdir.rglob("*")]:
                with contextlib.suppress(OSError):
                    os.lchown(path, 0, 0)
                    if path.is_dir() and not path.is_symlink():
                        path.chmod(0o700)
        shutil.rmtree(workdir, ignore_errors=True)


def _run(argv: list[str], cwd: str, lim: ExecLimits, *, network_isolated: bool) -> ExecResult:
    proc = subprocess.Popen(argv, cwd=cwd, env=_clean_env(cwd), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    out, err = bytearray(), bytearray()
    readers = [threading.Thread(target=_drain, args=(stream, buf, lim.output_bytes), daemon=True)
               for stream, buf in ((proc.stdout, out), (proc.stderr, err))]
    for t in readers:
        t.start()
    timed_out = False
    try:
        proc.wait(timeout=lim.wall_seconds)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        # NPROC leaves the program no children, but kill its whole session in case a limit was
        # not in force (e.g. a kernel that ignores one).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    for t in readers:
        t.join(timeout=5)
    stdout = out.decode("utf-8", "replace")
    stderr = err.decode("utf-8", "replace")
    code = proc.returncode
    reason = _reason(code, stderr, lim, timed_out)
    return ExecResult(passed=reason == "passed", reason=reason, returncode=None if timed_out else code,
                      network_isolated=network_isolated, stdout=stdout, stderr=stderr)


def _drain(stream: object, buf: bytearray, cap: int) -> None:
    read = stream.read  # type: ignore[attr-defined]
    while chunk := read(65536):
        if len(buf) < cap:
            buf.extend(chunk[: cap - len(buf)])


def _reason(code: int, stderr: str, lim: ExecLimits, timed_out: bool) -> str:
    if timed_out:
        return f"wall-time limit ({lim.wall_seconds:g} s)"
    if code == 0:
        return "passed"
    if code in (LAUNCH_FAILED, NO_NETWORK_ISOLATION) and "servecmp-sandbox:" in stderr:
        return "sandbox setup failed: " + stderr.split("servecmp-sandbox:", 1)[1].strip().splitlines()[0]
    if code in (-signal.SIGXCPU, -signal.SIGKILL):
        # SIGXCPU at the soft limit, SIGKILL at the hard one (our own SIGKILL only follows a timeout).
        return f"CPU limit ({lim.cpu_seconds} s)"
    last = _last_error_line(stderr)
    if "MemoryError" in last:
        return "memory limit"
    if "BlockingIOError" in last or "Resource temporarily unavailable" in last:
        return f"process creation refused ({last})"
    if code < 0:
        return f"killed by signal {signal.Signals(-code).name}" + (f": {last}" if last else "")
    return f"exit code {code}" + (f": {last}" if last else "")


def _last_error_line(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""
