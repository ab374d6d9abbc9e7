"""Headless Chromium for the HTML report tests and scripts/screenshot_report.py.

`chromium()` finds the browser (CHROMIUM env var, then /usr/bin/chromium, chromium-browser,
google-chrome on PATH); `screenshot()` and `dump_dom()` run it once each with a fresh profile and
every background network feature off, so opening a report makes no request of its own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--mute-audio")


def chromium() -> str | None:
    env = os.environ.get("CHROMIUM")
    if env:  # a named browser that is not there counts as no browser
        return env if Path(env).is_file() or shutil.which(env) else None
    if Path("/usr/bin/chromium").is_file():
        return "/usr/bin/chromium"
    for name in NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    exe = chromium()
    if exe is None:
        raise FileNotFoundError("chromium not found (set CHROMIUM or install it: scripts/setup_system.sh)")
    with tempfile.TemporaryDirectory(prefix="servecmp-chromium-") as profile:
        return subprocess.run([exe, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                              timeout=timeout, check=False)


def screenshot(page: Path, out: Path, *, width: int = 1280, height: int = 900, timeout: float = 60) -> None:
    """A PNG of the top ``width`` x ``height`` of the page. RuntimeError when no PNG was written."""
    out.unlink(missing_ok=True)
    proc = _run([f"--screenshot={out}", f"--window-size={width},{height}", page.resolve().as_uri()], timeout)
    if not out.is_file() or out.stat().st_size == 0:
        raise RuntimeError(f"chromium wrote no screenshot (exit {proc.returncode}): {proc.stderr[-2000:]}")


def print_pdf(page: Path, out: Path, *, timeout: float = 60) -> None:
    """The page printed to PDF (print stylesheet, A4/Letter pages). RuntimeError when none was written."""
    out.unlink(missing_ok=True)
    proc = _run(["--no-pdf-header-footer", f"--print-to-pdf={out}", page.resolve().as_uri()], timeout)
    if not out.is_file() or out.stat().st_size == 0:
        raise RuntimeError(f"chromium wrote no PDF (exit {proc.returncode}): {proc.stderr[-2000:]}")


def dump_dom(page: Path, *, timeout: float = 60) -> str:
    """The DOM after the page's scripts ran, as chromium serialises it."""
    proc = _run(["--dump-dom", page.resolve().as_uri()], timeout)
    if proc.returncode != 0 or "<html" not in proc.stdout:
        raise RuntimeError(f"chromium --dump-dom failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return proc.stdout
