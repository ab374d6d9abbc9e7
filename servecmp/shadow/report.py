"""`servecmp shadow report`: what the shadow database says about the candidate.

For each measure: the candidate's rate or mean with a 95% interval, the same for the secondary (the
baseline's second replica: the noise floor, how much the baseline disagrees with itself), and the
candidate's excess over the floor with a paired test on the requests both answered. Rates use
Wilson intervals and the exact McNemar test; means use bootstrap intervals and the Wilcoxon
signed-rank test (paired tests, because both endpoints answered the same requests). A difference is
called significant only when its test gives p < 0.05; each line is tested on its own (no correction
for the number of lines). Without a secondary there is no floor and no test.

`summarise` is pure (rows in, a JSON-ready dict out); `load` reads the database; `render` prints.
"""

from __future__ import annotations

import math
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from servecmp.errors import UserError
from servecmp.metrics.stats import (
    bootstrap_mean_ci,
    mcnemar_exact,
    paired_bootstrap_diff_ci,
    wilcoxon_paired,
    wilson_ci,
)
from servecmp.shadow.store import COUNTER_NAMES, open_readonly

ALPHA = 0.05
Row = dict[str, Any]
Indicator = Callable[[Row], bool | None]


def _error(r: Row) -> bool | None:
    return None if r["primary_error"] is not None else r["other_error"] is not None


def _mismatch(r: Row) -> bool | None:
    return None if r["exact_match"] is None else not r["exact_match"]


def _status_differs(r: Row) -> bool | None:
    return r["other_status"] != r["primary_status"]


#: (key, label, indicator): share of rows where the indicator is true, among rows where it is defined.
RATES: list[tuple[str, str, Indicator]] = [
    ("error", "Errors (when the primary answered)", _error),
    ("status_differs", "Status differs from the primary's", _status_differs),
    ("mismatch", "Answer differs (exact text)", _mismatch),
]

#: (column, label, paired test?): per-request values averaged over the rows that have them.
MEANS: list[tuple[str, str, bool]] = [
    ("edit_distance", "Edit distance (tokens, normalised)", True),
    ("first_diff", "First differing token (differing answers)", False),
    ("length_ratio", "Length ratio (tokens, other/primary)", True),
    ("latency_ratio", "Latency ratio (other/primary)", True),
    ("kl_mean", "KL per token, teacher-forced (nats, top-k bound)", True),
    ("top1_agree", "Top-1 agreement, teacher-forced", True),
    ("dp_mean", "Δp of the chosen token, teacher-forced", True),
]

#: (column, label): the largest value seen.
MAXES: list[tuple[str, str]] = [
    ("kl_max", "Largest per-token KL"),
    ("dp_max_abs", "Largest |Δp| of a chosen token"),
]


def _clean(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _rate(rows: Sequence[Row], ind: Indicator) -> dict[str, Any]:
    vals = [v for v in (ind(r) for r in rows) if v is not None]
    return asdict(wilson_ci(sum(vals), len(vals)))


def _mean(rows: Sequence[Row], col: str, n_boot: int) -> dict[str, Any]:
    vals = [float(r[col]) for r in rows if r[col] is not None and math.isfinite(float(r[col]))]
    est = bootstrap_mean_ci(vals, n_boot=n_boot)
    return {"mean": est.point, "low": est.low, "high": est.high, "n": est.n}


def _paired(
    cand: dict[str, Row], sec: dict[str, Row], value: Callable[[Row], float | bool | None]
) -> tuple[list[float], list[float]]:
    a: list[float] = []
    b: list[float] = []
    for rid, c in cand.items():
        s = sec.get(rid)
        if s is None:
            continue
        vc, vs = value(c), value(s)
        if vc is None or vs is None:
            continue
        a.append(float(vs))
        b.append(float(vc))
    return a, b


def _paired_rate(cand: dict[str, Row], sec: dict[str, Row], ind: Indicator, n_boot: int) -> dict[str, Any]:
    floor, candidate = _paired(cand, sec, ind)
    b = sum(1 for f, c in zip(floor, candidate, strict=True) if c and not f)  # only the candidate fails
    c_ = sum(1 for f, c in zip(floor, candidate, strict=True) if f and not c)  # only the secondary fails
    diff = paired_bootstrap_diff_ci(floor, candidate, n_boot=n_boot)
    p = mcnemar_exact(b, c_) if floor else None
    return {
        "n": len(floor), "diff": diff.point, "low": diff.low, "high": diff.high,
        "only_candidate": b, "only_secondary": c_,
        "p_value": p, "test": "exact McNemar", "significant": p is not None and p < ALPHA,
    }


def _paired_mean(cand: dict[str, Row], sec: dict[str, Row], col: str, n_boot: int) -> dict[str, Any]:
    floor, candidate = _paired(cand, sec, lambda r: _clean(r[col]))
    diff = paired_bootstrap_diff_ci(floor, candidate, n_boot=n_boot)
    test = wilcoxon_paired(floor, candidate) if floor else None
    p = test.pvalue if test is not None else None
    return {
        "n": len(floor), "diff": diff.point, "low": diff.low, "high": diff.high,
        "p_value": p, "test": "Wilcoxon signed-rank", "significant": p is not None and p < ALPHA,
    }


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _hour(ts: float) -> str:
    return datetime.fromtimestamp(ts - ts % 3600, UTC).strftime("%Y-%m-%d %H:00Z")


def _avg(vals: Sequence[float | None]) -> float | None:
    xs = [float(v) for v in vals if v is not None]
    return sum(xs) / len(xs) if xs else None


def _share(rows: Sequence[Row], ind: Indicator) -> float | None:
    vals = [v for v in (ind(r) for r in rows) if v is not None]
    return sum(vals) / len(vals) if vals else None


def _snippet(r: Row, width: int = 60) -> str:
    if r.get("prompt"):
        text = " ".join(str(r["prompt"]).split())
        return text if len(text) <= width else text[: width - 1] + "…"
    return f"sha256:{str(r['prompt_sha256'])[:12]}"


def summarise(
    rows: Sequence[Row],
    *,
    counters: dict[str, int] | None = None,
    runs: Sequence[Row] = (),
    worst_n: int = 10,
    n_boot: int = 2000,
) -> dict[str, Any]:
    """The report as plain data. ``rows`` are `PairRecord` columns (one dict per row); means and
    paired differences get percentile bootstrap intervals from ``n_boot`` resamples."""
    by_target: dict[str, dict[str, Row]] = defaultdict(dict)
    for r in rows:
        by_target[r["target"]][r["request_id"]] = r
    cand, sec = by_target.get("candidate", {}), by_target.get("secondary", {})
    has_floor = bool(sec)
    cand_rows, sec_rows = list(cand.values()), list(sec.values())

    measures: list[dict[str, Any]] = []
    for key, label, ind in RATES:
        measures.append({
            "key": key, "label": label, "kind": "rate",
            "candidate": _rate(cand_rows, ind),
            "secondary": _rate(sec_rows, ind) if has_floor else None,
            "excess": _paired_rate(cand, sec, ind, n_boot) if has_floor else None,
        })
    for col, label, tested in MEANS:
        measures.append({
            "key": col, "label": label, "kind": "mean",
            "candidate": _mean(cand_rows, col, n_boot),
            "secondary": _mean(sec_rows, col, n_boot) if has_floor else None,
            "excess": _paired_mean(cand, sec, col, n_boot) if has_floor and tested else None,
        })
    for col, label in MAXES:
        def biggest(rs: Sequence[Row], c: str = col) -> dict[str, Any]:
            vals = [float(r[c]) for r in rs if r[c] is not None]
            return {"max": max(vals) if vals else None, "n": len(vals)}

        measures.append({
            "key": col, "label": label, "kind": "max",
            "candidate": biggest(cand_rows), "secondary": biggest(sec_rows) if has_floor else None,
            "excess": None,
        })

    ranked = sorted(
        (r for r in cand_rows if r["edit_distance"] is not None),
        key=lambda r: (-float(r["edit_distance"]), -float(r["kl_mean"] if r["kl_mean"] is not None else -1)),
    )
    worst = [
        {
            "time": _iso(r["ts"]),
            "request_id": r["request_id"], "endpoint": r["endpoint"], "stream": bool(r["stream"]),
            "first_diff": r["first_diff"], "edit_distance": r["edit_distance"],
            "length_ratio": r["length_ratio"], "kl_mean": r["kl_mean"], "top1_agree": r["top1_agree"],
            "prompt": _snippet(r),
        }
        for r in ranked[:worst_n]
    ]

    hours: dict[str, dict[str, list[Row]]] = defaultdict(lambda: {"candidate": [], "secondary": []})
    for r in rows:
        if r["target"] in ("candidate", "secondary"):
            hours[_hour(r["ts"])][r["target"]].append(r)
    hourly = [
        {
            "hour": h,
            "requests": len(g["candidate"]),
            "candidate_error_rate": _share(g["candidate"], _error),
            "candidate_mismatch_rate": _share(g["candidate"], _mismatch),
            "secondary_mismatch_rate": _share(g["secondary"], _mismatch) if has_floor else None,
            "candidate_edit_distance": _avg([r["edit_distance"] for r in g["candidate"]]),
            "candidate_kl_mean": _avg([r["kl_mean"] for r in g["candidate"]]),
        }
        for h, g in sorted(hours.items())
    ]

    tf_errors: dict[str, int] = defaultdict(int)
    other_errors: dict[str, int] = defaultdict(int)
    for r in cand_rows:
        if r["tf_error"]:
            tf_errors[r["tf_error"]] += 1
        if r["other_error"]:
            other_errors[r["other_error"]] += 1
    times = [float(r["ts"]) for r in rows]
    return {
        "runs": list(runs),
        "counters": dict(counters or {}),
        "compared_requests": len(cand),
        "has_secondary": has_floor,
        "first": _iso(min(times)) if times else None,
        "last": _iso(max(times)) if times else None,
        "candidate_errors": dict(sorted(other_errors.items())),
        "teacher_forced_errors": dict(sorted(tf_errors.items())),
        "measures": measures,
        "worst": worst,
        "hourly": hourly,
    }


def load(path: Path) -> tuple[list[Row], dict[str, int], list[Row]]:
    """(pair rows, counters summed over runs, runs) from a shadow database."""
    conn = open_readonly(path)
    try:
        rows = [dict(r) for r in conn.execute("SELECT * FROM pairs ORDER BY ts, id")]
        counters = dict.fromkeys(COUNTER_NAMES, 0)
        for name, value in conn.execute("SELECT name, SUM(value) FROM counters GROUP BY name"):
            counters[name] = int(value)
        runs = [
            dict(r)
            for r in conn.execute(
                "SELECT run_id, started_at, mode, primary_url, candidate_url, secondary_url, hash_only, "
                "sample_rate FROM runs ORDER BY started_at"
            )
        ]
    except sqlite3.DatabaseError as exc:
        raise UserError(f"{path}: cannot read the shadow database ({exc})") from exc
    finally:
        conn.close()
    return rows, counters, runs


# ---- rendering ---------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _cell(kind: str, d: dict[str, Any] | None) -> str:
    if d is None:
        return "—"
    if kind == "rate":
        if d["n"] == 0:
            return "— (n=0)"
        return f"{_pct(d['rate'])} [{_pct(d['low'])}, {_pct(d['high'])}] (n={d['n']})"
    if kind == "mean":
        if d["n"] == 0:
            return "— (n=0)"
        return f"{_num(d['mean'])} [{_num(d['low'])}, {_num(d['high'])}] (n={d['n']})"
    return f"{_num(d['max'])} (n={d['n']})"


def _excess(kind: str, e: dict[str, Any] | None) -> tuple[str, str]:
    if e is None:
        return "—", "—"
    if e["n"] == 0:
        return "— (no pairs)", "—"
    fmt = _pct if kind == "rate" else _num
    diff = f"{fmt(e['diff'])} [{fmt(e['low'])}, {fmt(e['high'])}]"
    p = e["p_value"]
    test = e["test"].split()[-1]  # "McNemar" / "signed-rank": the full name is in --json
    if p is None:
        verdict = "no differences to test"
    elif e["significant"]:
        verdict = f"[bold red]differs[/] (p={p:.2g}, {test})"
    else:
        verdict = f"not significant (p={p:.2g}, {test})"
    return diff, verdict


def _counts(d: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in d.items())


def render(summary: dict[str, Any], console: Console, db: Path | None = None) -> None:
    c = summary["counters"]
    head = Table(title=f"Shadow traffic{f' — {db}' if db else ''}", show_header=False)
    head.add_column("what")
    head.add_column("value")
    head.add_row("runs", str(len(summary["runs"])))
    head.add_row("span", f"{summary['first'] or '—'} → {summary['last'] or '—'}")
    head.add_row("requests compared", str(summary["compared_requests"]))
    head.add_row("noise floor", "secondary replica" if summary["has_secondary"] else "none (no --secondary)")
    for name in COUNTER_NAMES:
        if c.get(name):
            head.add_row(name.replace("_", " "), str(c[name]))
    if summary["candidate_errors"]:
        head.add_row("candidate errors", _counts(summary["candidate_errors"]))
    if summary["teacher_forced_errors"]:
        head.add_row("teacher-forced skipped", _counts(summary["teacher_forced_errors"]))
    console.print(head)

    t = Table(title="Candidate vs the primary, above the secondary's noise floor (95% intervals)")
    for col in ("measure", "candidate", "noise floor (secondary)", "candidate − floor", "paired test, 5%"):
        t.add_column(col)
    for m in summary["measures"]:
        diff, verdict = _excess(m["kind"], m["excess"])
        kind = m["kind"]
        t.add_row(m["label"], _cell(kind, m["candidate"]), _cell(kind, m["secondary"]), diff, verdict)
    console.print(t)

    if summary["worst"]:
        w = Table(title="Worst-diverging requests (candidate, by edit distance then KL)")
        for col in ("time", "request", "endpoint", "first diff", "edit dist.", "len. ratio", "KL", "top-1",
                    "prompt"):
            w.add_column(col)
        for r in summary["worst"]:
            w.add_row(
                r["time"], r["request_id"][:8], r["endpoint"] + (" (stream)" if r["stream"] else ""),
                str(r["first_diff"]) if r["first_diff"] is not None else "—", _num(r["edit_distance"]),
                _num(r["length_ratio"], 2), _num(r["kl_mean"], 4), _num(r["top1_agree"], 2), r["prompt"],
            )
        console.print(w)

    if summary["hourly"]:
        h = Table(title="Per hour (UTC)")
        for col in ("hour", "requests", "cand. errors", "cand. differs", "floor differs", "cand. edit dist.",
                    "cand. KL"):
            h.add_column(col)
        for r in summary["hourly"]:
            h.add_row(r["hour"], str(r["requests"]), _pct(r["candidate_error_rate"]),
                      _pct(r["candidate_mismatch_rate"]), _pct(r["secondary_mismatch_rate"]),
                      _num(r["candidate_edit_distance"]), _num(r["candidate_kl_mean"], 4))
        console.print(h)
