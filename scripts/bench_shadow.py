#!/usr/bin/env python
"""Benchmark the shadow proxy's added latency and memory on loopback (prints figures; not a test).

For each candidate case (healthy, down, slow) and each rate, an open-loop load generator sends chat
completions (a mix of streamed and not) for ``--duration`` seconds at that rate straight to a fast
local stub primary and, interleaved in the same schedule, at that rate through ``servecmp shadow
serve`` (so the primary stub sees twice the rate); it prints p50/p99 latency of both and the
difference, primary errors seen by the client, the proxy's counters, the resident memory of the
proxy (and its mirror process) sampled every second, and the CPU time per proxied request: CPU
seconds (user + system) the proxy process used during the proxied load divided by the requests it
proxied, with the mirror process's CPU per request beside it (the mirror is niced and off the
request path; the target is for the proxy process).

Everything binds to 127.0.0.1. Each piece is its own process: primary stub, candidate stub, proxy
(+ mirror process), load generator. On a small machine they share the cores, so say what else ran.

    .venv/bin/python scripts/bench_shadow.py                      # 50 and 200 rps, 3 cases, 20 s each
    .venv/bin/python scripts/bench_shadow.py --cases slow --rates 200 --duration 300   # the RSS run
    .venv/bin/python scripts/bench_shadow.py --cases healthy,down --rates 50,200 --duration 30  # CPU figures
    .venv/bin/python scripts/bench_shadow.py --mode collect --cases healthy --rates 50,200   # the collector
    .venv/bin/python scripts/bench_shadow.py --cases healthy,down --old-root /tmp/old   # beside another checkout
    .venv/bin/python scripts/bench_shadow.py --cases hung --rates 50 --duration 300     # memory soak, hung candidate

Cases: healthy, down (nothing listens), slow (``--slow-delay`` s per answer), hung (accepts and never
answers: every comparison waits for its timeout, the backlog fills and is dropped; RSS must stay flat).
``--old-root DIR`` runs each case a second time with the servecmp found in DIR (e.g. an older commit
unpacked with ``git archive``), in the same run, so the two stacks meet the same machine load.

With ``--mode collect`` the second target is ``servecmp shadow collect`` instead: it gets the copy of
each direct request, as a mesh mirror would send it, and answers 202; its CPU per mirrored request
(fetching the baseline replica's answer included) is the "proxy" column.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

PY = sys.executable
HERE = Path(__file__).resolve().parent
#: The stub is a test helper (tests/stub_shadow.py, not shipped in the package): its processes run
#: from the repository root so ``-m tests.stub_shadow`` resolves wherever this script is started from.
ROOT = HERE.parent


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, timeout: float = 60.0, path: str = "/v1/models") -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + path, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not become ready")


def start_stub(port: int, *, delay_s: float = 0.0, variant: int = 0, nice: int = 0) -> subprocess.Popen[Any]:
    cmd = [PY, "-m", "tests.stub_shadow", "--port", str(port), "--delay-s", str(delay_s),
           "--variant", str(variant)]
    if nice:
        cmd = ["nice", "-n", str(nice), *cmd]
    proc = subprocess.Popen(cmd, cwd=ROOT)
    wait_ready(f"http://127.0.0.1:{port}")
    return proc


def stop(proc: subprocess.Popen[Any], sig: int = signal.SIGINT, timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---- load generator (run in its own process) ---------------------------------------------------


async def _load(urls: list[str], rps: float, duration: float, stream_share: float) -> list[dict[str, Any]]:
    """Open-loop load: request i goes to ``urls[i % len(urls)]``, each URL at ``rps``.

    Interleaving direct and proxied requests in one schedule makes both see the same background
    load (other processes, the stubs' GC), so their difference is the proxy's, not the machine's.
    """
    import aiohttp

    n = int(rps * duration) * len(urls)
    latencies: list[list[float]] = [[] for _ in urls]
    errors: list[dict[str, int]] = [{} for _ in urls]
    every = max(1, round(1 / stream_share)) if stream_share > 0 else 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=4000)) as session:

        async def one(i: int) -> None:
            k = i % len(urls)
            j = i // len(urls)
            stream = bool(every) and j % every == 0
            body = {"model": "stub-model", "messages": [{"role": "user", "content": f"question {j % 97}"}],
                    "stream": stream, "max_tokens": 16}
            t0 = time.perf_counter()
            try:
                async with session.post(urls[k] + "/v1/chat/completions", json=body) as resp:
                    await resp.read()
                    if not 200 <= resp.status < 300:  # shadow collect answers 202
                        errors[k][f"HTTP {resp.status}"] = errors[k].get(f"HTTP {resp.status}", 0) + 1
                        return
            except (TimeoutError, aiohttp.ClientError) as exc:
                errors[k][type(exc).__name__] = errors[k].get(type(exc).__name__, 0) + 1
                return
            latencies[k].append(time.perf_counter() - t0)

        t_start = time.perf_counter()
        tasks = []
        for i in range(n):
            delay = t_start + i / (rps * len(urls)) - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    out = []
    for lat, err in zip(latencies, errors, strict=True):
        ms = np.asarray(lat) * 1000
        out.append({"sent": n // len(urls), "ok": len(lat), "errors": sum(err.values()), "error_kinds": err,
                    "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
                    "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None})
    return out


def run_load(urls: list[str], rps: float, duration: float, stream_share: float) -> list[dict[str, Any]]:
    out = subprocess.run(
        [PY, __file__, "--_load", ",".join(urls), str(rps), str(duration), str(stream_share)],
        check=True, capture_output=True, text=True,
    )
    return list(json.loads(out.stdout.strip().splitlines()[-1]))


# ---- memory --------------------------------------------------------------------------------------


class RssSampler:
    """Sums the RSS of a process and its children once a second, in a thread."""

    def __init__(self, pid: int) -> None:
        import threading

        import psutil

        self.proc = psutil.Process(pid)
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss_mb(self) -> float:
        import psutil

        total = 0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total / 2**20

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.wait(1.0):
            self.samples.append((time.monotonic() - t0, self._rss_mb()))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float | None]:
        if len(self.samples) < 3:
            return {"start_mb": None, "end_mb": None, "max_mb": None, "slope_mb_per_min": None}
        t = np.array([s[0] for s in self.samples])
        m = np.array([s[1] for s in self.samples])
        # Ignore the first 20% (warm-up: pools, queues and caches filling) for the trend.
        k = len(t) // 5
        slope = float(np.polyfit(t[k:], m[k:], 1)[0] * 60) if len(t) - k >= 3 else None
        # "start" is after the warm-up (the mirror process imports its libraries in the first seconds).
        return {"start_mb": float(m[k]), "end_mb": float(m[-1]), "max_mb": float(m.max()),
                "slope_mb_per_min": slope}


class CpuMeter:
    """CPU seconds (user + system) of a process, and separately of its children, between start and stop."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.proc = psutil.Process(pid)

    def _now(self) -> tuple[float, float, float]:
        import psutil

        own = self.proc.cpu_times()
        kids = 0.0
        for child in self.proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                t = child.cpu_times()
                kids += t.user + t.system
        return own.user + own.system, kids, own.system

    def __enter__(self) -> CpuMeter:
        self.start = self._now()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._now()
        self.proxy_s = end[0] - self.start[0]
        self.mirror_s = end[1] - self.start[1]
        #: The kernel's part of the proxy's CPU (socket reads and writes, epoll): what fewer
        #: syscalls save, where fewer Python steps do not.
        self.proxy_sys_s = end[2] - self.start[2]


# ---- orchestration -------------------------------------------------------------------------------


def read_counters(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(db)
    try:
        return {k: int(v) for k, v in conn.execute("SELECT name, SUM(value) FROM counters GROUP BY name")}
    finally:
        conn.close()


def bench_case(case: str, args: argparse.Namespace, primary_url: str, workdir: Path,
               stack: tuple[str, Path] = ("new", ROOT)) -> list[dict[str, Any]]:
    cand_port = free_port()
    cand: subprocess.Popen[Any] | None = None
    if case == "healthy":
        cand = start_stub(cand_port, variant=1, nice=args.candidate_nice)
    elif case == "slow":
        cand = start_stub(cand_port, variant=1, delay_s=args.slow_delay, nice=args.candidate_nice)
    elif case == "hung":
        cand = start_stub(cand_port, variant=1, delay_s=24 * 3600.0, nice=args.candidate_nice)
    proxy_port = free_port()
    name, root = stack
    db = workdir / f"shadow-{case}-{name}.db"
    prof = [] if args.profile is None else ["-m", "cProfile", "-o", f"{args.profile}.{case}"]
    cmd = [PY, *prof, "-m", "servecmp", "shadow", args.mode, "--baseline", primary_url,
           "--candidate", f"http://127.0.0.1:{cand_port}", "--port", str(proxy_port), "--db", str(db),
           "--no-teacher-forced" if args.no_teacher_forced else "--teacher-forced"]
    if args.in_process:
        cmd.append("--in-process")
    if args.sample_rate is not None:
        cmd += ["--sample-rate", str(args.sample_rate)]
    log = (workdir / f"proxy-{case}-{name}.log").open("wb")
    if args.proxy_cpu is not None:
        cmd = ["taskset", "-c", str(args.proxy_cpu), *cmd]
    # The stack's servecmp first on the path (this checkout's, or --old-root's).
    env = {**os.environ, "PYTHONPATH": str(root)}
    proxy = subprocess.Popen(cmd, stderr=log, cwd=root, env=env)
    proxy_url = f"http://127.0.0.1:{proxy_port}"
    results = []
    try:
        wait_ready(proxy_url, path="/metrics")  # served by both modes (collect has no /v1/models)
        if args.proxy_cpu is not None:
            import psutil

            # The mirror process (the proxy's child) goes with everything else, off the proxy's core.
            for child in psutil.Process(proxy.pid).children(recursive=True):
                child.cpu_affinity(sorted(os.sched_getaffinity(0)))
        for rps in args.rates:
            with RssSampler(proxy.pid) as rss, CpuMeter(proxy.pid) as cpu:
                direct, proxied = run_load([primary_url, proxy_url], rps, args.duration, args.stream_share)
            # Every request sent to the proxy was proxied (answered or failed by the proxy itself).
            n = proxied["sent"]
            results.append({"case": case, "stack": name, "rps": rps, "direct": direct, "proxied": proxied,
                            "rss": rss.summary(),
                            "cpu": {"proxy_s": cpu.proxy_s, "mirror_s": cpu.mirror_s, "requests": n,
                                    "proxy_sys_s": cpu.proxy_sys_s,
                                    "proxy_ms_per_request": 1000 * cpu.proxy_s / n if n else None,
                                    "mirror_ms_per_request": 1000 * cpu.mirror_s / n if n else None}})
    finally:
        stop(proxy)
        log.close()
        if cand is not None:
            stop(cand)
    errors = [line for line in (workdir / f"proxy-{case}-{name}.log").read_text().splitlines() if "ERROR" in line]
    if errors:
        print(f"proxy log ({case}), error lines:", *errors[:10], sep="\n  ")
    counters = read_counters(db)
    for r in results:
        r["counters"] = counters  # per case (both rates together)
    return results


def fmt(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--_load":
        urls, rps, duration, share = sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
        print(json.dumps(asyncio.run(_load(urls.split(","), rps, duration, share))))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="50,200", help="Requests per second, comma-separated.")
    ap.add_argument("--duration", type=float, default=20.0, help="Seconds per load phase (direct, proxied).")
    ap.add_argument("--cases", default="healthy,down,slow", help="healthy, down, slow, hung; comma-separated.")
    ap.add_argument("--old-root", type=Path,
                    help="Also run each case with the servecmp in this directory (another checkout), same run.")
    ap.add_argument("--mode", choices=["serve", "collect"], default="serve",
                    help="collect: `servecmp shadow collect` gets the mirrored copy of each direct request "
                         "(as from a mesh) and its CPU per mirrored request is measured; its 'proxy' latency "
                         "columns are then the 202's.")
    ap.add_argument("--slow-delay", type=float, default=2.0, help="Seconds the slow candidate adds.")
    ap.add_argument("--stream-share", type=float, default=0.5, help="Share of streamed requests.")
    ap.add_argument("--in-process", action="store_true", help="Compare in the proxy process.")
    ap.add_argument("--no-teacher-forced", action="store_true")
    ap.add_argument("--sample-rate", type=float,
                    help="The proxy's --sample-rate (0: proxying alone, the floor of its CPU cost).")
    ap.add_argument("--candidate-nice", type=int, default=0,
                    help="Niceness of the candidate stub (it stands for another machine).")
    ap.add_argument("--json", type=Path, help="Also write the figures here.")
    ap.add_argument("--proxy-cpu", type=int,
                    help="Pin the proxy process to this CPU and everything else (stubs, load generator, the "
                         "mirror process) to the others: the proxy's CPU per request without other processes "
                         "on its core.")
    ap.add_argument("--profile", type=Path,
                    help="Run the proxy under cProfile, write PROFILE.<case> and print its top functions "
                         "(the profiler's own cost inflates the CPU figures: read the shares, not the ms).")
    args = ap.parse_args()
    args.rates = [float(r) for r in args.rates.split(",")]
    cases = args.cases.split(",")
    stacks = [("new", ROOT)] + ([("old", args.old_root.resolve())] if args.old_root else [])
    if args.duration * len(args.rates) * len(cases) * len(stacks) > 3600:
        sys.exit("refusing to run for more than an hour; lower --duration, --rates or --cases")

    if args.proxy_cpu is not None:
        others = set(os.sched_getaffinity(0)) - {args.proxy_cpu}
        if not others or args.proxy_cpu not in os.sched_getaffinity(0):
            sys.exit(f"--proxy-cpu {args.proxy_cpu}: needs that CPU and at least one other")
        os.sched_setaffinity(0, others)  # inherited by the stubs and the load generator
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-shadow-") as tmp:
        primary_port = free_port()
        primary = start_stub(primary_port)
        try:
            results = []
            for case in cases:
                for stack in stacks:
                    results.extend(bench_case(case, args, f"http://127.0.0.1:{primary_port}", Path(tmp), stack))
        finally:
            stop(primary)

    load = os.getloadavg()
    print(f"\nshadow {args.mode} benchmark: {len(os.sched_getaffinity(0))} cores, load average "
          f"{load_start[0]:.2f} at the start, {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f} at the end (1/5/15 min), "
          f"{args.duration:g} s per rate, "
          f"stream share {args.stream_share:g}, mirror {'in-process' if args.in_process else 'process'}, "
          f"teacher forcing {'off' if args.no_teacher_forced else 'on'}, sample rate "
          f"{1.0 if args.sample_rate is None else args.sample_rate:g}"
          + ("" if args.proxy_cpu is None else f", proxy pinned to CPU {args.proxy_cpu}, the rest to the others"))
    head = (f"{'case':8} {'stack':5} {'rps':>5} {'direct p50':>10} {'proxy p50':>9} {'+p50':>6} {'direct p99':>10} "
            f"{'proxy p99':>9} {'+p99':>7} {'errors':>6} {'RSS warm→end MB':>17} {'MB/min':>7} "
            f"{'CPU ms/req proxy':>16} {'(sys)':>6} {'mirror':>7}")
    print(head)
    print("-" * len(head))
    for r in results:
        d, p, m = r["direct"], r["proxied"], r["rss"]
        add50 = p["p50_ms"] - d["p50_ms"] if p["p50_ms"] is not None and d["p50_ms"] is not None else None
        add99 = p["p99_ms"] - d["p99_ms"] if p["p99_ms"] is not None and d["p99_ms"] is not None else None
        n = r["cpu"]["requests"]
        sys_ms = 1000 * r["cpu"]["proxy_sys_s"] / n if n else None
        print(f"{r['case']:8} {r['stack']:5} {r['rps']:5.0f} {fmt(d['p50_ms']):>10} {fmt(p['p50_ms']):>9} "
              f"{fmt(add50):>6} "
              f"{fmt(d['p99_ms']):>10} {fmt(p['p99_ms']):>9} {fmt(add99):>7} {p['errors']:>6} "
              f"{fmt(m['start_mb'], 0):>8}→{fmt(m['end_mb'], 0):<8} {fmt(m['slope_mb_per_min']):>7} "
              f"{fmt(r['cpu']['proxy_ms_per_request'], 3):>16} {fmt(sys_ms, 3):>6} "
              f"{fmt(r['cpu']['mirror_ms_per_request'], 3):>7}")
    for r in results:
        for side in ("direct", "proxied"):
            if r[side]["errors"]:
                print(f"{r['case']} {r['rps']:g} rps {side} errors: {r[side]['error_kinds']}")
    print("\ncounters per case (both rates):")
    seen = set()
    for r in results:
        if (r["case"], r["stack"]) in seen:
            continue
        seen.add((r["case"], r["stack"]))
        c = {k: v for k, v in r["counters"].items() if v}
        print(f"  {r['case']} ({r['stack']}): {c}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.profile is not None:
        import pstats

        for case in cases:
            print(f"\nproxy profile ({case}), top 25 by own time:")
            pstats.Stats(f"{args.profile}.{case}").sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
