#!/usr/bin/env python
"""Benchmark `servecmp mtbench` against live endpoints: where the time goes and what the cache saves.

Prints, for one run on a few questions:
- answer generation: wall time, completion tokens and tokens/s per endpoint;
- judging: wall time, judge calls, seconds per call;
- the judgment cache on a re-run: (a) the same run re-judged from scratch (its judgment files set
  aside, then --resume): every judgment should come from the cache; (b) a fresh run in a new
  directory sharing the cache: answers sampled at temperature 0 reproduce and hit the cache,
  sampled ones (writing, roleplay, stem, humanities) are new and cost calls.

Example, with the local pair from `servecmp serve` and the baseline as the (offline demo) judge:

    .venv/bin/python scripts/bench_mtbench.py --baseline http://127.0.0.1:8001 \
        --candidate http://127.0.0.1:8002 --judge-url baseline --limit 4 --max-tokens 64

A paid judge needs --yes (the script never asks).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
from pathlib import Path

from rich.console import Console

from servecmp.config import load_config
from servecmp.mtbench.report import MtBenchSummary
from servecmp.mtbench.run import MtBenchResult, RunIO, execute
from servecmp.mtbench.rundir import MtRunPaths
from servecmp.mtbench.settings import MtBenchOptions, new_settings, resumed_settings


def _report(label: str, r: MtBenchResult) -> None:
    g, j = r.generation, r.judging
    print(f"== {label}: {r.paths.root}")
    print(f"generation wall time: {g.total_s:.1f} s")
    for role, wall in g.wall_s.items():
        toks = g.completion_tokens.get(role, 0)
        rate = toks / wall if wall > 0 else float("nan")
        print(f"  {role:9s}: {g.answers.get(role, 0)} questions, {toks} completion tokens in {wall:.1f} s "
              f"= {rate:.1f} tokens/s")  # fmt: skip
    per_call = j.wall_s / j.calls if j.calls else float("nan")
    print(f"judging wall time: {j.wall_s:.1f} s; {j.calls} judge calls ({per_call:.2f} s/call), "
          f"{j.cache_hits} from cache, {j.http_requests} HTTP requests, {j.skipped} skipped")  # fmt: skip
    s = r.summary
    if not isinstance(s, MtBenchSummary):  # this benchmark runs one candidate
        raise TypeError("bench_mtbench.py expects a one-candidate run")
    b, c = s.endpoints["baseline"].score.mean, s.endpoints["candidate"].score.mean
    print(f"scores: baseline {b}, candidate {c}, Δ {s.delta.point} (n={s.delta.n}); complete={s.complete}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", required=True)
    ap.add_argument("--candidate", required=True)
    ap.add_argument("--baseline-model")
    ap.add_argument("--candidate-model")
    ap.add_argument("--judge-url", default="baseline")
    ap.add_argument("--judge-model")
    ap.add_argument("--limit", type=int, default=4)
    ap.add_argument("--categories")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--mode", default="both", choices=["single", "pairwise", "both"])
    ap.add_argument("--config", "-c", type=Path)
    ap.add_argument("--keep", action="store_true", help="keep the run directories")
    ap.add_argument("--yes", action="store_true", help="confirm the cost of a paid judge")
    args = ap.parse_args()

    cfg = load_config(args.config)
    work = Path(tempfile.mkdtemp(prefix="bench-mtbench-"))
    cache = work / "shared-cache"
    io = RunIO(console=Console(stderr=True), is_tty=False, ask=lambda _: False)
    opts = MtBenchOptions(
        baseline=args.baseline, candidate=args.candidate, baseline_model=args.baseline_model,
        candidate_model=args.candidate_model, judge_url=args.judge_url, judge_model=args.judge_model,
        limit=args.limit, categories=args.categories.split(",") if args.categories else None,
        max_tokens=args.max_tokens, mode=args.mode, judge_cache=str(cache), yes=args.yes,
    )  # fmt: skip
    try:
        first = asyncio.run(execute(new_settings(opts, cfg), io, runs_root=work / "runs"))
        _report("first run", first)

        # (a) re-judge the same answers from scratch: set the judgment files aside, then resume.
        judged = first.paths.root / "model_judgment"
        shutil.move(judged, first.paths.root / "model_judgment.first")
        judged.mkdir()
        paths = MtRunPaths(first.paths.root)
        settings, manifest = resumed_settings(
            paths, MtBenchOptions(judge_cache=str(cache), yes=args.yes), cfg
        )
        rejudged = asyncio.run(execute(settings, io, resume=(paths, manifest)))
        _report("same answers re-judged (cache)", rejudged)
        total = rejudged.judging.calls + rejudged.judging.cache_hits
        print(f"judge calls saved by the cache: {rejudged.judging.cache_hits} of {total}")

        # (b) a fresh run sharing the cache: new answers where sampling makes them differ.
        second = asyncio.run(execute(new_settings(opts, cfg), io, runs_root=work / "runs"))
        _report("fresh run, shared cache", second)
        total = second.judging.calls + second.judging.cache_hits
        print(f"judge calls saved by the cache: {second.judging.cache_hits} of {total}")
    finally:
        if args.keep:
            print(f"run directories kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
