#!/usr/bin/env python3
"""Render a stored run as its HTML report and screenshot it with headless Chromium.

    python scripts/screenshot_report.py RUN_DIR_OR_DB --png docs/img/report-mcq.png [--html FILE]
        [--width 1280] [--height 1400] [--gate EXPR ...]

Used for the README's picture (docs/img/report-mcq.png, from a real run against the embedded vLLM
pair). Prints the HTML file's size, the PNG's path and how long each step took. Chromium: the
CHROMIUM variable, /usr/bin/chromium, or chromium/google-chrome on PATH.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests/_browser.py: the same Chromium invocation the tests use


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="an MCQ or MT-Bench run directory, or a shadow database")
    ap.add_argument("--png", type=Path, required=True, help="where to write the screenshot")
    ap.add_argument("--html", type=Path, help="also keep the HTML here (default: a temporary file)")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=1400)
    ap.add_argument("--gate", action="append", default=[], help="gates to decide, as `servecmp report --gate`")
    args = ap.parse_args()

    from servecmp.errors import ServecmpError
    from servecmp.finish import detect_kind, run_html
    from servecmp.html import write_html
    from servecmp.verdicts import resolve_gates
    from tests._browser import chromium, screenshot

    if chromium() is None:
        print("chromium not found: install it (scripts/setup_system.sh) or set CHROMIUM", file=sys.stderr)
        return 2
    try:
        kind = detect_kind(args.run)
        t0 = time.perf_counter()
        page = run_html(args.run, resolve_gates(kind, args.gate, None), kind=kind)
        t_render = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as tmp:
            html = args.html or Path(tmp) / "report.html"
            write_html(html, page)
            t1 = time.perf_counter()
            args.png.parent.mkdir(parents=True, exist_ok=True)
            screenshot(html, args.png, width=args.width, height=args.height)
            t_shot = time.perf_counter() - t1
            size = html.stat().st_size
    except ServecmpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"html: {size:,} bytes ({size / 1e6:.2f} MB), rendered in {t_render:.1f} s"
          + (f" -> {args.html}" if args.html else ""))
    print(f"png: {args.png} ({args.png.stat().st_size:,} bytes, {args.width}x{args.height}), "
          f"chromium {t_shot:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
