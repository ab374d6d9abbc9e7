"""The `servecmp correlate` page: candidates against one baseline and how their measures correlate."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from servecmp.html import _plots
from servecmp.html._page import Cell, Page, esc, num, pct, pval, settings_list, table, versions

if TYPE_CHECKING:
    from servecmp.correlate import CandidateRow, CorrelationRow


def _scatter(rows: Sequence[CandidateRow], y: str, ylabel: str, name: str, caption: str, hline: float | None) -> str:
    pts = [(str(r.candidate.model), 100 * r.flip_rate, getattr(r, y)) for r in rows
           if r.flip_rate is not None and getattr(r, y) is not None]
    if not pts:
        return ""
    fig, ax = _plots.figure(5.6, 4.0)
    for i, (label, x, yv) in enumerate(pts):
        ax.scatter([x], [yv], color=_plots.PALETTE[i % len(_plots.PALETTE)])
        ax.annotate(label, (x, yv), textcoords="offset points", xytext=(5, 5), fontsize=8)
    if hline is not None:
        ax.axhline(hline, color="#888888", linewidth=0.8)
    ax.set_xlabel("flips (% of MCQ items)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return _plots.embed(fig, name, caption)


def render_correlate(rows: Sequence[CandidateRow], results: Sequence[CorrelationRow], warnings: Sequence[str],
                     kl_source: str, run_dirs: Sequence[Any] = ()) -> str:
    from servecmp.correlate import LABELS, MIN_CANDIDATES

    page = Page(title="servecmp correlate — candidates against one baseline",
                subtitle=f"{len(rows)} candidate(s), KL: {kl_source}")
    lines = []
    for c in results:
        label = f"{LABELS[c.x]} vs {LABELS[c.y]}"
        if c.note:
            lines.append(f"{label}: {c.note}.")
        else:
            lines.append(f"{label}: Spearman ρ = {num(c.result.spearman_r, 3)} (p = {pval(c.result.spearman_p)}), "
                         f"n = {c.result.n}.")
    head = ('<div class="verdict nogates" id="verdict"><div class="line" data-verdict="nogates">Verdict: correlate '
            "decides no gate; it reads the candidates' runs</div>" + "".join(f"<p>{esc(x)}</p>" for x in lines)
            + "".join(f"<p class=\"note\">warning: {esc(w)}</p>" for w in warnings) + "</div>")
    page.head_html = head
    page.add("settings", "Runs", settings_list([("runs", ", ".join(str(d) for d in run_dirs) or "–"),
                                                ("KL", kl_source), *versions()]))
    body = []
    for r in rows:
        body.append([Cell(str(r.candidate.model), numeric=False), Cell(r.candidate.url, numeric=False),
                     Cell(pct(r.delta_accuracy, signed=True), r.delta_accuracy, f"{r.candidate.model}:delta_accuracy"),
                     Cell("–" if r.flip_rate is None else f"{pct(r.flip_rate)} ({r.flips}/{r.n_items})", r.flip_rate,
                          f"{r.candidate.model}:flip_rate"),
                     Cell(num(r.kl, 4), r.kl, f"{r.candidate.model}:kl"),
                     Cell(num(r.delta_mtbench, 2, True), r.delta_mtbench, f"{r.candidate.model}:delta_mtbench"),
                     Cell(str(r.mcq_run or "–"), numeric=False), Cell(str(r.mtbench_run or "–"), numeric=False)])
    page.add("candidates", "Candidates", table(["candidate", "URL", "Δaccuracy", "flips", "KL", "ΔMT-Bench",
                                                "MCQ run", "MT-Bench run"], body, numeric_cols=(2, 3, 4, 5)))
    crow = []
    for c in results:
        res = c.result
        crow.append([Cell(f"{LABELS[c.x]} vs {LABELS[c.y]}", numeric=False), res.n,
                     Cell(num(res.spearman_r, 3, True), res.spearman_r, f"corr.{c.x}.{c.y}.spearman"),
                     Cell(pval(res.spearman_p), res.spearman_p), Cell(num(res.pearson_r, 3, True), res.pearson_r),
                     Cell(pval(res.pearson_p), res.pearson_p), Cell(c.note or res.p_method, numeric=False)])
    note = "" if len(rows) >= MIN_CANDIDATES else (
        f"<p class=\"note\">{len(rows)} candidate(s): a correlation needs at least {MIN_CANDIDATES}.</p>")
    figs = (_scatter(rows, "delta_mtbench", "ΔMT-Bench (candidate − baseline)", "corr-mtbench",
                     "Flips vs ΔMT-Bench, one point per candidate.", 0.0)
            + _scatter(rows, "kl", f"mean {kl_source} KL (nats)", "corr-kl", "Flips vs KL, one point per candidate.",
                       None))
    page.add("correlations", "Correlations across candidates",
             table(["x vs y", "n", "Spearman ρ", "p", "Pearson r", "p", "note"], crow, sortable=False,
                   numeric_cols=range(1, 6)) + note + f"<div class=\"figs\">{figs}</div>")
    return page.render()
