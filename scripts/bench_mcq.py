"""Benchmark the MCQ comparison against a running pair, and lm-eval's local-completions beside it.

    python scripts/bench_mcq.py --baseline http://127.0.0.1:8101/v1 --candidate http://127.0.0.1:8102/v1 \
        [--n 200] [--m 20] [--concurrency 4] [--tokenizer CHECKPOINT_DIR] [--out DIR] [--profile] \
        [--cli-runs 3]
    python scripts/bench_mcq.py --stub [--n 200] [--cli-runs 0]

0. The machine: CPU model, the feature flags vLLM's CPU kernels care about (avx2, avx512f,
   avx512_bf16, amx_bf16) and the load average before and after, since other work on the machine
   skews every figure below.
1. servecmp scores the first N items of the vendored MMLU sample (5-shot) on both endpoints at
   once, exactly as `servecmp mcq` does (`run_items`): items/s per endpoint, requests per item,
   and servecmp's own CPU time per item (time.process_time() over the scoring, / N).
2. lm-eval 0.4.13 `--model local-completions` scores the first M of those items against the
   baseline only, with the task in scripts/lmeval_tasks (same prompts as servecmp's): items/s
   (over lm-eval's own evaluation time, and over the whole command) and servecmp's speed-up.
3. Parity on the M shared items: same chosen option, and the gap between lm-eval's per-option
   loglikelihoods and servecmp's per-option logprobs.

4. The command line's start-up: wall time of `servecmp --help` and `servecmp mcq --help` (median
   of --cli-runs fresh processes; scripts/bench_cli.py times every command and lists the imports).

Prints figures; asserts nothing. `--out DIR` keeps servecmp's records.jsonl and lm-eval's output.
`--profile` runs the servecmp part under cProfile and prints where its CPU time goes. `--m 0` skips
lm-eval (the slow part). `--stub` scores against two fixed-answer stubs (tests/stub_openai.py, each in
its own process, so their CPU is not servecmp's) instead of a served pair: servecmp's own CPU per
item with no model in the way; it implies `--m 0`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import math
import os
import pstats
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import Progress, TaskID

from servecmp.endpoints import EndpointClient, EndpointSpec
from servecmp.mcq.records import McqRecord
from servecmp.mcq.run import RECORDS, make_progress, prepare_clients, run_items
from servecmp.records import ROLES, EndpointRole
from servecmp.runstore import load_records
from servecmp.serving.cpu import describe_cpu, read_cpu_flags

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "lmeval_tasks"))
from bench_cli import BUDGET_S, time_cli  # noqa: E402
from lmeval_task_data import TASK, servecmp_items, write_task_data  # noqa: E402

TASKS_DIR = Path(__file__).resolve().parent / "lmeval_tasks"
STUB = Path(__file__).resolve().parent.parent / "tests" / "stub_openai.py"
#: servecmp's own CPU per MCQ item, both endpoints together (issue 8: "Fast").
CPU_BUDGET_MS = 1.5
#: The /proc/cpuinfo flags that decide how fast vLLM's CPU kernels (and bf16) run.
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return "unknown CPU"


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def print_machine() -> None:
    flags = read_cpu_flags()
    marks = "  ".join(f"{f} {'yes' if f in flags else 'no'}" for f in CPU_FLAGS)
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs; load average {load_average()} (1, 5, 15 min)")
    print(f"  CPU flags: {marks}")
    print(f"  {describe_cpu(flags)}")


class CompletionClock(Progress):
    """A Progress that notes when each endpoint finishes each item (run_items reports completions
    through its progress object; this keeps the benchmark off servecmp's internals). Silent, or with
    `console` the live display `servecmp mcq` draws, so its rendering cost is counted too."""

    def __init__(self, console: Console | None = None) -> None:
        if console is None:
            super().__init__(disable=True)
        else:
            super().__init__(*make_progress().columns, console=console)
        self.t0 = time.perf_counter()
        self.roles: dict[TaskID, str] = {}
        self.done_at: dict[str, list[float]] = {}

    def add_task(self, description: str, *args: Any, **kwargs: Any) -> TaskID:
        task_id = super().add_task(description, *args, **kwargs)
        self.roles[task_id] = description
        self.done_at[description] = []
        return task_id

    def update(self, task_id: TaskID, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("advance"):
            self.done_at[self.roles[task_id]].append(time.perf_counter() - self.t0)
        super().update(task_id, *args, **kwargs)


@dataclass
class ServecmpFigures:
    n_items: int
    wall_s: dict[str, float]
    requests_per_item: dict[str, float]
    cpu_s: float
    #: Served model names, as servecmp resolved them from /v1/models.
    models: dict[str, str]
    records: dict[EndpointRole, dict[str, McqRecord]] = field(default_factory=dict)


@dataclass
class LmEvalFigures:
    m_items: int
    eval_s: float
    command_s: float
    n_requests: int
    samples: list[dict[str, Any]]


async def _score(
    base_url: str, cand_url: str, n: int, concurrency: int, run_dir: Path, live: bool
) -> tuple[float, CompletionClock, dict[str, str]]:
    items = servecmp_items(n)
    clients: dict[str, EndpointClient] = {
        "baseline": EndpointClient(EndpointSpec(base_url=base_url, max_concurrency=concurrency)),
        "candidate": EndpointClient(EndpointSpec(base_url=cand_url, max_concurrency=concurrency)),
    }
    try:
        await prepare_clients(clients, 20, letter=True)
        with open(os.devnull, "w", encoding="utf-8") as devnull:
            # The live display goes to a terminal-like sink so it renders as on a user's screen.
            clock = CompletionClock(Console(file=devnull, force_terminal=True, width=120) if live else None)
            cpu0 = time.process_time()
            with clock:
                outcome = await run_items(items, clients, run_dir, top_k=20, progress=clock)
            cpu = time.process_time() - cpu0
    finally:
        for c in clients.values():
            await c.aclose()
    if outcome.failed:
        raise SystemExit(f"servecmp run failed: {outcome.failed}")
    return cpu, clock, {role: c.model for role, c in clients.items()}


def run_servecmp(base_url: str, cand_url: str, n: int, concurrency: int, run_dir: Path,
                 profile: bool, live: bool) -> ServecmpFigures:
    profiler = cProfile.Profile() if profile else None
    if profiler is not None:
        profiler.enable()
    cpu, clock, models = asyncio.run(_score(base_url, cand_url, n, concurrency, run_dir, live))
    if profiler is not None:
        profiler.disable()
        print("\n--- cProfile of the servecmp part (top 25 by own time) ---")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        print("--- same, by cumulative time ---")
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
    records = load_records(run_dir / RECORDS, McqRecord)
    by_role = {role: {r.item_id: r for r in records if r.endpoint == role} for role in ROLES}
    return ServecmpFigures(
        n_items=len(by_role["baseline"]),
        wall_s={role: max(clock.done_at[role]) for role in ROLES},
        requests_per_item={role: sum(r.n_requests for r in by_role[role].values()) / len(by_role[role])
                           for role in ROLES},
        cpu_s=cpu,
        models=models,
        records=by_role,
    )


@contextlib.contextmanager
def stub_pair() -> Iterator[tuple[str, str]]:
    """Two fixed-answer OpenAI-compatible stubs (tests/stub_openai.py), each in its own process;
    yields their base URLs."""
    procs: list[subprocess.Popen[bytes]] = []
    urls = []
    try:
        for model in ("stub-baseline", "stub-candidate"):
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            procs.append(subprocess.Popen([sys.executable, str(STUB), str(port), model],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            urls.append(f"http://127.0.0.1:{port}/v1")
        deadline = time.monotonic() + 30
        for url in urls:
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(url + "/models", timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise SystemExit(f"stub at {url} did not start")
                time.sleep(0.1)
        yield urls[0], urls[1]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)


def checkpoint_of(base_url: str) -> str:
    """The checkpoint directory vLLM reports as the served model's `root` (lm-eval's tokenizer)."""
    url = EndpointSpec(base_url=base_url).normalised_url() + "/models"
    root = httpx.get(url, timeout=30).json()["data"][0].get("root") or ""
    if not Path(root).is_dir():
        raise SystemExit(f"{url} reports root {root!r}, not a local directory: pass --tokenizer")
    return str(root)


def lm_eval_command(model: str, base_url: str, tokenizer: str, m: int, out_dir: Path) -> list[str]:
    lm_eval = Path(sys.executable).with_name("lm_eval")
    completions = EndpointSpec(base_url=base_url).normalised_url() + "/completions"
    return [
        str(lm_eval), "--model", "local-completions",
        "--model_args", f"model={model},base_url={completions},tokenizer={tokenizer},"
                        "tokenized_requests=False,num_concurrent=4",
        "--tasks", TASK, "--include_path", str(TASKS_DIR),
        "--log_samples", "--output_path", str(out_dir), "--limit", str(m),
    ]  # fmt: skip


def run_lm_eval(base_url: str, model: str, tokenizer: str, m: int, work: Path) -> LmEvalFigures:
    data_dir = work / "lmeval-data"
    write_task_data(data_dir, m)
    out_dir = work / "lmeval-out"
    cmd = lm_eval_command(model, base_url, tokenizer, m, out_dir)
    print("lm-eval command (run in", data_dir, "):\n  " + " ".join(cmd), flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=data_dir, env=env, capture_output=True, text=True)
    command_s = time.perf_counter() - t0
    (work / "lmeval.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
    if proc.returncode != 0:
        raise SystemExit(f"lm_eval exited {proc.returncode}; see {work / 'lmeval.log'}")
    samples_path = next(out_dir.rglob(f"samples_{TASK}_*.jsonl"))
    results = json.loads(next(out_dir.rglob("results_*.json")).read_text(encoding="utf-8"))
    samples = [json.loads(line) for line in samples_path.read_text(encoding="utf-8").splitlines() if line]
    return LmEvalFigures(
        m_items=len(samples),
        eval_s=float(results["total_evaluation_time_seconds"]),
        command_s=command_s,
        n_requests=sum(len(s["arguments"]) for s in samples),
        samples=samples,
    )


def parity(samples: list[dict[str, Any]], records: dict[str, McqRecord]) -> dict[str, Any]:
    """Chosen options and per-option logprob gaps, lm-eval vs servecmp, on the shared items."""
    same_choice = 0
    gaps: list[float] = []
    worst = ("", 0.0)
    for s in samples:
        ll = [float(resp[0]) for resp in s["filtered_resps"]]
        rec = records[s["doc"]["item_id"]]
        same_choice += int(max(range(len(ll)), key=ll.__getitem__) == rec.chosen)
        for a, b in zip(ll, rec.option_logprobs, strict=True):
            gap = abs(a - b)
            gaps.append(gap)
            if gap > worst[1]:
                worst = (s["doc"]["item_id"], gap)
    gaps.sort()
    return {
        "items": len(samples),
        "same_choice": same_choice,
        "max_abs_gap": gaps[-1],
        "median_abs_gap": gaps[len(gaps) // 2],
        "exact_equal_options": sum(g == 0.0 for g in gaps),
        "options": len(gaps),
        "worst_item": worst[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", help="baseline URL (…/v1)")
    parser.add_argument("--candidate", help="candidate URL (…/v1)")
    parser.add_argument("--stub", action="store_true",
                        help="score against two local fixed-answer stubs instead (servecmp's own CPU; implies --m 0)")
    parser.add_argument("--n", type=int, default=200, help="items servecmp scores (≤ 228, the sample's size)")
    parser.add_argument("--m", type=int, default=20, help="items lm-eval scores (the first M of the N; 0: skip)")
    parser.add_argument("--concurrency", type=int, default=4, help="servecmp requests in flight per endpoint")
    parser.add_argument("--tokenizer", help="lm-eval's tokenizer (default: the baseline's reported checkpoint)")
    parser.add_argument("--out", type=Path, help="keep records and lm-eval output here (default: a temp dir)")
    parser.add_argument("--profile", action="store_true", help="cProfile the servecmp part")
    parser.add_argument("--live-progress", action="store_true",
                        help="draw servecmp mcq's live progress display (to /dev/null) and count its CPU")
    parser.add_argument("--cli-runs", type=int, default=3,
                        help="fresh processes per CLI start-up figure (median; 0: skip)")
    args = parser.parse_args()
    if not 1 <= args.n <= len(servecmp_items()):
        parser.error(f"--n must be between 1 and {len(servecmp_items())} (the vendored sample's size)")
    if not 0 <= args.m <= args.n:
        parser.error("--m must be between 0 and --n")
    if args.stub:
        if args.baseline or args.candidate:
            parser.error("--stub replaces --baseline and --candidate")
        args.m = 0
    elif not (args.baseline and args.candidate):
        parser.error("--baseline and --candidate are required (or --stub)")

    work = args.out or Path(tempfile.mkdtemp(prefix="bench-mcq-"))
    run_dir = work / "servecmp-run"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a fresh run, never a resumed one
    run_dir.mkdir(parents=True)

    print_machine()
    with stub_pair() if args.stub else contextlib.nullcontext((args.baseline, args.candidate)) as (base, cand):
        if args.stub:
            print(f"fixed-answer stubs (tests/stub_openai.py): {base} {cand}")
        sc = run_servecmp(base, cand, args.n, args.concurrency, run_dir, args.profile, args.live_progress)
    n = sc.n_items
    print(f"\nservecmp: {n} MMLU 5-shot items, both endpoints at once, {args.concurrency} in flight each")
    for role in ROLES:
        print(f"  {role:9} {n / sc.wall_s[role]:6.2f} items/s  ({sc.wall_s[role]:6.1f} s)  "
              f"{sc.requests_per_item[role]:.2f} requests/item")
    cpu_ms = 1000 * sc.cpu_s / n
    print(f"  CPU time of servecmp's process: {1000 * sc.cpu_s:.0f} ms = {cpu_ms:.2f} ms/item "
          f"({cpu_ms / 2:.2f} ms per item per endpoint); budget {CPU_BUDGET_MS} ms/item: "
          f"{'OK' if cpu_ms <= CPU_BUDGET_MS else 'OVER'}" + (" (under cProfile)" if args.profile else "")
          + (" (with the live progress display)" if args.live_progress else ""))
    print(f"  load average after scoring: {load_average()}")
    if args.m:
        tokenizer = args.tokenizer or checkpoint_of(args.baseline)
        lm = run_lm_eval(args.baseline, sc.models["baseline"], tokenizer, args.m, work)
        lm_rate = lm.m_items / lm.eval_s
        base_rate = n / sc.wall_s["baseline"]
        print(f"\nlm-eval local-completions: first {lm.m_items} items, baseline only, num_concurrent=4")
        print(f"  {lm_rate:6.3f} items/s over its evaluation time ({lm.eval_s:.1f} s); "
              f"{lm.m_items / lm.command_s:6.3f} items/s over the whole command ({lm.command_s:.1f} s)")
        print(f"  {lm.n_requests / lm.m_items:.2f} requests/item")
        print(f"  servecmp speed-up on the baseline: {base_rate / lm_rate:.1f}x "
              f"({base_rate:.2f} vs {lm_rate:.3f} items/s)")
        p = parity(lm.samples, sc.records["baseline"])
        print(f"\nparity on the {p['items']} shared items (lm-eval loglikelihood vs servecmp top-20 logprob):")
        print(f"  same chosen option: {p['same_choice']}/{p['items']}")
        where = f" (item {p['worst_item']})" if p["worst_item"] else ""
        print(f"  per-option |gap|: max {p['max_abs_gap']:.4f}{where}, "
              f"median {p['median_abs_gap']:.4f}; exactly equal {p['exact_equal_options']}/{p['options']}")
        if math.isinf(p["max_abs_gap"]):
            print("  (an option fell outside servecmp's top-20 and was scored by echo instead)")
    if args.cli_runs:
        print(f"\ncommand-line start-up (median of {args.cli_runs} fresh processes, wall; budget {BUDGET_S} s):")
        for label, seconds in time_cli(args.cli_runs, [[], ["mcq"]]).items():
            if isinstance(seconds, str):
                print(f"  {label:24} FAILED {seconds}")
            else:
                verdict = "" if label.startswith("python") else ("OK" if seconds <= BUDGET_S else "OVER")
                print(f"  {label:24} {seconds:6.3f} s  {verdict}")
    print(f"\nkept in {work}")


if __name__ == "__main__":
    main()
