"""The paper's observation on the local candidate ladder: accuracy barely moves while answers flip.

    python scripts/reproduce_paper.py [--schemes w8a8,rtn-int4,drop-3,...] [--limit 228] \
        [--baseline-port 8301 --candidate-port 8302] [--out ladder.json]

Builds each rung of the ladder from the embedded SmolLM2-135M-Instruct (once, into the cache),
starts the baseline server once, then for each rung starts a fresh candidate server (a quantized
server's answers can depend on its history, see the vLLM CPU notes), runs `servecmp mcq --json` on
the vendored MMLU sample against both, and stops the candidate. Prints one row per rung: accuracy
of each side, their difference, the flip rate (items whose correctness changed), the answer-change
rate and the mean option KL. Schemes this CPU cannot serve are skipped with a note.

Takes about 3 min per rung on a 2-core AVX-512 machine with the full 228-item sample (baseline and
candidate each on their own core), plus the baseline's start-up.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from servecmp.serving.cpu import LADDER

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--schemes", default=",".join(LADDER), help="Comma-separated candidate schemes (the ladder).")
    p.add_argument("--task", default="mmlu-sample")
    p.add_argument("--limit", type=int, default=None, help="Only the first N items of the task.")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--baseline-port", type=int, default=8301)
    p.add_argument("--candidate-port", type=int, default=8302)
    p.add_argument("--runs-dir", type=Path, default=Path("runs/ladder"))
    p.add_argument("--out", type=Path, default=None, help="Write every rung's summary row here (JSON).")
    return p.parse_args(argv)


def run_mcq(args: argparse.Namespace, baseline_url: str, candidate_url: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "servecmp", "mcq", "--baseline", baseline_url, "--candidate", candidate_url,
           "--task", args.task, "--concurrency", str(args.concurrency), "--runs-dir", str(args.runs_dir), "--json"]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode not in (0, 1, 4):  # 1: a gate failed, 4: inconclusive; both still summarize
        raise RuntimeError(f"servecmp mcq failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return dict(json.loads(proc.stdout))


def row_of(scheme: str, simulated: bool, summary: dict[str, Any], seconds: float) -> dict[str, Any]:
    acc = summary["accuracy"]
    return {
        "scheme": scheme,
        "simulated": simulated,
        "n_items": summary["n_items"],
        "acc_baseline": acc["baseline"]["point"],
        "acc_candidate": acc["candidate"]["point"],
        "acc_diff": acc["diff"]["point"],
        "flip_rate": summary["flips"]["rate"]["rate"],
        "answer_change_rate": summary["answer_changes"]["rate"],
        "option_kl_mean": summary["option_kl"]["mean"],
        "seconds": round(seconds, 1),
    }


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:6.1f}%"


def main(argv: list[str] | None = None) -> int:
    from servecmp.serving.cpu import parse_scheme, read_cpu_flags, scheme_support
    from servecmp.serving.modelpair import embedded_servers, ensure_embedded_pair
    from servecmp.serving.servers import ServerPair

    args = parse_args(argv)
    flags = read_cpu_flags()
    schemes = []
    for name in (n.strip() for n in args.schemes.split(",") if n.strip()):
        scheme = parse_scheme(name)
        ok, why = scheme_support(scheme, flags)
        if ok:
            schemes.append(scheme)
        else:
            print(f"skipping {scheme.name}: {why}", file=sys.stderr)
    if not schemes:
        print("no scheme to compare", file=sys.stderr)
        return 2
    pairs = [ensure_embedded_pair(candidate_scheme=s) for s in schemes]  # builds what is missing, once
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    first = embedded_servers(pairs[0], baseline_port=args.baseline_port, candidate_port=args.candidate_port,
                             flags=flags)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    with ServerPair({"baseline": first["baseline"]}, run_dir=args.runs_dir / f"servers-{stamp}") as base:
        baseline_url = base.handles["baseline"].url
        for scheme, pair in zip(schemes, pairs, strict=True):
            cfg = embedded_servers(pair, baseline_port=args.baseline_port, candidate_port=args.candidate_port,
                                   flags=flags)["candidate"]
            t0 = time.monotonic()
            print(f"{scheme.name}: starting its server", file=sys.stderr)
            with ServerPair({"candidate": cfg}, run_dir=args.runs_dir / f"servers-{stamp}-{scheme.name}") as cand:
                summary = run_mcq(args, baseline_url, cand.handles["candidate"].url)
            rows.append(row_of(scheme.label, scheme.simulated, summary, time.monotonic() - t0))
            print(json.dumps(rows[-1]), file=sys.stderr)
    print(f"{'candidate':28} {'items':>5} {'acc base':>8} {'acc cand':>8} {'diff':>7} {'flips':>7} "
          f"{'changed':>7} {'KL':>7}")
    for r in rows:
        kl = "-" if r["option_kl_mean"] is None else f"{r['option_kl_mean']:7.4f}"
        print(f"{r['scheme']:28} {r['n_items']:5d} {pct(r['acc_baseline']):>8} {pct(r['acc_candidate']):>8} "
              f"{pct(r['acc_diff']):>7} {pct(r['flip_rate']):>7} {pct(r['answer_change_rate']):>7} {kl:>7}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
