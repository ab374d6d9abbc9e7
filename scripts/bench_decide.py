"""Requests to a verdict: a stored baseline + `--until-decided` against the fixed full run of both
endpoints (issue 20), per candidate, with every verdict disagreement counted.

    # the local ladder (scripts/reproduce_paper.py builds and serves every rung; slow: minutes per rung)
    python scripts/bench_decide.py --ladder --schemes w8a8,w8a8-tensor,w4a16,rtn-int4,drop-1,prune-20 --out DIR
    # rungs already run: replay their full run directories (reproduce_paper's DIR/ladder.json)
    python scripts/bench_decide.py --ladder-json DIR/ladder.json
    # one served pair: a full fixed run, a baseline profile and a live --until-decided run on it
    python scripts/bench_decide.py --baseline URL --candidate URL [--task mmlu-sample] --out DIR

Why a replay is exact: `--until-decided` asks items in the order `servecmp.mcq.sequential.item_order`
gives (the run's seed) and decides after each batch from the records of the items asked so far,
nothing else. Given the full run's records (every item of both endpoints), the looks of a stored
baseline + `--until-decided` run are therefore a function of those records: the bench replays them
(`replay`) and prices each look at the candidate's own requests per answered item (its records'
``n_requests``). With --baseline/--candidate it also runs the real thing (a profile with
--baseline-only, then --baseline-run ... --until-decided) and reports whether the live run stopped
where the replay did (it can differ only where a server answers differently when asked again).

The fixed full run's verdict is decided on the fixed-n intervals (Wilson / bootstrap) of all items;
the sequential one on the anytime-valid intervals at the stop. A *contradiction* is a gate PASS in
one and FAIL in the other; a gate decided in one and INCONCLUSIVE in the other is counted apart.

Prints one row per candidate (requests full / sequential, ratio, items used, each verdict), the
totals (goal: >= 4x fewer requests over the ladder, no contradiction) and writes DIR/bench_decide.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GATES = ("flips<=5%", "kl<=0.02", "delta_acc>=-2%")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ladder", action="store_true", help="Run scripts/reproduce_paper.py first (--schemes).")
    src.add_argument("--ladder-json", type=Path, help="A ladder.json of reproduce_paper.py: replay its runs.")
    src.add_argument("--runs", type=Path, nargs="+", help="Full joint run directories to replay.")
    src.add_argument("--baseline", help="A live pair: baseline URL (with --candidate).")
    p.add_argument("--candidate", help="A live pair: candidate URL.")
    p.add_argument("--schemes", default=None, help="--ladder: the rungs (reproduce_paper.py --schemes).")
    p.add_argument("--task", default="mmlu-sample")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--gate", action="append", default=None, help=f"Gates (default: {', '.join(GATES)}).")
    p.add_argument("--out", type=Path, default=Path("bench-decide"))
    return p.parse_args(argv)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "servecmp", "mcq", *args], capture_output=True, text=True, cwd=ROOT)


def _verdict_statuses(run_dir: Path, gates: list[Any]) -> list[str]:
    """The verdict `servecmp report RUN_DIR --gate ...` gives (fixed-n intervals for a fixed run,
    anytime-valid ones for an --until-decided run): each gate's status, first candidate."""
    from servecmp.finish import adapter

    kind = adapter("mcq")
    return [g.status for g in kind.verdicts(kind.load(run_dir, show=0), gates)[0].gates]


def replay(run_dir: Path, candidate: str, gates: list[Any], batch: int) -> dict[str, Any]:
    """The looks a stored-baseline --until-decided run would take on this full run's records."""
    from servecmp.mcq.records import McqRecord
    from servecmp.mcq.run import load_settings_task
    from servecmp.mcq.sequential import anytime_estimates, item_order, per_item_values, statuses, verdict_known
    from servecmp.mcq.settings import read_manifest
    from servecmp.runstore import iter_jsonl

    manifest = read_manifest(run_dir)
    data = load_settings_task(manifest.settings(runs_dir=run_dir.parent))
    ids = [it.item_id for it in item_order(data.items, manifest.seed)]
    by: dict[str, dict[str, McqRecord]] = {}
    for raw in iter_jsonl(run_dir / "records.jsonl"):
        r = McqRecord.model_validate(raw)
        if not r.repeat:
            by.setdefault(r.endpoint, {})[r.item_id] = r
    base, cand = by["baseline"], by[candidate]
    full = sum(r.n_requests for r in base.values()) + sum(r.n_requests for r in cand.values())
    pos, st = 0, ["inconclusive"] * len(gates)
    while pos < len(ids):
        pos = min(pos + batch, len(ids))
        vals = per_item_values(list(base.values()), list(cand.values()), ids[:pos])
        st = statuses(gates, anytime_estimates(vals, gates))
        if verdict_known(st):
            break
    used = sum(cand[i].n_requests for i in ids[:pos] if i in cand)
    return {"items": pos, "n_items": len(ids), "requests_full": full, "requests_sequential": used,
            "requests_profile": sum(r.n_requests for r in base.values()),
            "sequential": st}


#: The design measurement: the share of the item set a run would ask, the margin bins, the splits.
DESIGN_FRACTION = 0.25
DESIGN_BINS = 5
DESIGN_SPLITS = 50


def design_gain(run_dir: Path, candidate: str, *, fraction: float = DESIGN_FRACTION, bins: int = DESIGN_BINS,
                splits: int = DESIGN_SPLITS) -> dict[str, float | None]:
    """How much a margin-weighted design would beat plain random order (issue 20, "which items first").

    The design: item i is asked with probability pi_i proportional to sqrt(p_i), where p_i is the
    share of items that flipped (or changed answer) among the baseline-margin bin of item i, learnt
    on the other half of the items (cross-fitted: 2 folds, `splits` random splits), scaled so that
    sum(pi) = fraction * N (capped at 1); the estimate is Horvitz-Thompson, unbiased. sqrt(p) is the
    allocation that minimises its variance for 0/1 values (Neyman). The gain is the variance of a
    simple random sample of the same expected size over the design's (Poisson sampling), both exact
    given the full run's per-item values: > 1 means fewer items for the same precision."""
    import numpy as np

    from servecmp.mcq.from_records import option_matrix, pair_records
    from servecmp.mcq.records import McqRecord
    from servecmp.metrics import mcq
    from servecmp.runstore import iter_jsonl

    recs = [McqRecord.model_validate(r) for r in iter_jsonl(run_dir / "records.jsonl")]
    paired = pair_records([r for r in recs if r.endpoint == "baseline" and not r.repeat],
                          [r for r in recs if r.endpoint == candidate and not r.repeat])
    k = max(len(r.option_logprobs) for r in paired.base)
    b_lp, c_lp = option_matrix(paired.base, k), option_matrix(paired.cand, k)
    gold = np.array([r.gold for r in paired.base])
    bc, cc = mcq.chosen_options(b_lp), mcq.chosen_options(c_lp)
    margin = np.nan_to_num(mcq.top_margin(b_lp), nan=0.0)
    values = {"flips": (mcq.correct(bc, gold) != mcq.correct(cc, gold)).astype(float),
              "changes": (bc != cc).astype(float)}
    n_items = len(margin)
    n = fraction * n_items
    rng = np.random.default_rng(0)
    out: dict[str, float | None] = {}
    for metric, y in values.items():
        var_srs = (1 - n / n_items) * float(np.var(y, ddof=1)) / n
        if var_srs == 0:
            out[metric] = None  # nothing varies: no design can do better or worse
            continue
        ratios = []
        for _ in range(splits):
            fold = rng.permutation(n_items) % 2
            p_hat = np.empty(n_items)
            for f in (0, 1):
                train, test = fold != f, fold == f
                edges = np.quantile(margin[train], np.linspace(0, 1, bins + 1)[1:-1])
                b_train, b_test = np.searchsorted(edges, margin[train]), np.searchsorted(edges, margin[test])
                hits = np.bincount(b_train, weights=y[train], minlength=bins)
                sizes = np.bincount(b_train, minlength=bins)
                p_hat[test] = ((hits + 0.5) / (sizes + 1.0))[b_test]  # never 0: every item keeps a chance
            pi = _inclusion(np.sqrt(p_hat), n)
            var_ht = float(np.sum((1 - pi) / pi * y**2)) / n_items**2
            ratios.append(var_srs / var_ht if var_ht > 0 else float("inf"))
        out[metric] = float(np.median(ratios))
    return out


def _inclusion(weights: Any, n: float) -> Any:
    """Inclusion probabilities proportional to ``weights``, summing to ``n``, capped at 1 (the
    capped items' share given to the others until none exceeds 1)."""
    import numpy as np

    pi = np.zeros_like(weights)
    free = np.ones(weights.shape, dtype=bool)
    while True:
        pi[free] = weights[free] * (n - (~free).sum()) / weights[free].sum()
        over = free & (pi >= 1)
        if not over.any():
            return pi
        pi[over], free[over] = 1.0, False


def compare(fixed: list[str], seq: list[str]) -> tuple[int, int]:
    """(contradictions, decided in one and inconclusive in the other)."""
    contra = sum(1 for a, b in zip(fixed, seq, strict=True) if {a, b} == {"pass", "fail"})
    half = sum(1 for a, b in zip(fixed, seq, strict=True) if (a == "inconclusive") != (b == "inconclusive"))
    return contra, half


def bench_run(run_dir: Path, gates: list[Any], batch: int, label: str | None = None) -> list[dict[str, Any]]:
    from servecmp.mcq.settings import read_manifest

    rows = []
    manifest = read_manifest(run_dir)
    fixed = _verdict_statuses(run_dir, gates) if len(manifest.candidates) == 1 else None
    for c in manifest.candidates:
        name = c.name or "candidate"
        row = replay(run_dir, name, gates, batch)
        row.update(candidate=label or c.model or name, run_dir=str(run_dir), fixed=fixed,
                   design_gain=design_gain(run_dir, name))
        if fixed is not None:
            row["contradictions"], row["half_decided"] = compare(fixed, row["sequential"])
        rows.append(row)
    return rows


def live_pair(args: argparse.Namespace, gates: list[Any], gate_exprs: list[str]) -> list[dict[str, Any]]:
    """A full fixed run, a baseline profile and a live stored-baseline --until-decided run."""
    common = ["--task", args.task, *(["--limit", str(args.limit)] if args.limit else [])]
    fixed_runs, prof_runs, seq_runs = args.out / "fixed", args.out / "profile", args.out / "sequential"
    for d in (fixed_runs, prof_runs, seq_runs):
        d.mkdir(parents=True, exist_ok=True)

    def newest(d: Path) -> Path:
        return max(d.iterdir(), key=lambda p: p.stat().st_mtime)

    proc = _cli("--baseline", args.baseline, "--candidate", args.candidate, *common, "--runs-dir", str(fixed_runs),
                "--json")
    if proc.returncode not in (0, 1, 4):
        raise SystemExit(f"fixed run failed: {proc.stderr.strip()[-400:]}")
    fixed_dir = newest(fixed_runs)
    rows = bench_run(fixed_dir, gates, args.batch)
    proc = _cli("--baseline", args.baseline, "--baseline-only", *common, "--runs-dir", str(prof_runs))
    if proc.returncode != 0:
        raise SystemExit(f"profile failed: {proc.stderr.strip()[-400:]}")
    profile = newest(prof_runs)
    seq_args = ["--baseline-run", str(profile), "--candidate", args.candidate, "--runs-dir", str(seq_runs),
                "--until-decided", "--batch", str(args.batch)]
    proc = _cli(*seq_args, *(a for g in gate_exprs for a in ("--gate", g)))
    if proc.returncode not in (0, 1, 4):
        raise SystemExit(f"sequential run failed: {proc.stderr.strip()[-400:]}")
    seq_dir = newest(seq_runs)
    looks = json.loads((seq_dir / "looks.json").read_text())
    live_items = looks["looks"][-1]["position"] if looks["looks"] else 0
    live_status = _verdict_statuses(seq_dir, gates)
    cand_requests = sum(json.loads(x).get("n_requests", 1) for x in (seq_dir / "records.jsonl").read_text().splitlines()
                        if x.strip() and json.loads(x)["endpoint"] == "candidate")
    rows[0].update(live={"run_dir": str(seq_dir), "items": live_items, "statuses": live_status,
                         "requests": cand_requests, "same_stop_as_replay": live_items == rows[0]["items"]})
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from servecmp.gates import parse_gates

    gate_exprs = args.gate or list(GATES)
    gates = parse_gates(gate_exprs, "mcq")
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    if args.baseline:
        if not args.candidate:
            raise SystemExit("--baseline needs --candidate")
        rows = live_pair(args, gates, gate_exprs)
    else:
        ladder_json = args.ladder_json
        if args.ladder:
            cmd = [sys.executable, str(ROOT / "scripts" / "reproduce_paper.py"), "--out", str(args.out),
                   "--task", args.task, *(["--schemes", args.schemes] if args.schemes else []),
                   *(["--limit", str(args.limit)] if args.limit else [])]
            subprocess.run(cmd, check=True, cwd=ROOT)
            ladder_json = args.out / "ladder.json"
        if ladder_json is not None:
            ladder = json.loads(ladder_json.read_text())
            runs = [(Path(r["run_dir"]), r["candidate"]) for r in ladder["rows"] if r.get("run_dir")]
        else:
            runs = [(d, None) for d in args.runs]
        for d, label in runs:
            rows.extend(bench_run(d, gates, args.batch, label))
    print_table(rows, gate_exprs)
    (args.out / "bench_decide.json").write_text(json.dumps({"gates": gate_exprs, "batch": args.batch, "rows": rows},
                                                           indent=2))
    return 0


def print_table(rows: list[dict[str, Any]], gate_exprs: list[str]) -> None:
    print(f"gates: {', '.join(gate_exprs)}")
    print(f"{'candidate':<28} {'items':>9} {'req full':>9} {'req seq':>8} {'ratio':>6}  fixed -> sequential")
    for r in rows:
        ratio = r["requests_full"] / max(r["requests_sequential"], 1)
        fixed = "/".join(s[:4] for s in r["fixed"]) if r.get("fixed") else "n/a"
        seq = "/".join(s[:4] for s in r["sequential"])
        print(f"{r['candidate'][:28]:<28} {r['items']:>4}/{r['n_items']:<4} {r['requests_full']:>9,} "
              f"{r['requests_sequential']:>8,} {ratio:>5.1f}x  {fixed} -> {seq}")
        if "live" in r:
            lv = r["live"]
            same = "same" if lv["same_stop_as_replay"] else "NOT the same"
            print(f"  live run: stopped at item {lv['items']} ({same} as the replay), {lv['requests']:,} candidate "
                  f"requests, {'/'.join(s[:4] for s in lv['statuses'])}")
    print(f"margin-weighted design against random order (variance ratio at {DESIGN_FRACTION:.0%} of the items, "
          "Horvitz-Thompson, cross-fitted; > 1 favours the design):")
    for r in rows:
        g = r.get("design_gain") or {}
        print(f"  {r['candidate'][:28]:<28} " + "  ".join(
            f"{m} {'n/a (constant)' if v is None else f'{v:.2f}x'}" for m, v in g.items()))
    full = sum(r["requests_full"] for r in rows)
    seq = sum(r["requests_sequential"] for r in rows)
    contra = sum(r.get("contradictions", 0) for r in rows)
    half = sum(r.get("half_decided", 0) for r in rows)
    print(f"total: {full:,} requests for the fixed full runs, {seq:,} with a stored baseline + --until-decided "
          f"({full / max(seq, 1):.1f}x fewer); contradictions {contra}; decided in one run only {half}")
    if rows and "requests_profile" in rows[0]:
        # The profile is made once and reused (next month's candidates too); counted once here.
        prof = rows[0]["requests_profile"]
        print(f"with the baseline profile counted once ({prof:,} requests): {seq + prof:,} "
              f"({full / max(seq + prof, 1):.1f}x fewer)")


if __name__ == "__main__":
    raise SystemExit(main())
