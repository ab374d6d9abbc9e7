"""Every command's --help renders (help texts quote URLs with brackets, which rich markup would
misread) and no command is missing from the top-level list."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = [["mcq"], ["report"], ["serve"], ["demo"], ["models", "build"], ["mtbench"], ["correlate"],
            ["shadow", "serve"], ["shadow", "report"], ["shadow", "replay"]]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c))
def test_help_renders(cmd: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "servecmp", *cmd, "--help"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout and "Traceback" not in proc.stderr


def test_unknown_command_is_one_line() -> None:
    proc = subprocess.run([sys.executable, "-m", "servecmp", "frobnicate"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "frobnicate" in proc.stderr


@pytest.mark.parametrize("args", [["mcq", "--limit", "abc"], ["mcq", "--nope"], ["report"]])
def test_usage_errors_are_one_line(args: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "servecmp", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("servecmp: error:"), proc.stderr
