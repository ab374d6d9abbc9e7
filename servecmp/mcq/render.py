"""Render an MCQ summary (`servecmp.mcq.summary.McqSummary`) as terminal tables.

Reads the summary only: a report printed now and one printed from `servecmp report RUN_DIR` later
are the same because both come from the same model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from servecmp.mcq.compare import McqComparison
from servecmp.mcq.summary import Distribution, Estimate, McqSummary, NextTokenReport, Proportion
from servecmp.metrics.kl_report import MeanError

if TYPE_CHECKING:
    from servecmp.gates import Verdict

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
    if any(v != ["completions"] for v in run.apis.values()):
        console.print("asked through: " + ", ".join(f"{k} {'+'.join(v)}" for k, v in run.apis.items()),
                      highlight=False)
    if run.api_mismatch:
        console.print(f"[yellow]warning: {escape(run.api_mismatch)}[/]", highlight=False)
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

    k = Table(title="Divergences, nats: KL(baseline ‖ candidate) is the headline; KL(c ‖ b) and "
                    "Jensen-Shannon beside it", title_justify="left")
    for col in ("distribution", "n", "mean [95% CI]", "median", "p90", "p99", "max", "note"):
        k.add_column(col, justify="left" if col in ("distribution", "note") else "right")
    _kl_row(k, "answer options KL(b ‖ c)", s.option_kl, "exact over the options")
    if s.option_kl_cb is not None:
        _kl_row(k, "answer options KL(c ‖ b)", s.option_kl_cb)
    if s.option_js is not None:
        _kl_row(k, "answer options JS", s.option_js)
    tk = s.topk_kl
    if tk is not None:
        um = tk.unresolved_baseline_mass
        if tk.tight is not None:
            tt = tk.tight
            _kl_row(k, "next token KL(b ‖ c)", tt.kl_bc,
                    f"top-k estimate; {pct(tt.tail_share)} of it extrapolated (tail), "
                    f"{tt.n_imputed} items with an imputed token")
            _kl_row(k, "next token KL(c ‖ b)", tt.kl_cb, "top-k estimate")
            _kl_row(k, "next token JS", tt.js, "top-k estimate")
        _kl_row(k, "next token KL(b ‖ c) bound", tk.kl_hat,
                f"guaranteed lower bound; unresolved mass mean {num(um.mean)}, max {num(um.max)}")
    console.print(k)
    if s.next_token_report is not None:
        render_llama_cpp_block(s.next_token_report, console)

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


def _pm(m: MeanError, scale: float = 1.0, digits: int = 6, unit: str = "") -> str:
    if m.value is None:
        return "–"
    err = "–" if m.error is None else f"{scale * m.error:.{digits}f}"
    return f"{scale * m.value:.{digits}f} ± {err}{unit}"


def render_llama_cpp_block(r: NextTokenReport, console: Console) -> None:
    """llama.cpp's ``perplexity --kl-divergence`` statistics with its labels, for side-by-side reading."""
    t = Table(title=f"Next token at the answer position, as llama.cpp's KL-divergence report (n = {r.n} items; "
                    "± is one standard error)", title_justify="left")
    t.add_column("llama.cpp label")
    t.add_column("value", justify="right")
    t.add_column("llama.cpp label")
    t.add_column("value", justify="right")
    from servecmp.metrics.kl_report import DP_PERCENTILES, KLD_PERCENTILES

    left = [("Mean    KLD", _pm(r.kld_mean))]
    left += [(label, num(r.kld_percentiles.get(key), 6)) for key, _, label in KLD_PERCENTILES]
    right = [("Mean    Δp", _pm(r.dp_mean, 100.0, 3, " %"))]
    right += [(label, "–" if r.dp_percentiles.get(key) is None else f"{100 * (r.dp_percentiles[key] or 0):.3f}%")
              for key, _, label in DP_PERCENTILES]
    right += [("RMS Δp", _pm(r.dp_rms, 100.0, 3, " %")),
              ("Same top p", _pm(r.same_top, 100.0, 3, " %") + f"  ({r.same_top_count}/{r.n})")]
    for i in range(max(len(left), len(right))):
        a = left[i] if i < len(left) else ("", "")
        b = right[i] if i < len(right) else ("", "")
        t.add_row(escape(a[0]), a[1], escape(b[0]), b[1])
    t.caption = (f"KLD: {r.kld_source} (nats). Δp = p_candidate − p_baseline of {r.dp_token}"
                 + (f"; imputed on {r.n_dp_imputed} items (not in the candidate's top-k)" if r.n_dp_imputed else "")
                 + ".")
    console.print(t)


def est_num(e: Estimate | None, digits: int = 4, signed: bool = False) -> str:
    if e is None or e.point is None:
        return "–"
    sign = "+" if signed and e.point > 0 else ""
    return f"{sign}{num(e.point, digits)} [{num(e.low, digits)}, {num(e.high, digits)}]"


def render_comparison(c: McqComparison, console: Console, *, show: int | None = None,
                      verdicts: Mapping[str, Verdict] | None = None) -> None:
    """One candidate: the full report. Several: the leaderboard and the correlations across them.
    Then, when measured, the noise floor beside the candidates."""
    if len(c.candidates) == 1:
        render_mcq_report(c.candidates[0].summary, console, show=show)
    else:
        render_leaderboard(c, console, verdicts=verdicts)
    if c.floor is not None:
        render_floor(c, console)


def render_leaderboard(c: McqComparison, console: Console, *,
                       verdicts: Mapping[str, Verdict] | None = None) -> None:
    title = f"servecmp mcq — task {c.task}"
    if c.source:
        title += f" ({c.source})"
    console.rule(escape(title))
    console.print(f" baseline: {c.baseline.model}  {c.baseline.url}", highlight=False)
    for cand in c.candidates:
        console.print(f"{cand.name:>9}: {cand.endpoint.model}  {cand.endpoint.url}", highlight=False)
    n = max((r.n_items for r in c.leaderboard), default=0)
    line = f"items compared: {n}"
    if c.n_items_planned and not c.complete:
        line += f" of {c.n_items_planned} planned (run not finished)"
    console.print(line, highlight=False)
    floor = any(r.flips_excess is not None for r in c.leaderboard)
    t = Table(title="Leaderboard: every candidate against the same baseline, fewest flips first (95% intervals)",
              title_justify="left")
    cols = ["#", "candidate", "n", "Δacc", "flips", "c→w/w→c", "answer changes", "option KL", "top-k KL"]
    if floor:
        cols.append("flips over floor")
    if verdicts:
        cols.append("verdict")
    for col in cols:
        t.add_column(col, justify="left" if col in ("candidate", "verdict") else "right")
    for r in c.leaderboard:
        row = [str(r.rank), escape(r.name), str(r.n_items), est_pct(r.delta_acc, signed=True),
               prop(r.flips), f"{r.correct_to_wrong}/{r.wrong_to_correct}", prop(r.answer_changes),
               est_num(r.option_kl), est_num(r.topk_kl)]
        if floor:
            row.append(est_pct(r.flips_excess, signed=True))
        if verdicts:
            v = verdicts.get(r.name)
            row.append(v.status.upper() if v is not None else "–")
        t.add_row(*row)
    console.print(t)
    if c.correlations:
        k = Table(title=f"Across the {len(c.candidates)} candidates", title_justify="left")
        for col in ("x", "y", "Spearman r", "p", "Pearson r", "p", "p-values", "note"):
            k.add_column(col, justify="left" if col in ("x", "y", "p-values", "note") else "right")
        for x in c.correlations:
            r2 = x.correlation
            k.add_row(_LABELS.get(x.x, x.x), _LABELS.get(x.y, x.y), num(r2.spearman_r, 3), pval(r2.spearman_p),
                      num(r2.pearson_r, 3), pval(r2.pearson_p), r2.p_method, x.note or "")
        console.print(k)
    else:
        console.print("correlations across candidates need 3 or more candidates", highlight=False)
    if c.scatter_png:
        console.print(f"scatter plot (flips vs option KL): {c.scatter_png}", highlight=False)


_LABELS = {"flip_rate": "flips", "answer_change_rate": "answer changes", "option_kl": "option KL",
           "abs_delta_acc": "|Δacc|"}


def floor_sentences(c: McqComparison) -> list[str]:
    """The plain reading of the noise floor: who did not reproduce itself, and per candidate whether
    its flips are within the floor."""
    out: list[str] = []
    f = c.floor
    if f is None:
        return out
    for ch in f.checks:
        what = "baseline vs secondary" if ch.method == "secondary" else f"{ch.endpoint} asked again"
        s = ch.summary
        if ch.exact:
            out.append(f"{what}: reproduced exactly on {s.n_items} items (0 flips, 0 answer changes, option KL 0).")
        elif ch.reproducible:
            out.append(f"{what}: reproduced on {s.n_items} items to float rounding (0 flips, 0 answer changes, "
                       f"option KL at most {ch.max_option_kl:.1e} nats).")
        else:
            out.append(f"{what}: NOT reproducible: {s.flips.flips} flips, {s.answer_changes.count} answer changes "
                       f"of {s.n_items} items, option KL mean {num(s.option_kl.mean, 6)}, max "
                       f"{num(ch.max_option_kl, 6)} nats.")
    for cand in c.candidates:
        ex = cand.floor
        if ex is None or ex.n == 0:
            continue
        fe = ex.flips_excess
        head = (f"{cand.name}: flips {pct(ex.candidate_flip_rate)} vs floor {pct(ex.floor_flip_rate)} on the same "
                f"{ex.n} items, excess {est_pct(fe, signed=True)} (McNemar p={pval(ex.mcnemar_p)}); option KL excess "
                f"{est_num(ex.kl_excess, signed=True)} nats (Wilcoxon p={pval(ex.wilcoxon_p)})")
        if ex.within_floor:
            out.append(head + ": its flips are WITHIN the noise floor (the excess interval contains 0).")
        else:
            out.append(head + ": its flips are ABOVE the noise floor.")
    if f.not_reproducible:
        out.append("Not reproducible: " + ", ".join(f.not_reproducible) + ".")
    return out


def _sci(x: float | None) -> str:
    return "–" if x is None else ("0" if x == 0 else f"{x:.2e}")


def render_floor(c: McqComparison, console: Console) -> None:
    f = c.floor
    if f is None:
        return
    t = Table(title="Noise floor: each endpoint against itself (95% intervals)", title_justify="left")
    for col in ("comparison", "n", "flips", "answer changes", "option KL mean", "max KL", "reproducible"):
        t.add_column(col, justify="left" if col == "comparison" else "right")
    for ch in f.checks:
        s = ch.summary
        what = "baseline vs secondary" if ch.method == "secondary" else f"{ch.endpoint} vs itself"
        t.add_row(escape(what), str(s.n_items), prop(s.flips.rate), prop(s.answer_changes),
                  est_num(s.option_kl.mean_ci, 6), _sci(ch.max_option_kl),
                  "exactly" if ch.exact else "yes" if ch.reproducible else "NO")
    console.print(t)
    for line in floor_sentences(c):
        console.print(escape(line), highlight=False)
