"""Render an MCQ summary (`servecmp.mcq.summary.McqSummary`) as terminal tables.

Reads the summary only: a report printed now and one printed from `servecmp report RUN_DIR` later
are the same because both come from the same model.
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from servecmp.mcq.summary import Distribution, Estimate, McqSummary, Proportion

SIGNIFICANCE = 0.05
#: Subjects listed by default (most flips first); `--show N` changes it.
SUBJECT_ROWS = 15


def pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}%"


def num(x: float | None, digits: int = 4) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def pval(p: float | None) -> str:
    if p is None:
        return "–"
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def est_pct(e: Estimate | None, signed: bool = False) -> str:
    if e is None or e.point is None:
        return "–"
    sign = "+" if signed and e.point > 0 else ""
    return f"{sign}{pct(e.point)} [{pct(e.low)}, {pct(e.high)}]"


def prop(p: Proportion | None) -> str:
    if p is None or p.rate is None:
        return "–"
    return f"{pct(p.rate)} [{pct(p.low)}, {pct(p.high)}]  ({p.count}/{p.n})"


def _verdict(s: McqSummary) -> str:
    acc = s.accuracy.diff
    fl = s.flips
    rate = fl.rate.rate or 0.0
    p = fl.mcnemar_p
    acc_txt = f"accuracy moved {pct(acc.point)} (95% CI {pct(acc.low)} to {pct(acc.high)})"
    if p is not None and p < SIGNIFICANCE:
        acc_txt += f", a significant change (McNemar p={pval(p)})"
    else:
        acc_txt += f", not a significant change (McNemar p={pval(p)})"
    return (f"{acc_txt}; yet {pct(rate)} of answers flipped between correct and wrong "
            f"({fl.correct_to_wrong} correct→wrong, {fl.wrong_to_correct} wrong→correct) and "
            f"{pct(s.answer_changes.rate)} of chosen options changed.")


def _kl_row(table: Table, name: str, d: Distribution | None, extra: str = "") -> None:
    if d is None or not d.n:
        table.add_row(name, "0", "–", "–", "–", "–", "–", extra)
        return
    ci = d.mean_ci
    table.add_row(name, str(d.n), f"{num(d.mean)} [{num(ci.low)}, {num(ci.high)}]",
                  num(d.median), num(d.p90), num(d.p99), num(d.max), extra)


def render_mcq_report(s: McqSummary, console: Console, *, show: int | None = None) -> None:
    """The report; `show` caps the subject rows (default `SUBJECT_ROWS`)."""
    run = s.run
    title = f"servecmp mcq — task {run.task}"
    if run.source:
        title += f" ({run.source})"
    console.rule(escape(title))
    for role, ep in run.endpoints.items():
        console.print(f"{role:>9}: {ep.model}  {ep.url}", highlight=False)
    line = f"items compared: {s.n_items}"
    if run.n_items_planned and not run.complete:
        line += f" of {run.n_items_planned} planned (run not finished)"
    pairing = s.pairing
    if pairing.unpaired_baseline or pairing.unpaired_candidate:
        line += f"; unpaired: {pairing.unpaired_baseline} baseline, {pairing.unpaired_candidate} candidate"
    if run.requests_per_item:
        line += "; requests/item: " + ", ".join(f"{k} {v:.2f}" for k, v in run.requests_per_item.items())
    console.print(line, highlight=False)
    for role, err in run.item_errors.items():
        console.print(f"[yellow]{role} refused {err.count} item(s), left out of every metric; "
                      f"e.g. {escape(err.example[:200])}[/]", highlight=False)

    t = Table(title="Accuracy and flips (95% intervals)", title_justify="left")
    t.add_column("measure")
    t.add_column("value", justify="right")
    acc = s.accuracy
    t.add_row("baseline accuracy", est_pct(acc.baseline))
    t.add_row("candidate accuracy", est_pct(acc.candidate))
    t.add_row("difference (cand − base)", est_pct(acc.diff, signed=True))
    fl = s.flips
    t.add_row("flips (correctness changed)", prop(fl.rate))
    t.add_row("  correct → wrong", str(fl.correct_to_wrong))
    t.add_row("  wrong → correct", str(fl.wrong_to_correct))
    t.add_row("  McNemar exact p (asymmetry)", pval(fl.mcnemar_p))
    t.add_row("answer changes (any option)", prop(s.answer_changes))
    if s.acc_norm is not None:
        t.add_row("acc_norm difference", est_pct(s.acc_norm.accuracy.diff, signed=True))
        t.add_row("acc_norm flips", prop(s.acc_norm.flips.rate))
    console.print(t)

    k = Table(title="KL(baseline ‖ candidate), nats", title_justify="left")
    for col in ("distribution", "n", "mean [95% CI]", "median", "p90", "p99", "max", "note"):
        k.add_column(col, justify="left" if col in ("distribution", "note") else "right")
    _kl_row(k, "answer options", s.option_kl)
    tk = s.topk_kl
    if tk is not None:
        um = tk.unresolved_baseline_mass
        _kl_row(k, "next token (top-k)", tk.kl_hat,
                f"lower bound; unresolved mass mean {num(um.mean)}, max {num(um.max)}")
    console.print(k)

    tm = s.top_margin
    bc = tm.by_baseline_correctness
    m = Table(title="Top margin (baseline p1 − p2 over the options)", title_justify="left")
    m.add_column("baseline answer")
    m.add_column("n", justify="right")
    m.add_column("mean top margin [95% CI]", justify="right")
    for label, e in (("correct", bc.when_correct), ("wrong", bc.when_wrong)):
        m.add_row(label, str(e.n), f"{num(e.point, 3)} [{num(e.low, 3)}, {num(e.high, 3)}]")
    m.caption = f"Mann-Whitney p (correct vs wrong) = {pval(bc.mann_whitney_p)}"
    console.print(m)

    b = Table(title="Answer changes by baseline top margin", title_justify="left")
    b.add_column("top margin")
    b.add_column("n", justify="right")
    b.add_column("changed", justify="right")
    b.add_column("change rate [95% CI]", justify="right")
    for row in tm.change_by_bucket:
        ch = row.changes
        b.add_row(f"{row.low_edge:.1f}–{row.high_edge:.1f}", str(ch.n), str(ch.count),
                  "–" if not ch.n else f"{pct(ch.rate)} [{pct(ch.low)}, {pct(ch.high)}]")
    corr = tm.margin_change_correlation
    b.caption = (f"Spearman(margin, changed) r = {num(corr.spearman_r, 3)}, "
                 f"p = {pval(corr.spearman_p)}, n = {corr.n}")
    console.print(b)

    subject_rows = SUBJECT_ROWS if show is None else show
    for name, limit in (("category", None), ("subject", subject_rows)):
        rows = s.groups.get(name)
        if not rows or (len(rows) == 1 and rows[0].group in ("", "None", "(none)")) or limit == 0:
            continue
        shown = rows[:limit] if limit is not None else rows
        g = Table(title=f"By {name}, most flips first" + (f" (top {len(shown)} of {len(rows)})"
                                                          if len(shown) < len(rows) else ""), title_justify="left")
        for col in (name, "n", "acc base", "acc cand", "Δacc", "flips", "c→w", "w→c", "changes", "KL opt"):
            g.add_column(col, justify="left" if col == name else "right")
        for r in shown:
            g.add_row(escape(r.group), str(r.n), pct(r.acc_baseline), pct(r.acc_candidate),
                      pct(r.delta_acc), f"{r.flips} ({pct(r.flip_rate)})", str(r.correct_to_wrong),
                      str(r.wrong_to_correct), pct(r.answer_change_rate), num(r.mean_option_kl))
        console.print(g)

    console.print("[bold]Reading:[/] " + escape(_verdict(s)), highlight=False)
