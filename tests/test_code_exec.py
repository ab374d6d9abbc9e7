"""servecmp.tasks.code_exec: model code refused without the flag; with it, every program that loops,
sleeps, allocates 10 GB, forks or reaches the network is stopped and counted as failed, and a
correct program passes. Real processes, real limits (no mocks)."""

from __future__ import annotations

import os
import socket

import pytest

from servecmp.errors import UserError
from servecmp.tasks.code_exec import ExecLimits, network_isolation_available, require_code_execution, run_program

# Generous wall time: the CPU limit or the program's own end must come first on a loaded 2-core box.
LIMITS = ExecLimits(cpu_seconds=2, wall_seconds=60)


def test_refused_without_the_flag() -> None:
    with pytest.raises(UserError, match="--allow-code-execution") as info:
        require_code_execution(False)
    assert "\n" not in str(info.value)
    require_code_execution(True)


def test_correct_program_passes() -> None:
    r = run_program("def add(a, b):\n    return a + b\n\nassert add(2, 3) == 5\nprint('ok')\n", LIMITS)
    assert (r.passed, r.reason, r.returncode, r.stdout) == (True, "passed", 0, "ok\n")


def test_failing_assertion_fails() -> None:
    r = run_program("assert 1 + 1 == 3, 'wrong sum'\n", LIMITS)
    assert (r.passed, r.returncode) == (False, 1)
    assert r.reason == "exit code 1: AssertionError: wrong sum"


def test_syntax_error_fails() -> None:
    r = run_program("def f(:\n", LIMITS)
    assert not r.passed and r.reason.startswith("exit code 1: SyntaxError")


def test_busy_loop_is_stopped_by_the_cpu_limit() -> None:
    r = run_program("while True:\n    pass\n", ExecLimits(cpu_seconds=1, wall_seconds=120))
    assert not r.passed
    assert r.reason == "CPU limit (1 s)"


def test_sleeping_program_is_stopped_by_the_wall_limit() -> None:
    # Sleeping uses no CPU, so only the wall-time limit can stop it.
    r = run_program("import time\ntime.sleep(3600)\n", ExecLimits(cpu_seconds=5, wall_seconds=2))
    assert (r.passed, r.reason, r.returncode) == (False, "wall-time limit (2 s)", None)


def test_ten_gigabyte_allocation_fails() -> None:
    r = run_program("x = bytearray(10 * 1024 ** 3)\nprint('allocated')\n", LIMITS)
    assert (r.passed, r.reason, r.stdout) == (False, "memory limit", "")


@pytest.mark.parametrize("source", [
    "import os\npid = os.fork()\nif pid == 0:\n    os._exit(0)\nos.waitpid(pid, 0)\n",
    "import subprocess\nsubprocess.run(['true'], check=True)\n",
    "import multiprocessing as mp\np = mp.Process(target=print)\np.start()\np.join()\n",
])
def test_process_creation_is_refused(source: str) -> None:
    r = run_program(source, LIMITS)
    assert not r.passed
    assert r.reason.startswith("process creation refused"), r.reason


def test_forked_child_cannot_outlive_its_parent_check() -> None:
    # If fork were allowed, the child would print; with NPROC it never exists.
    r = run_program("import os\ntry:\n    os.fork() or print('child')\nexcept OSError:\n    print('refused')\n",
                    LIMITS)
    assert (r.passed, r.stdout) == (True, "refused\n")


def test_network_is_unreachable() -> None:
    if not network_isolation_available():
        pytest.skip("this machine does not permit network namespaces: model code keeps the host's network")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        source = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=5)\ns.sendall(b'x')\n"
        r = run_program(source, LIMITS)
        assert not r.passed and r.network_isolated
        assert "Network is unreachable" in r.reason or "Connection refused" in r.reason, r.reason
        listener.settimeout(0.2)
        with pytest.raises(TimeoutError):
            listener.accept()  # nothing ever connected from the sandbox


def test_isolation_required_is_honoured() -> None:
    if network_isolation_available():
        r = run_program("print(1)\n", LIMITS, isolate_network=True)
        assert r.passed and r.network_isolated
    else:
        with pytest.raises(UserError, match="network isolation"):
            run_program("print(1)\n", LIMITS, isolate_network=True)


def test_fresh_directory_clean_environment_and_cleanup() -> None:
    os.environ["SERVECMP_TEST_SECRET"] = "sk-do-not-leak"
    try:
        source = ("import os, pathlib\n"
                  "print(sorted(p.name for p in pathlib.Path('.').iterdir() if not p.name.startswith('.')))\n"
                  "print('SERVECMP_TEST_SECRET' in os.environ, os.environ.get('HOME') == os.getcwd())\n"
                  "pathlib.Path('left.txt').write_text('x')\n"
                  "print(os.getcwd())\n")
        r = run_program(source, LIMITS)
    finally:
        del os.environ["SERVECMP_TEST_SECRET"]
    assert r.passed, r.reason
    listing, env_line, cwd = r.stdout.splitlines()
    assert listing == "['program.py']"
    assert env_line == "False True"
    assert not os.path.exists(cwd)  # the temporary directory and what the program left are gone


def test_root_runs_programs_under_another_uid() -> None:
    if os.geteuid() != 0:
        pytest.skip("only root switches to a sandbox uid")
    r = run_program("import os\nprint(os.getuid(), os.getgid())\n", LIMITS)
    uid, gid = map(int, r.stdout.split())
    assert uid != 0 and gid != 0
    r2 = run_program("open('/root/.bashrc').read()\n", LIMITS)
    assert not r2.passed and ("PermissionError" in r2.reason or "FileNotFoundError" in r2.reason), r2.reason


def test_output_is_bounded() -> None:
    r = run_program("import sys\nsys.stdout.write('x' * 1_000_000)\n", ExecLimits(output_bytes=1000, wall_seconds=60))
    assert r.passed and r.stdout == "x" * 1000
