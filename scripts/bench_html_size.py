#!/usr/bin/env python3
"""How big is the HTML report of a full MMLU run, and how long does it take to render?

    python scripts/bench_html_size.py [--items 14042] [--change-rate 0.21] [--out DIR] [--seed 0]

Writes a synthetic run directory of ``--items`` items (default: the 14,042 questions of MMLU's test
split) in MMLU's letter format: each item's question and options are a real MMLU question from the
vendored sample (cycled, with a fresh id), so texts have MMLU's lengths; the baseline's option
logprobs are random, the candidate's are the baseline's plus noise tuned so that about
``--change-rate`` of the answers change (the embedded int8 pair changes 21%). Every item carries a
top-20 list, as a vLLM run does. Then renders the report (`servecmp.finish.run_html`, exactly what
`servecmp report RUN --html` writes) and prints its size, how many items it lists and the time.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np


def build_run(root: Path, n: int, change_rate: float, seed: int) -> Path:
    from servecmp import __version__
    from servecmp.mcq.records import ITEMS
    from servecmp.runstore import write_jsonl_atomic
    from servecmp.tasks.registry import load_task

    rng = np.random.default_rng(seed)
    sample = load_task("mmlu-sample", fewshot=0).items
    data = root / "items.jsonl"
    with data.open("w", encoding="utf-8") as fh:
        for i in range(n):
            src = sample[i % len(sample)]
            fh.write(json.dumps({"id": f"syn{i}", "question": src.question, "choices": src.options,
                                 "answer": src.gold, "subject": src.subject}) + "\n")
    task = f"jsonl:{data}"
    items = load_task(task, fewshot=0).items
    run = root / "mcq-synthetic"
    run.mkdir()
    write_jsonl_atomic(run / ITEMS, items)  # as a run writes it when it starts
    # Noise scale found by trial so that ~change_rate of argmaxes move (random logits with sd 1).
    noise = {0.05: 0.08, 0.1: 0.17, 0.21: 0.37, 0.3: 0.56}.get(round(change_rate, 2), change_rate * 1.4)
    fillers = [f" t{j}" for j in range(16)]
    with (run / "records.jsonl").open("w", encoding="utf-8") as fh:
        for it in items:
            base = rng.normal(0, 1, 4) - 2.0
            cand = base + rng.normal(0, noise, 4)
            rest = rng.normal(-6, 1, 16)
            for name, lp in (("baseline", base), ("candidate", cand)):
                top = sorted([*zip([" A", " B", " C", " D"], lp.tolist(), strict=True),
                              *zip(fillers, (rest + rng.normal(0, 0.1, 16)).tolist(), strict=True)],
                             key=lambda t: -t[1])
                fh.write(json.dumps({"item_id": it.item_id, "endpoint": name, "task": task, "subject": it.subject,
                                     "category": None, "gold": it.gold, "option_logprobs": lp.tolist(),
                                     "chosen": int(np.argmax(lp)), "topk": top, "latency_s": 0.1,
                                     "prompt_tokens": 300, "completion_tokens": 1, "n_requests": 1}) + "\n")
    data_task = load_task(task, fewshot=0)
    ep = {"timeout_s": 120.0, "max_concurrency": 4, "requests_per_second": None, "max_retries": 4,
          "api_key_env": None}
    manifest = {
        "kind": "mcq", "version": 3, "servecmp_version": __version__, "task": task, "data_dir": None,
        "source": "jsonl", "source_description": f"synthetic MMLU-sized set ({n:,} items)", "fewshot": 0,
        "fewshot_file": None, "limit": None, "sample": None, "seed": 0, "top_k": 20,
        "task_fingerprint": data_task.fingerprint, "prompt_format_hash": data_task.prompt_format_hash,
        "n_items": n, "endpoints": [
            {**ep, "base_url": "http://base:8000/v1", "model": "synthetic-bf16", "role": "baseline", "name": None},
            {**ep, "base_url": "http://cand:8000/v1", "model": "synthetic-int8", "role": "candidate",
             "name": "candidate"}],
        "secondary": None, "noise_floor": None, "started_at": "2026-11-30T00:00:00+00:00",
        "finished_at": "2026-11-30T01:00:00+00:00",
    }
    (run / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=14042)
    ap.add_argument("--change-rate", type=float, default=0.21)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="keep the run directory and report.html here")
    args = ap.parse_args()
    from servecmp.finish import run_html
    from servecmp.html import write_html
    from servecmp.mcq.compare import compare_run

    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        run = build_run(root, args.items, args.change_rate, args.seed)
        t1 = time.perf_counter()
        cmp = compare_run(run)
        t2 = time.perf_counter()
        page = run_html(run, [])
        t3 = time.perf_counter()
        out = root / "report.html"
        write_html(out, page)
        s = cmp.candidates[0].summary
        size = out.stat().st_size
        listed = page.count('data-item="')
        print(f"items {s.n_items:,}; flips {s.flips.flips:,}; answer changes {s.answer_changes.count:,} "
              f"({s.answer_changes.rate:.1%}); listed {listed:,}")
        print(f"report.html: {size:,} bytes ({size / 1e6:.1f} MB); {size / max(listed, 1) / 1e3:.2f} kB per listed "
              f"item incl. plots and tables")
        print(f"times: build run {t1 - t0:.1f} s, summary {t2 - t1:.1f} s, render (summary again + page) "
              f"{t3 - t2:.1f} s")
        if args.out:
            print(f"kept: {out}")
        assert math.isfinite(size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
