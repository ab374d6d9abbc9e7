"""Throughput at the server's ceiling: `--concurrency auto` against queue-model stand-ins and the
real vLLM pair, beside a sweep of fixed concurrencies.

    python scripts/bench_throughput.py [--seats 1 8 32 128] [--service 0.25] [--seconds 12]
        [--data-dir ../shared/data/mmlu] [--vllm-baseline http://127.0.0.1:8001/v1
        --vllm-candidate http://127.0.0.1:8002/v1 --vllm-items 120 --vllm-fixed 1 2 4 8]
        [--skip-stub] [--skip-headline] [--profile]

1. Headline (the issue's "done when"): two stand-ins with 32 seats and 0.25 s service
   (tests/stub_seats.py, each in its own process), 2000 MMLU 5-shot items, both endpoints at once
   with the default settings (auto): items/s per endpoint against the ceiling 32 / 0.25 = 128/s.
2. For each K in --seats: one stand-in, items/s with auto and with each fixed concurrency of a sweep
   around K; auto as a share of the ceiling and of the best fixed concurrency; servecmp's CPU per
   item (process time over the run / items).
3. The real vLLM pair (when --vllm-baseline is given): (a) the prefix-cache hit rate (vLLM /metrics,
   delta over the run) with and without prefix-aware ordering, each on its own slice of MMLU items
   (later subjects: a cache still cold for them); (b) items/s on both endpoints at once with auto and
   with each of --vllm-fixed (the old default was 4), all on the same items after one unmeasured
   warm-up pass over them, so every configuration meets the same warm cache.

Items/s for an endpoint: its items over the time from the start of scoring to its last answer. The
same code path `servecmp mcq` runs (`run_items`, with its live progress drawn to a null console so
its CPU counts). Prints figures; asserts nothing. Machine load is printed before and after: on a
shared machine every figure moves with it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import os
import pstats
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
from rich.console import Console
from rich.progress import Progress, TaskID

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from servecmp.concurrency import RunWatch, describe_path  # noqa: E402
from servecmp.endpoints import EndpointClient, EndpointSpec  # noqa: E402
from servecmp.mcq.records import McqItem  # noqa: E402
from servecmp.mcq.run import make_progress, prepare_clients, run_items  # noqa: E402
from servecmp.tasks.registry import load_task  # noqa: E402
from tests.stub_openai import free_port  # noqa: E402


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


class Clock(Progress):
    """The live progress `servecmp mcq` draws (to a null console), noting each endpoint's last answer."""

    def __init__(self) -> None:
        super().__init__(*make_progress().columns, console=Console(file=io.StringIO(), force_terminal=True))
        self.t0 = time.perf_counter()
        self.names: dict[TaskID, str] = {}
        self.last: dict[str, float] = {}
        self.count: dict[str, int] = {}

    def add_task(self, description: str, *args: Any, **kwargs: Any) -> TaskID:
        task_id = super().add_task(description, *args, **kwargs)
        self.names[task_id] = description
        self.count[description] = 0
        return task_id

    def update(self, task_id: TaskID, *args: Any, **kwargs: Any) -> None:
        super().update(task_id, *args, **kwargs)
        if kwargs.get("advance"):
            name = self.names[task_id]
            self.last[name] = time.perf_counter() - self.t0
            self.count[name] += 1


@dataclass
class Result:
    rates: dict[str, float]
    cpu_ms_per_item: float
    paths: dict[str, str]
    prefix: dict[str, float | None]


def run(urls: dict[str, str], items: Sequence[McqItem], concurrency: int | Literal["auto"], *, ordered: bool = True,
        profile: bool = False) -> Result:
    """Score `items` on every endpoint at once, as `servecmp mcq` does; per-endpoint items/s."""

    async def go(run_dir: Path) -> Result:
        clients = {name: EndpointClient(EndpointSpec(base_url=url, max_concurrency=concurrency, timeout_s=300))
                   for name, url in urls.items()}
        try:
            await prepare_clients(clients, 20, True)
            watch = await RunWatch.start(clients)
            clock = Clock()
            cpu0 = time.process_time()
            with clock:
                clock.t0 = time.perf_counter()
                await run_items(items, clients, run_dir, top_k=20, progress=clock, ordered=ordered)
            cpu = time.process_time() - cpu0
            await watch.finish(run_dir)
            after = {name: (await _hit(watch, name)) for name in clients}
            return Result(
                rates={name: clock.count[name] / clock.last[name] for name in clients},
                cpu_ms_per_item=1000 * cpu / (len(items) * len(clients)),
                paths={name: describe_path(c.controller) for name, c in clients.items() if c.controller},
                prefix=after,
            )
        finally:
            for c in clients.values():
                await c.aclose()

    with tempfile.TemporaryDirectory() as tmp:
        if profile:
            prof = cProfile.Profile()
            prof.enable()
            try:
                return asyncio.run(go(Path(tmp)))
            finally:
                prof.disable()
                out = io.StringIO()
                pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
                print(out.getvalue())
        return asyncio.run(go(Path(tmp)))


async def _hit(watch: RunWatch, name: str) -> float | None:
    from servecmp.concurrency import fetch_metrics, prefix_hit_rate
    from servecmp.endpoints import root_url

    after = await fetch_metrics(root_url(watch.clients[name].spec.base_url))
    rate = prefix_hit_rate(watch.before.get(name), after)
    return rate["hit_rate"] if rate else None


@contextlib.contextmanager
def stand_ins(seats: int, service: float, n: int) -> Iterator[list[str]]:
    """`n` stand-in servers, each in its own process (their CPU is not servecmp's)."""
    procs, urls = [], []
    try:
        for i in range(n):
            port = free_port()
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "tests.stub_seats", "--port", str(port), "--seats", str(seats),
                 "--service", str(service), "--model", f"seats-{i}"], cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)}))
            urls.append(f"http://127.0.0.1:{port}/v1")
        for url in urls:
            deadline = time.time() + 20
            while True:
                try:
                    httpx.get(url + "/models", timeout=1)
                    break
                except httpx.HTTPError:
                    if time.time() > deadline:
                        raise
                    time.sleep(0.1)
        yield urls
    finally:
        for p in procs:
            p.kill()
            p.wait()


def sweep_for(seats: int) -> list[int]:
    return sorted({max(1, seats // 2), seats, seats + max(1, seats // 4), 2 * seats, 4 if seats == 1 else 2 * seats})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seats", type=int, nargs="*", default=[1, 8, 32, 128])
    ap.add_argument("--service", type=float, default=0.25)
    ap.add_argument("--seconds", type=float, default=12.0, help="Length of each stand-in run at the ceiling.")
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "mmlu"))
    ap.add_argument("--vllm-baseline")
    ap.add_argument("--vllm-candidate")
    ap.add_argument("--vllm-items", type=int, default=120)
    ap.add_argument("--vllm-fixed", type=int, nargs="*", default=[1, 2, 4, 8])
    ap.add_argument("--skip-stub", action="store_true")
    ap.add_argument("--skip-headline", action="store_true")
    ap.add_argument("--profile", action="store_true", help="cProfile the highest-rate auto run.")
    args = ap.parse_args()

    items = load_task("mmlu", data_dir=args.data_dir).items
    print(f"machine: {os.cpu_count()} CPUs; load average {load_average()} (1, 5, 15 min)")
    print(f"items: MMLU 5-shot from {args.data_dir} ({len(items)} available)\n")

    if not args.skip_headline:
        with stand_ins(32, args.service, 2) as (b, c):
            r = run({"baseline": b, "candidate": c}, items[:2000], "auto")
        ceiling = 32 / args.service
        print(f"headline: K=32, {args.service} s, 2000 items, both endpoints at once, default (auto):")
        for name, rate in r.rates.items():
            print(f"  {name:>9}: {rate:6.1f} items/s = {rate / ceiling:5.1%} of the ceiling {ceiling:.0f}/s; "
                  f"{r.paths[name]}")
        print(f"  servecmp CPU: {r.cpu_ms_per_item:.3f} ms per item (per endpoint-item)\n")

    if not args.skip_stub:
        print("| K | ceiling items/s | auto items/s | auto / ceiling | best fixed (c) items/s | auto / best fixed "
              "| sweep (c: items/s) | CPU ms/item (auto) | auto ended at |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for k in args.seats:
            ceiling = k / args.service
            n = int(min(len(items), max(100, ceiling * args.seconds)))
            with stand_ins(k, args.service, 1) as (url,):
                auto = run({"baseline": url}, items[:n], "auto", profile=args.profile and k == max(args.seats))
                fixed = {c: run({"baseline": url}, items[:n], c).rates["baseline"] for c in sweep_for(k)}
            best_c = max(fixed, key=lambda c: fixed[c])
            a = auto.rates["baseline"]
            sweep = ", ".join(f"{c}: {v:.1f}" for c, v in fixed.items())
            print(f"| {k} | {ceiling:.0f} | {a:.1f} | {a / ceiling:.1%} | {fixed[best_c]:.1f} ({best_c}) | "
                  f"{a / fixed[best_c]:.1%} | {sweep} | {auto.cpu_ms_per_item:.3f} | "
                  f"{auto.paths['baseline'].split(' (')[0]} |", flush=True)
        print()

    if args.vllm_baseline and args.vllm_candidate:
        urls = {"baseline": args.vllm_baseline, "candidate": args.vllm_candidate}
        n = args.vllm_items
        print(f"real vLLM pair: {n} items per configuration, both endpoints at once; load {load_average()}")
        print("| configuration | items | baseline items/s | candidate items/s | prefix-cache hit rate (b / c) "
              "| ended at |")
        print("| --- | --- | --- | --- | --- | --- |")

        def row(label: str, part: Sequence[McqItem], conc: int | Literal["auto"], ordered: bool = True) -> None:
            r = run(urls, part, conc, ordered=ordered)
            hit = " / ".join("n/a" if r.prefix[k] is None else f"{r.prefix[k]:.1%}" for k in urls)
            ended = "; ".join(p.split(" (")[0] for p in r.paths.values()) or "-"
            where = f"{part[0].item_id}..{part[-1].item_id}"
            print(f"| {label} | {where} | {r.rates['baseline']:.2f} | {r.rates['candidate']:.2f} | {hit} | {ended} |",
                  flush=True)

        # (a) cold caches: two slices far into the file, each its own subjects.
        row("auto, prefix-ordered (cold cache)", items[6000:6000 + n], "auto")
        row("auto, file order (cold cache)", items[9000:9000 + n], "auto", ordered=False)
        # (b) one slice, warmed once, then every configuration on it.
        part = items[3000:3000 + n]
        row("warm-up (fixed 4, not compared)", part, 4)
        row("auto", part, "auto")
        for c in args.vllm_fixed:
            row(f"fixed {c}", part, c)
    print(f"\nload average after: {load_average()}")


if __name__ == "__main__":
    main()
