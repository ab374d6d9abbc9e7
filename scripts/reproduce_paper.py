"""The paper's observation on the local candidate ladder: accuracy barely moves while answers flip,
and KL divergence tracks the flips (Dutta et al., "Accuracy is Not All You Need", 2024, Table/Fig. 2:
Spearman(flips, KL) = 0.981 on MMLU 5-shot across model/scheme pairs).

    python scripts/reproduce_paper.py --schemes w8a8,w8a8-tensor,rtn-int4,drop-3,... --out DIR \
        [--limit N] [--baseline-port 8401 --candidate-port 8402] [--no-noise-floor]
    python scripts/reproduce_paper.py --from-json DIR/ladder.json --out DIR   # re-print and re-plot

Builds each rung of the ladder from the embedded SmolLM2-135M-Instruct (once, into the cache),
starts the baseline server once, then for each rung starts a fresh candidate server on the other
core (a quantized server's answers can depend on its history, see the vLLM CPU notes), runs
`servecmp mcq --json` on the task against both, and stops the candidate. Before the ladder, the
*noise floor*: the baseline checkpoint served a second time, freshly started, as the candidate
(same checkpoint, same dtype, other core), so any flip there is the servers', not a compression's.

Prints the paper's table (per candidate: Δacc with its 95% interval, flips with c→w / w→c and the
McNemar p, answer changes, mean option KL and mean top-k next-token KL), the Spearman correlations
across candidates (flips vs KL, answer changes vs KL, |Δacc| vs KL, with permutation p-values from
`servecmp.metrics.stats.correlation`) beside the paper's 0.981, and whether the baseline server
answered identically on every pass (each rung re-scores it). Writes DIR/ladder.json (rows,
correlations, baseline consistency) after every rung, and the scatter plot DIR/ladder-flips-vs-kl.png
(flips vs option KL, one labelled point per candidate). Schemes this CPU cannot serve are skipped
with a note. Every server the script starts is stopped when it ends, also on Ctrl-C or SIGTERM.

Takes ~4-6 min per rung on a 2-core AVX-512 machine with the full 228-item MMLU sample (baseline and
candidate each on their own core; a server start is 40-150 s of it), plus the baseline's start-up.
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
PAPER_SPEARMAN = 0.981
NOISE_FLOOR = "noise-floor"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from servecmp.serving.cpu import LADDER

    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--schemes", default=",".join(LADDER), help="Comma-separated candidate schemes (the ladder).")
    p.add_argument("--task", default="mmlu-sample")
    p.add_argument("--limit", type=int, default=None, help="Only the first N items of the task.")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--baseline-port", type=int, default=8401)
    p.add_argument("--candidate-port", type=int, default=8402)
    p.add_argument(
        "--dtype",
        default=None,
        help="Serve baseline and candidates in this dtype (default: bfloat16 where the CPU has native "
        "bf16, else float32). float32 avoids bf16's coarse logits (steps of 0.125 nats near the "
        "answer), which make ties and one-step flips common on a chance-level model.",
    )
    p.add_argument("--no-noise-floor", action="store_true", help="Skip the baseline-vs-a-fresh-copy-of-itself row.")
    p.add_argument(
        "--out", type=Path, default=Path("ladder"), help="Directory for ladder.json, the plot and the run directories."
    )
    p.add_argument("--plot", type=Path, default=None, help="Plot path (default OUT/ladder-flips-vs-kl.png).")
    p.add_argument(
        "--from-json",
        type=Path,
        default=None,
        help="Serve nothing: re-print the table and re-draw the plot from a ladder.json.",
    )
    return p.parse_args(argv)


# --- one rung ------------------------------------------------------------------------------------


def run_mcq(args: argparse.Namespace, baseline_url: str, candidate_url: str, runs_dir: Path) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "servecmp",
        "mcq",
        "--baseline",
        baseline_url,
        "--candidate",
        candidate_url,
        "--task",
        args.task,
        "--concurrency",
        str(args.concurrency),
        "--runs-dir",
        str(runs_dir),
        "--json",
    ]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    last = ""
    for attempt in range(3):  # the CLI is shared with other work in progress: retry a flaky start
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode in (0, 1, 4) and proc.stdout.strip():  # 1: a gate failed, 4: inconclusive
            return dict(json.loads(proc.stdout))
        last = proc.stderr.strip()[-800:]
        print(f"servecmp mcq failed ({proc.returncode}), attempt {attempt + 1}: {last}", file=sys.stderr)
        time.sleep(60)
    raise RuntimeError(f"servecmp mcq failed three times: {last}")


def _est(e: dict[str, Any] | None) -> list[float | None]:
    return [None, None, None] if e is None else [e.get("point"), e.get("low"), e.get("high")]


def row_of(
    name: str, description: str, simulated: bool, summary: dict[str, Any], seconds: dict[str, float]
) -> dict[str, Any]:
    acc, fl, ch = summary["accuracy"], summary["flips"], summary["answer_changes"]
    okl, tk = summary["option_kl"], summary.get("topk_kl")
    return {
        "candidate": name,
        "description": description,
        "simulated": simulated,
        "n_items": summary["n_items"],
        "acc_baseline": acc["baseline"]["point"],
        "acc_candidate": acc["candidate"]["point"],
        "acc_candidate_ci": _est(acc["candidate"])[1:],
        "delta_acc": acc["diff"]["point"],
        "delta_acc_ci": _est(acc["diff"])[1:],
        "flips": fl["flips"],
        "flip_rate": fl["rate"]["rate"],
        "flip_rate_ci": [fl["rate"]["low"], fl["rate"]["high"]],
        "correct_to_wrong": fl["correct_to_wrong"],
        "wrong_to_correct": fl["wrong_to_correct"],
        "mcnemar_p": fl["mcnemar_p"],
        "answer_changes": ch["count"],
        "answer_change_rate": ch["rate"],
        "answer_change_rate_ci": [ch["low"], ch["high"]],
        "option_kl_mean": okl["mean"],
        "option_kl_ci": [okl["mean_ci"]["low"], okl["mean_ci"]["high"]],
        "option_kl_median": okl["median"],
        "option_kl_max": okl["max"],
        "topk_kl_mean": None if tk is None else tk["kl_hat"]["mean"],
        "topk_kl_ci": None if tk is None else [tk["kl_hat"]["mean_ci"]["low"], tk["kl_hat"]["mean_ci"]["high"]],
        "topk_unresolved_mass_mean": None if tk is None else tk["unresolved_baseline_mass"]["mean"],
        "run_dir": summary.get("run", {}).get("run_dir"),
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }


# --- the baseline's own consistency across passes ------------------------------------------------


def _records(run_dir: str | None, role: str) -> dict[str, dict[str, Any]]:
    if not run_dir:
        return {}
    path = Path(run_dir)
    if not path.is_absolute():
        path = ROOT / path
    out: dict[str, dict[str, Any]] = {}
    try:
        with (path / "records.jsonl").open(encoding="utf-8") as fh:
            for line in fh:
                rec = json.loads(line)
                if rec.get("endpoint") == role:
                    out[rec["item_id"]] = rec
    except OSError:
        return {}
    return out


def baseline_consistency(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Did the one baseline server answer every pass identically? Each rung re-scores it, so pass k
    against pass 1 is the baseline server, warm (prefix cache filled, k-1 passes of traffic), against
    itself cold: a second noise floor beside the fresh-copy one, which only compares two cold servers.
    Per later pass: items whose option logprobs moved, answer changes, flips and mean option KL."""
    import numpy as np

    from servecmp.metrics import mcq

    passes = [(r["candidate"], _records(r.get("run_dir"), "baseline")) for r in rows if r.get("run_dir")]
    passes = [(name, recs) for name, recs in passes if recs]
    if len(passes) < 2:
        return {"passes": len(passes)}
    ref_name, ref = passes[0]
    per_pass = []
    for name, recs in passes[1:]:
        items = sorted(set(ref) & set(recs))
        a = np.array([ref[i]["option_logprobs"] for i in items], dtype=float)
        b = np.array([recs[i]["option_logprobs"] for i in items], dtype=float)
        gold = np.array([ref[i]["gold"] for i in items])
        ok = np.isfinite(a) & np.isfinite(b)
        moved = int(np.count_nonzero(np.any(ok & (np.abs(np.where(ok, a - b, 0)) > 1e-4), axis=1)))
        ca, cb = mcq.chosen_options(a), mcq.chosen_options(b)
        fl = mcq.flips(mcq.correct(ca, gold), mcq.correct(cb, gold))
        per_pass.append(
            {
                "pass": name,
                "n": len(items),
                "items_moved": moved,
                "max_abs_logprob_diff": float(np.max(np.abs(np.where(ok, a - b, 0)))),
                "answer_changes": int(np.count_nonzero(ca != cb)),
                "flips": fl.flips,
                "correct_to_wrong": fl.correct_to_wrong,
                "wrong_to_correct": fl.wrong_to_correct,
                "option_kl_mean": float(np.mean(mcq.option_kl(a, b).kl)),
            }
        )
    return {
        "passes": len(passes),
        "reference_pass": ref_name,
        "per_pass": per_pass,
        "max_abs_option_logprob_diff": max(p["max_abs_logprob_diff"] for p in per_pass),
        "max_answer_changes": max(p["answer_changes"] for p in per_pass),
        "max_flips": max(p["flips"] for p in per_pass),
        "max_items_moved": max(p["items_moved"] for p in per_pass),
        "mean_option_kl_mean": float(np.mean([p["option_kl_mean"] for p in per_pass])),
        "max_option_kl_mean": max(p["option_kl_mean"] for p in per_pass),
    }


# --- correlations, table, plot -------------------------------------------------------------------


def correlations(rows: list[dict[str, Any]], *, with_partial: bool = False) -> dict[str, Any]:
    """Spearman/Pearson across candidates. Rows marked "partial" (an interrupted rung, scored on
    fewer items) are left out unless `with_partial`; then a "with_partial" block repeats them all."""
    from servecmp.metrics.stats import correlation

    ladder = [
        r
        for r in rows
        if r["candidate"] != NOISE_FLOOR
        and r.get("option_kl_mean") is not None
        and (with_partial or not r.get("partial"))
    ]
    out: dict[str, Any] = {"n_candidates": len(ladder), "paper_spearman_flips_kl": PAPER_SPEARMAN}
    if len(ladder) < 3:
        return out
    flips = [r["flip_rate"] for r in ladder]
    changes = [r["answer_change_rate"] for r in ladder]
    dacc = [abs(r["delta_acc"]) for r in ladder]
    for kl_key, kl_name in (("option_kl_mean", "option_kl"), ("topk_kl_mean", "topk_kl")):
        kl = [r[kl_key] for r in ladder]
        if any(v is None for v in kl):
            continue
        for x_name, x in (("flips", flips), ("changes", changes), ("abs_delta_acc", dacc)):
            c = correlation(x, kl)
            out[f"{x_name}~{kl_name}"] = {
                "spearman_r": c.spearman_r,
                "spearman_p": c.spearman_p,
                "pearson_r": c.pearson_r,
                "pearson_p": c.pearson_p,
                "n": c.n,
                "p_method": c.p_method,
            }
    c = correlation(flips, dacc)
    out["flips~abs_delta_acc"] = {
        "spearman_r": c.spearman_r,
        "spearman_p": c.spearman_p,
        "n": c.n,
        "p_method": c.p_method,
    }
    if not with_partial and any(r.get("partial") for r in rows):
        out["with_partial"] = correlations(rows, with_partial=True)
    return out


def _pct(x: float | None, sign: bool = False) -> str:
    if x is None:
        return "-"
    return f"{100 * x:+.1f}" if sign else f"{100 * x:.1f}"


def _ci(ci: list[float | None] | None, sign: bool = False) -> str:
    if not ci or ci[0] is None or ci[1] is None:
        return ""
    return f"[{_pct(ci[0], sign)}, {_pct(ci[1], sign)}]"


def _kl(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def table_lines(rows: list[dict[str, Any]]) -> list[str]:
    head = (
        f"{'candidate':22} {'n':>3} {'acc %':>5} {'Δacc pts [95% CI]':>20} {'flips % [95% CI]':>20} "
        f"{'c→w/w→c':>8} {'McN p':>6} {'changes % [CI]':>20} {'opt KL':>7} {'top-k KL':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        mp = "-" if r.get("mcnemar_p") is None else f"{r['mcnemar_p']:.2f}"
        lines.append(
            f"{r['candidate'] + ('*' if r.get('partial') else ''):22} {r['n_items']:3d} {_pct(r['acc_candidate']):>5} "
            f"{_pct(r['delta_acc'], True) + ' ' + _ci(r['delta_acc_ci'], True):>20} "
            f"{_pct(r['flip_rate']) + ' ' + _ci(r['flip_rate_ci']):>20} "
            f"{str(r['correct_to_wrong']) + '/' + str(r['wrong_to_correct']):>8} {mp:>6} "
            f"{_pct(r['answer_change_rate']) + ' ' + _ci(r['answer_change_rate_ci']):>20} "
            f"{_kl(r['option_kl_mean']):>7} {_kl(r['topk_kl_mean']):>8}"
        )
    return lines


def correlation_lines(corr: dict[str, Any], what: str = "") -> list[str]:
    lines = [
        f"Across the {corr['n_candidates']} candidates{what} (noise floor excluded); paper: "
        f"Spearman(flips, KL) = {PAPER_SPEARMAN} (MMLU 5-shot, model/scheme pairs)"
    ]
    for key, label in (
        ("flips~option_kl", "flips    vs option KL"),
        ("changes~option_kl", "changes  vs option KL"),
        ("abs_delta_acc~option_kl", "|Δacc|   vs option KL"),
        ("flips~topk_kl", "flips    vs top-k KL"),
        ("changes~topk_kl", "changes  vs top-k KL"),
        ("abs_delta_acc~topk_kl", "|Δacc|   vs top-k KL"),
        ("flips~abs_delta_acc", "flips    vs |Δacc|"),
    ):
        c = corr.get(key)
        if not c or c["spearman_r"] is None:
            continue
        lines.append(
            f"  Spearman {label}: {c['spearman_r']:+.3f} (p {c['spearman_p']:.4f}, {c['p_method']}, n {c['n']})"
        )
    if "with_partial" in corr:
        lines += correlation_lines(corr["with_partial"], " including partial rungs")
    return lines


def plot(rows: list[dict[str, Any]], corr: dict[str, Any], path: Path, title_extra: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5.2), dpi=130)
    drawn = sorted((r for r in rows if r.get("option_kl_mean") is not None), key=lambda r: r["option_kl_mean"])
    for i, r in enumerate(drawn):
        floor = r["candidate"] == NOISE_FLOOR
        x, y = r["option_kl_mean"], 100 * r["flip_rate"]
        lo, hi = r["flip_rate_ci"]
        ax.errorbar(
            [x],
            [y],
            yerr=[[y - 100 * lo], [100 * hi - y]],
            fmt="s" if floor else "o",
            color="grey" if floor else "tab:blue",
            ecolor="lightgrey",
            capsize=2,
            ms=6,
            mfc="white" if r.get("partial") else None,
        )
        label = r["candidate"].replace("-simulated", " (sim.)")
        label += f" ({r['n_items']} items)" if r.get("partial") else ""
        # right of the point, vertically centred; a label that would run into the next point goes left
        nxt = drawn[i + 1] if i + 1 < len(drawn) else None
        crowded = nxt is not None and nxt["option_kl_mean"] < 2 * max(x, 1e-3) and abs(100 * nxt["flip_rate"] - y) < 3
        ax.annotate(
            label,
            (x, y),
            textcoords="offset points",
            xytext=(-6, 0) if crowded else (6, 0),
            ha="right" if crowded else "left",
            va="center",
            fontsize=8,
        )
    sp = corr.get("flips~option_kl", {})
    txt = (
        ""
        if not sp or sp.get("spearman_r") is None
        else (
            f"Spearman(flips, option KL) = {sp['spearman_r']:.3f} (p {sp['spearman_p']:.4f}, "
            f"n {sp['n']}); paper: {PAPER_SPEARMAN}"
        )
    )
    ax.set_xscale("symlog", linthresh=1e-3)
    ax.set_xlabel("mean option KL(baseline ‖ candidate), nats (symlog)")
    ax.set_ylabel("flips: items whose correctness changed, % (95% Wilson CI)")
    ax.set_title("SmolLM2-135M-Instruct ladder, served by vLLM (CPU), MMLU 5-shot" + title_extra, fontsize=9)
    ax.text(0.02, 0.97, txt, transform=ax.transAxes, fontsize=8, va="top")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def report(result: dict[str, Any], plot_path: Path) -> None:
    rows = result["rows"]
    print("\n".join(table_lines(rows)))
    print()
    print("\n".join(correlation_lines(result["correlations"])))
    bc = result.get("baseline_consistency", {})
    if bc.get("passes", 0) >= 2:
        n_items = rows[0]["n_items"]
        print(
            f"Baseline server, each later pass vs its first ({bc['passes'] - 1} passes; warm vs cold): up to "
            f"{bc['max_items_moved']}/{n_items} items with moved logprobs (max |Δ| "
            f"{bc['max_abs_option_logprob_diff']:.3f} nats), up to {bc['max_answer_changes']} answer changes "
            f"and {bc['max_flips']} flips, option KL mean {bc['mean_option_kl_mean']:.5f} "
            f"(max {bc['max_option_kl_mean']:.5f})"
        )
        for p in bc["per_pass"]:
            print(
                f"  pass of {p['pass']:20} moved {p['items_moved']:3d}  changes {p['answer_changes']:2d}  "
                f"flips {p['flips']:2d} ({p['correct_to_wrong']}/{p['wrong_to_correct']})  "
                f"KL {p['option_kl_mean']:.5f}"
            )
    if any(r.get("partial") for r in rows):
        print("* partial: an interrupted rung, scored on fewer items (left out of the first correlation block)")
    n = rows[0]["n_items"] if rows else 0
    print(
        f"Baseline accuracy {_pct(rows[0]['acc_baseline']) if rows else '-'}% on {n} items "
        "(chance with 4 options: 25%): flips here are mostly changes among guesses."
    )
    plot(rows, result["correlations"], plot_path, f", {n} items")
    print(f"plot: {plot_path}")


# --- serving the ladder --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    plot_path = args.plot or args.out / "ladder-flips-vs-kl.png"
    if args.from_json:
        result = json.loads(args.from_json.read_text(encoding="utf-8"))
        result["correlations"] = correlations(result["rows"])
        result["baseline_consistency"] = baseline_consistency(result["rows"])
        report(result, plot_path)
        return 0

    from servecmp.serving.cpu import describe_cpu, parse_scheme, read_cpu_flags, scheme_support
    from servecmp.serving.modelpair import embedded_servers, ensure_embedded_pair
    from servecmp.serving.servers import ServerPair

    flags = read_cpu_flags()
    print(f"CPU: {describe_cpu(flags)}", file=sys.stderr)
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
    runs_dir = args.out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    rungs: list[tuple[str, str, bool, Any]] = []
    first = embedded_servers(
        pairs[0], baseline_port=args.baseline_port, candidate_port=args.candidate_port, flags=flags
    )
    if args.dtype:
        first = {role: cfg.model_copy(update={"dtype": args.dtype}) for role, cfg in first.items()}
    if not args.no_noise_floor:
        copy = first["baseline"].model_copy(
            update={
                "port": args.candidate_port,
                "cpu_cores": first["candidate"].cpu_cores,
                "served_name": f"{first['baseline'].served_name}-copy",
            }
        )
        rungs.append((NOISE_FLOOR, "the baseline checkpoint served again, freshly started (same dtype)", False, copy))
    for scheme, pair in zip(schemes, pairs, strict=True):
        cfg = embedded_servers(pair, baseline_port=args.baseline_port, candidate_port=args.candidate_port, flags=flags)[
            "candidate"
        ]
        if args.dtype:
            cfg = cfg.model_copy(update={"dtype": args.dtype})
        rungs.append((scheme.label, scheme.describe(), scheme.simulated, cfg))

    stamp = time.strftime("%Y%m%d-%H%M%S")
    result: dict[str, Any] = {
        "task": args.task,
        "limit": args.limit,
        "cpu": describe_cpu(flags),
        "serving_dtype": first["baseline"].dtype,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rows": [],
        "failed": [],
    }
    out_json = args.out / "ladder.json"

    def save() -> None:
        result["correlations"] = correlations(result["rows"])
        result["baseline_consistency"] = baseline_consistency(result["rows"])
        out_json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")

    t_all = time.monotonic()
    t0 = time.monotonic()
    with ServerPair(
        {"baseline": first["baseline"]}, run_dir=runs_dir / f"servers-{stamp}-baseline", show_progress=False
    ) as base:
        result["baseline_start_s"] = round(time.monotonic() - t0, 1)
        print(f"baseline ready after {result['baseline_start_s']} s", file=sys.stderr)
        baseline_url = base.handles["baseline"].url
        for name, description, simulated, cfg in rungs:
            print(f"{name}: starting its server", file=sys.stderr)
            t0 = time.monotonic()
            try:
                with ServerPair(
                    {"candidate": cfg}, run_dir=runs_dir / f"servers-{stamp}-{name}", show_progress=False
                ) as cand:
                    t1 = time.monotonic()
                    summary = run_mcq(args, baseline_url, cand.handles["candidate"].url, runs_dir)
                    t2 = time.monotonic()
            except Exception as exc:  # one rung failing must not lose the others
                print(f"{name}: FAILED: {exc}", file=sys.stderr)
                result["failed"].append({"candidate": name, "error": str(exc)[-800:]})
                save()
                continue
            row = row_of(
                name,
                description,
                simulated,
                summary,
                {"server_start": t1 - t0, "mcq": t2 - t1, "total": time.monotonic() - t0},
            )
            result["rows"].append(row)
            print(
                json.dumps(
                    {
                        k: row[k]
                        for k in (
                            "candidate",
                            "delta_acc",
                            "flip_rate",
                            "answer_change_rate",
                            "option_kl_mean",
                            "topk_kl_mean",
                            "seconds",
                        )
                    }
                ),
                file=sys.stderr,
            )
            save()
    result["total_s"] = round(time.monotonic() - t_all, 1)
    save()
    report(result, plot_path)
    print(f"rows: {out_json}")
    return 0 if not result["failed"] else 1


if __name__ == "__main__":
    sys.exit(main())
