"""Render an MCQ summary (the dict from `servecmp.metrics.summarize_mcq`) as terminal tables.

Reads the summary only: a report printed now and one printed from `servecmp report RUN_DIR` later
are the same because both come from the same dict.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

SIGNIFICANCE = 0.05
SUBJECT_ROWS = 15


def pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}%"


def num(x: float | None, digits: int = 4) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def pval(p: float | None) -> str:
    if p is None:
        return "–"
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def est_pct(e: dict[str, Any] | None, signed: bool = False) -> str:
    if not e or e.get("point") is None:
        return "–"
    sign = "+" if signed and e["point"] > 0 else ""
    return f"{sign}{pct(e['point'])} [{pct(e['low'])}, {pct(e['high'])}]"


def prop(p: dict[str, Any] | None) -> str:
    if not p or p.get("rate") is None:
        return "–"
    return f"{pct(p['rate'])} [{pct(p['low'])}, {pct(p['high'])}]  ({p['count']}/{p['n']})"


def _verdict(s: dict[str, Any]) -> str:
    acc = s["accuracy"]["diff"]
    fl = s["flips"]
    rate = fl["rate"]["rate"] or 0.0
    p = fl["mcnemar_p"]
    acc_txt = f"accuracy moved {pct(acc['point'])} (95% CI {pct(acc['low'])} to {pct(acc['high'])})"
    if p is not None and p < SIGNIFICANCE:
        acc_txt += f", a significant change (McNemar p={pval(p)})"
    else:
        acc_txt += f", not a significant change (McNemar p={pval(p)})"
    return (f"{acc_txt}; yet {pct(rate)} of answers flipped between correct and wrong "
            f"({fl['correct_to_wrong']} correct→wrong, {fl['wrong_to_correct']} wrong→correct) and "
            f"{pct(s['answer_changes']['rate'])} of chosen options changed.")


def _kl_row(table: Table, name: str, d: dict[str, Any] | None, extra: str = "") -> None:
    if not d or not d.get("n"):
        table.add_row(name, "0", "–", "–", "–", "–", "–", extra)
        return
    ci = d.get("mean_ci") or {}
    table.add_row(name, str(d["n"]), f"{num(d['mean'])} [{num(ci.get('low'))}, {num(ci.get('high'))}]",
                  num(d["median"]), num(d["p90"]), num(d["p99"]), num(d["max"]), extra)


def render_mcq_report(s: dict[str, Any], console: Console) -> None:
    run = s.get("run", {})
    eps = run.get("endpoints", {})
    title = f"servecmp mcq — task {run.get('task', '?')}"
    if run.get("source"):
        title += f" ({run['source']})"
    console.rule(title)
    for role in ("baseline", "candidate"):
        if role in eps:
            console.print(f"{role:>9}: {eps[role].get('model', '')}  {eps[role].get('url', '')}", highlight=False)
    rpi = run.get("requests_per_item") or {}
    pairing = s.get("pairing") or {}
    line = f"items compared: {s['n_items']}"
    if run.get("n_items_planned") and not run.get("complete", True):
        line += f" of {run['n_items_planned']} planned (run not finished)"
    if pairing.get("unpaired_baseline") or pairing.get("unpaired_candidate"):
        line += (f"; unpaired: {pairing.get('unpaired_baseline', 0)} baseline, "
                 f"{pairing.get('unpaired_candidate', 0)} candidate")
    if rpi:
        line += "; requests/item: " + ", ".join(f"{k} {v:.2f}" for k, v in rpi.items())
    console.print(line, highlight=False)
    for role, err in (run.get("item_errors") or {}).items():
        console.print(f"[yellow]{role} refused {err['count']} item(s), left out of every metric; "
                      f"e.g. {escape(err['example'][:200])}[/]", highlight=False)

    t = Table(title="Accuracy and flips (95% intervals)", title_justify="left")
    t.add_column("measure")
    t.add_column("value", justify="right")
    acc = s["accuracy"]
    t.add_row("baseline accuracy", est_pct(acc["baseline"]))
    t.add_row("candidate accuracy", est_pct(acc["candidate"]))
    t.add_row("difference (cand − base)", est_pct(acc["diff"], signed=True))
    fl = s["flips"]
    t.add_row("flips (correctness changed)", prop(fl["rate"]))
    t.add_row("  correct → wrong", str(fl["correct_to_wrong"]))
    t.add_row("  wrong → correct", str(fl["wrong_to_correct"]))
    t.add_row("  McNemar exact p (asymmetry)", pval(fl["mcnemar_p"]))
    t.add_row("answer changes (any option)", prop(s["answer_changes"]))
    if s.get("acc_norm"):
        an = s["acc_norm"]
        t.add_row("acc_norm difference", est_pct(an["accuracy"]["diff"], signed=True))
        t.add_row("acc_norm flips", prop(an["flips"]["rate"]))
    console.print(t)

    k = Table(title="KL(baseline ‖ candidate), nats", title_justify="left")
    for col in ("distribution", "n", "mean [95% CI]", "median", "p90", "p99", "max", "note"):
        k.add_column(col, justify="left" if col in ("distribution", "note") else "right")
    _kl_row(k, "answer options", s.get("option_kl"))
    tk = s.get("topk_kl")
    if tk:
        um = tk.get("unresolved_baseline_mass") or {}
        _kl_row(k, "next token (top-k)", tk.get("kl_hat"),
                f"lower bound; unresolved mass mean {num(um.get('mean'))}, max {num(um.get('max'))}")
    console.print(k)

    tm = s["top_margin"]
    bc = tm["by_baseline_correctness"]
    m = Table(title="Top margin (baseline p1 − p2 over the options)", title_justify="left")
    m.add_column("baseline answer")
    m.add_column("n", justify="right")
    m.add_column("mean top margin [95% CI]", justify="right")
    for label, key in (("correct", "when_correct"), ("wrong", "when_wrong")):
        e = bc.get(key) or {}
        m.add_row(label, str(e.get("n", 0)),
                  f"{num(e.get('point'), 3)} [{num(e.get('low'), 3)}, {num(e.get('high'), 3)}]")
    m.caption = f"Mann-Whitney p (correct vs wrong) = {pval(bc.get('mann_whitney_p'))}"
    console.print(m)

    b = Table(title="Answer changes by baseline top margin", title_justify="left")
    b.add_column("top margin")
    b.add_column("n", justify="right")
    b.add_column("changed", justify="right")
    b.add_column("change rate [95% CI]", justify="right")
    for row in tm["change_by_bucket"]:
        ch = row["changes"]
        b.add_row(f"{row['low_edge']:.1f}–{row['high_edge']:.1f}", str(ch["n"]), str(ch["count"]),
                  "–" if not ch["n"] else f"{pct(ch['rate'])} [{pct(ch['low'])}, {pct(ch['high'])}]")
    corr = tm.get("margin_change_correlation") or {}
    b.caption = (f"Spearman(margin, changed) r = {num(corr.get('spearman_r'), 3)}, "
                 f"p = {pval(corr.get('spearman_p'))}, n = {corr.get('n', 0)}")
    console.print(b)

    groups = s.get("groups") or {}
    for name, limit in (("category", None), ("subject", SUBJECT_ROWS)):
        rows = groups.get(name)
        if not rows or (len(rows) == 1 and rows[0]["group"] in (None, "", "None")):
            continue
        g = Table(title=f"By {name}, most flips first" + (f" (top {limit} of {len(rows)})" if limit and
                                                          len(rows) > limit else ""), title_justify="left")
        for col in (name, "n", "acc base", "acc cand", "Δacc", "flips", "c→w", "w→c", "changes", "KL opt"):
            g.add_column(col, justify="left" if col == name else "right")
        for r in rows[:limit] if limit else rows:
            g.add_row(str(r["group"]), str(r["n"]), pct(r["acc_baseline"]), pct(r["acc_candidate"]),
                      pct(r["delta_acc"]), f"{r['flips']} ({pct(r['flip_rate'])})", str(r["correct_to_wrong"]),
                      str(r["wrong_to_correct"]), pct(r["answer_change_rate"]), num(r["mean_option_kl"]))
        console.print(g)

    console.print("[bold]Reading:[/] " + _verdict(s), highlight=False)
