"""The MCQ page: one or several candidates against one baseline (`McqComparison`).

Renders an `servecmp.mcq.view.McqView` and computes nothing: every table number comes from the typed
summary (`McqSummary`, `McqComparison`), the per-item views (KL and margin histograms, the list of
flipped and changed items) from the view's `PerItem`s, the question texts from the run's items.jsonl.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from servecmp.html import _plots
from servecmp.html._page import (
    Cell,
    Page,
    esc,
    interval,
    num,
    pct,
    pval,
    sci,
    settings_list,
    table,
    versions,
)
from servecmp.html._verdict import verdict_html

if TYPE_CHECKING:
    from servecmp.gates import Verdict
    from servecmp.mcq.compare import CandidateResult, McqComparison
    from servecmp.mcq.settings import McqManifest
    from servecmp.mcq.summary import Distribution, Estimate, McqSummary, Proportion
    from servecmp.mcq.view import ItemText, ItemView, McqView, PerItem

#: Subjects drawn in the flips-per-subject plot (the table lists them all).
PLOT_GROUPS = 30
#: KL values at or below this are drawn in the histogram's first bin (log scale has no 0).
KL_FLOOR = 1e-8


def _letter(i: int) -> str:
    return chr(ord("A") + i) if 0 <= i < 26 else "–"


# ---- tables --------------------------------------------------------------------------------------


def _est_cell(e: Estimate | None, metric: str, signed: bool = False) -> Cell:
    if e is None or e.point is None:
        return Cell("–", None, metric)
    return Cell(f"{pct(e.point, signed=signed)} {interval(e.low, e.high, signed=signed)}", e.point, metric)


def _prop_cell(p: Proportion | None, metric: str) -> Cell:
    if p is None or p.rate is None:
        return Cell("–", None, metric)
    return Cell(f"{pct(p.rate)} {interval(p.low, p.high)} ({p.count:,}/{p.n:,})", p.rate, metric)


def _kl_row(name: str, d: Distribution | None, prefix: str, note: str = "") -> list[Any]:
    if d is None or not d.n:
        return [Cell(name, numeric=False), 0, "–", "–", "–", "–", "–", Cell(note, numeric=False)]
    ci = d.mean_ci
    return [Cell(name, numeric=False), Cell(f"{d.n:,}", d.n, f"{prefix}.n"),
            Cell(f"{sci(d.mean)} {interval(ci.low, ci.high, 'sci', 3)}", d.mean, f"{prefix}.mean"),
            Cell(sci(d.median), d.median, f"{prefix}.median"), Cell(sci(d.p90), d.p90, f"{prefix}.p90"),
            Cell(sci(d.p99), d.p99, f"{prefix}.p99"), Cell(sci(d.max), d.max, f"{prefix}.max"),
            Cell(note, numeric=False)]


def reading(s: McqSummary) -> str:
    acc, fl = s.accuracy.diff, s.flips
    p = fl.mcnemar_p
    sig = "a significant change" if p is not None and p < 0.05 else "not a significant change"
    return (f"Reading: accuracy moved {pct(acc.point, signed=True)} (95% interval {pct(acc.low, signed=True)} to "
            f"{pct(acc.high, signed=True)}, n = {acc.n:,}), {sig} (McNemar p = {pval(p)}); "
            f"{pct(fl.rate.rate)} of answers flipped between correct and wrong ({fl.correct_to_wrong:,} correct→wrong, "
            f"{fl.wrong_to_correct:,} wrong→correct) and {pct(s.answer_changes.rate)} of chosen options changed.")


def _summary_tables(s: McqSummary, p: str) -> str:
    acc, fl = s.accuracy, s.flips
    rows: list[list[Any]] = [
        ["baseline accuracy", _est_cell(acc.baseline, f"{p}accuracy.baseline"), acc.baseline.n],
        ["candidate accuracy", _est_cell(acc.candidate, f"{p}accuracy.candidate"), acc.candidate.n],
        ["difference (candidate − baseline)", _est_cell(acc.diff, f"{p}accuracy.diff", signed=True), acc.diff.n],
        ["flips (correctness changed)", _prop_cell(fl.rate, f"{p}flips.rate"), fl.n],
        ["  correct → wrong", Cell(f"{fl.correct_to_wrong:,}", fl.correct_to_wrong, f"{p}flips.correct_to_wrong"),
         fl.n],
        ["  wrong → correct", Cell(f"{fl.wrong_to_correct:,}", fl.wrong_to_correct, f"{p}flips.wrong_to_correct"),
         fl.n],
        ["  McNemar exact p (c→w vs w→c)", Cell(pval(fl.mcnemar_p), fl.mcnemar_p, f"{p}flips.mcnemar_p"), fl.n],
        ["answer changes (any option)", _prop_cell(s.answer_changes, f"{p}answer_changes"), s.answer_changes.n],
    ]
    if s.acc_norm is not None:
        rows.append(["acc_norm difference", _est_cell(s.acc_norm.accuracy.diff, f"{p}acc_norm.diff", signed=True),
                     s.acc_norm.accuracy.diff.n])
        rows.append(["acc_norm flips", _prop_cell(s.acc_norm.flips.rate, f"{p}acc_norm.flips"), s.acc_norm.flips.n])
    out = [table(["measure", "value [95% interval]", "n"], [[Cell(r[0], numeric=False), *r[1:]] for r in rows],
                 caption="Accuracy, flips and answer changes (Wilson intervals for rates, paired bootstrap for "
                         "accuracy)", sortable=False, numeric_cols=(1, 2))]

    kl_rows = [_kl_row("answer options", s.option_kl, f"{p}option_kl",
                       f"{s.option_kl.n_floored} floored" if s.option_kl.n_floored else "exact")]
    tk = s.topk_kl
    if tk is not None:
        um = tk.unresolved_baseline_mass
        kl_rows.append(_kl_row("next token (top-k)", tk.kl_hat, f"{p}topk_kl.kl_hat",
                               f"lower bound; unresolved baseline mass mean {sci(um.mean)}, max {sci(um.max)}; "
                               f"{tk.n_exact:,} exact, {tk.n_floored:,} floored"))
    # Summary layout 3 (KL in both directions, Jensen-Shannon, the tight top-k estimate): read with
    # getattr so a layout-2 summary, which has none of them, renders the same table without them.
    more: list[tuple[Any, str, str, str]] = [
        (getattr(s, "option_kl_cb", None), "answer options, KL(candidate ‖ baseline)", "option_kl_cb", "exact"),
        (getattr(s, "option_js", None), "answer options, Jensen-Shannon", "option_js", "exact"),
    ]
    if tk is not None:
        more += [(getattr(tk, "kl_cb_hat", None), "next token (top-k), KL(candidate ‖ baseline)",
                  "topk_kl.kl_cb_hat", "lower bound"),
                 (getattr(tk, "js_hat", None), "next token (top-k), Jensen-Shannon", "topk_kl.js_hat", "lower bound")]
        tight = getattr(tk, "tight", None)
        if tight is not None:
            more += [(getattr(tight, "kl_bc", None), "next token, tight estimate KL(baseline ‖ candidate)",
                      "topk_kl.tight.kl_bc", "estimate, not a bound"),
                     (getattr(tight, "kl_cb", None), "next token, tight estimate KL(candidate ‖ baseline)",
                      "topk_kl.tight.kl_cb", "estimate, not a bound"),
                     (getattr(tight, "js", None), "next token, tight estimate Jensen-Shannon", "topk_kl.tight.js",
                      "estimate, not a bound")]
    for d, label, key, note in more:
        if d is not None and hasattr(d, "mean_ci"):
            kl_rows.append(_kl_row(label, d, f"{p}{key}", note))
    out.append(table(["distribution", "n", "mean [95% interval]", "median", "p90", "p99", "max", "note"], kl_rows,
                     caption="KL divergences, nats (KL(baseline ‖ candidate) unless the row says otherwise)",
                     sortable=False, numeric_cols=(1, 2, 3, 4, 5, 6)))
    out.append(_llama_block(getattr(s, "next_token_report", None), p))
    out.append(_extra_kl(s, p))

    bc = s.top_margin.by_baseline_correctness
    m_rows = []
    for label, e in (("correct", bc.when_correct), ("wrong", bc.when_wrong)):
        m_rows.append([Cell(label, numeric=False), Cell(f"{e.n:,}", e.n, f"{p}top_margin.{label}.n"),
                       Cell(f"{num(e.point, 3)} {interval(e.low, e.high, 'num', 3)}", e.point,
                            f"{p}top_margin.when_{label}")])
    out.append(table(["baseline answer", "n", "mean top margin [95% interval]"], m_rows, sortable=False,
                     caption=f"Top margin (baseline p1 − p2 over the options) when the baseline is correct vs wrong "
                             f"(the paper's Table 1); Mann-Whitney p = {pval(bc.mann_whitney_p)}",
                     numeric_cols=(1, 2)))
    return "".join(out)


def _llama_block(r: Any, p: str) -> str:
    """llama.cpp's ``perplexity --kl-divergence`` statistics (summary layout 3), as it prints them:
    means ± one standard error, then the percentiles."""
    if r is None:
        return ""

    def pm(m: Any, scale: float = 1.0, unit: str = "") -> str:
        if m is None or m.value is None:
            return "–"
        err = f" ± {sci(m.error * scale)}" if m.error is not None else ""
        return f"{sci(m.value * scale)}{err}{unit}"

    rows: list[list[Any]] = [
        [Cell("mean KLD", numeric=False), Cell(pm(r.kld_mean), r.kld_mean.value, f"{p}next_token_report.kld_mean")],
        [Cell("mean Δp", numeric=False), Cell(pm(r.dp_mean, 100, " %"), r.dp_mean.value,
                                               f"{p}next_token_report.dp_mean")],
        [Cell("RMS Δp", numeric=False), Cell(pm(r.dp_rms, 100, " %"), r.dp_rms.value, f"{p}next_token_report.dp_rms")],
        [Cell("same top token", numeric=False),
         Cell(f"{pm(r.same_top, 100, ' %')} ({r.same_top_count:,}/{r.n:,})", r.same_top.value,
              f"{p}next_token_report.same_top")],
    ]
    for key, v in r.kld_percentiles.items():
        rows.append([Cell(f"KLD {key.replace('_', '.')}", numeric=False), Cell(sci(v), v)])
    for key, v in r.dp_percentiles.items():
        rows.append([Cell(f"Δp {key.replace('_', '.')}", numeric=False),
                     Cell("–" if v is None else f"{100 * v:+.3f} %", v)])
    caption = (f"llama.cpp-style next-token statistics over {r.n:,} answer positions (KLD: {r.kld_source}; Δp: "
               f"{r.dp_token}" + (f"; {r.n_dp_imputed:,} imputed" if r.n_dp_imputed else "") + ")")
    return "<details><summary>llama.cpp-style KL-divergence statistics</summary>" + table(
        ["statistic", "value"], rows, caption=caption, sortable=False, numeric_cols=(1,)) + "</details>"


def _extra_kl(s: McqSummary, p: str) -> str:
    """Any other KL block a later summary layout carries, as key/value rows (so it is not lost)."""
    known = {"option_kl", "topk_kl", "option_kl_cb", "option_js", "next_token_report"}
    rows: list[list[Any]] = []
    for name in type(s).model_fields:
        if name in known or "kl" not in name.lower():
            continue
        value = getattr(s, name, None)
        if value is None or hasattr(value, "mean_ci"):
            continue
        data = value.model_dump(mode="json") if hasattr(value, "model_dump") else value
        for key, v in _flatten(data, name):
            rows.append([Cell(key, numeric=False), Cell(sci(v) if isinstance(v, float) else str(v),
                                                        v if isinstance(v, int | float) else None, f"{p}{key}")])
    if not rows:
        return ""
    return table(["field", "value"], rows, caption="More KL statistics from the summary", sortable=False)


def _flatten(data: Any, prefix: str) -> list[tuple[str, Any]]:
    if isinstance(data, dict):
        return [kv for k, v in data.items() for kv in _flatten(v, f"{prefix}.{k}")]
    if isinstance(data, list):
        return [(prefix, ", ".join(str(x) for x in data))]
    return [(prefix, data)]


def _margin_bucket_table(s: McqSummary, p: str) -> str:
    rows = []
    for i, b in enumerate(s.top_margin.change_by_bucket):
        ch = b.changes
        rows.append([Cell(f"{b.low_edge:.1f}–{b.high_edge:.1f}", b.low_edge, numeric=False),
                     Cell(f"{ch.n:,}", ch.n, f"{p}margin_bucket.{i}.n"),
                     Cell(f"{ch.count:,}", ch.count, f"{p}margin_bucket.{i}.count"),
                     Cell("–" if not ch.n else f"{pct(ch.rate)} {interval(ch.low, ch.high)}", ch.rate,
                          f"{p}margin_bucket.{i}.rate")])
    c = s.top_margin.margin_change_correlation
    return table(["baseline top margin", "n", "changed", "change rate [95% interval]"], rows, sortable=False,
                 caption=f"Answer changes by baseline top margin; Spearman(margin, changed) r = "
                         f"{num(c.spearman_r, 3)}, p = {pval(c.spearman_p)}, n = {c.n:,}", numeric_cols=(1, 2, 3))


def _groups(s: McqSummary, p: str) -> str:
    out = []
    for name in ("category", "subject", "task"):
        rows = s.groups.get(name)
        if not rows or (len(rows) == 1 and rows[0].group in ("", "None", "(none)")):
            continue
        body = []
        for r in rows:
            body.append([Cell(r.group, numeric=False), r.n, Cell(pct(r.acc_baseline), r.acc_baseline),
                         Cell(pct(r.acc_candidate), r.acc_candidate),
                         Cell(pct(r.delta_acc, signed=True), r.delta_acc),
                         Cell(f"{r.flips:,} ({pct(r.flip_rate)})", r.flip_rate, f"{p}groups.{name}.{r.group}.flips"),
                         r.correct_to_wrong, r.wrong_to_correct, Cell(pct(r.answer_change_rate), r.answer_change_rate),
                         Cell(sci(r.mean_option_kl), r.mean_option_kl)])
        out.append(table([name, "n", "acc base", "acc cand", "Δacc", "flips", "c→w", "w→c", "changes", "KL opt"], body,
                         caption=f"By {name}, most flips first (click a header to sort)",
                         numeric_cols=range(1, 10)))
    return "".join(out)


# ---- plots ---------------------------------------------------------------------------------------


def _fig_margin_changes(s: McqSummary, name: str) -> str:
    fig, ax = _plots.figure(6.0, 3.4)
    buckets = s.top_margin.change_by_bucket
    mids = [(b.low_edge + b.high_edge) / 2 for b in buckets]
    _plots.errorbars(ax, mids, [b.changes.rate for b in buckets], [b.changes.low for b in buckets],
                     [b.changes.high for b in buckets], color=_plots.CAND)
    for x, b in zip(mids, buckets, strict=True):
        if b.changes.n:
            ax.annotate(f"n={b.changes.n}", (x, 0), textcoords="offset points", xytext=(0, 2), ha="center",
                        fontsize=7, color="#5a636e")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("baseline top margin (p1 − p2 over the options)")
    ax.set_ylabel("answer-change rate")
    ax.grid(alpha=0.3)
    return _plots.embed(fig, f"{name}-fig3", "Answer-change rate by the baseline's top margin, 95% Wilson "
                        "intervals, n per bucket (the paper's Figure 3): answers with small margins change.")


def _fig_margin_hist(per: PerItem, name: str) -> str:
    fig, ax = _plots.figure(6.0, 3.4)
    m = per.margin
    ok = np.isfinite(m)
    bins = np.linspace(0, 1, 21)
    right, wrong = m[ok & per.base_correct], m[ok & ~per.base_correct]
    ax.hist([right, wrong], bins=bins, label=[f"baseline correct (n={right.size:,})",
                                              f"baseline wrong (n={wrong.size:,})"],
            color=["#1b9e77", "#b3261e"], alpha=0.8)
    ax.set_xlabel("baseline top margin")
    ax.set_ylabel("items")
    ax.legend(fontsize=8)
    return _plots.embed(fig, f"{name}-margins", "Distribution of the baseline's top margin when its answer is "
                        "correct vs wrong (the paper's Table 1 as histograms).")


def _log_hist(ax: Any, values: np.ndarray, color: str, label: str) -> int:
    """A histogram of positive values on a log axis; returns how many were at or below KL_FLOOR."""
    v = values[np.isfinite(values)]
    low = int(np.count_nonzero(v <= KL_FLOOR))
    # The axis starts just below the smallest positive value (not at the floor), so bins are not
    # wasted on empty decades; values at or below the floor are drawn in the first bin.
    positive = v[v > KL_FLOOR]
    lo = float(positive.min()) / 2 if positive.size else KL_FLOOR
    pos = np.maximum(v, lo)
    hi = max(float(pos.max()) if pos.size else 1.0, lo * 10)
    bins = np.logspace(math.log10(lo), math.log10(hi) + 0.01, 31)
    ax.hist(pos, bins=bins, color=color, alpha=0.85, label=label)
    ax.set_xscale("log")
    return low


def _fig_kl(per: PerItem, s: McqSummary, name: str) -> str:
    has_topk = per.topk_kl is not None and per.p_rest is not None
    fig, ax = _plots.figure(6.0 if not has_topk else 9.6, 3.4)
    axes = [ax]
    if has_topk:
        fig.clf()
        axes = [fig.add_subplot(1, 3, i) for i in (1, 2, 3)]
    zero = _log_hist(axes[0], per.option_kl, _plots.CAND, "option KL")
    axes[0].set_xlabel("KL over the answer options (nats)")
    axes[0].set_ylabel("items")
    axes[0].set_title(f"options, n={s.option_kl.n:,}, ≤1e-8: {zero:,}", fontsize=9)
    caption = ("Per-item KL(baseline ‖ candidate), log scale; values at or below 1e-8 (0 included) are counted in "
               "the title and drawn in the first bin.")
    if has_topk:
        assert per.topk_kl is not None and per.p_rest is not None and s.topk_kl is not None
        zero_t = _log_hist(axes[1], per.topk_kl, "#7570b3", "top-k KL")
        axes[1].set_xlabel("next-token KL, top-k lower bound (nats)")
        axes[1].set_title(f"next token, n={s.topk_kl.n:,}, ≤1e-8: {zero_t:,}", fontsize=9)
        pr = per.p_rest[np.isfinite(per.p_rest)]
        axes[2].hist(pr, bins=np.linspace(0, max(float(pr.max()) if pr.size else 1.0, 1e-6), 21), color="#666666")
        um = s.topk_kl.unresolved_baseline_mass
        axes[2].set_xlabel("unresolved baseline mass p_R")
        axes[2].set_title(f"mean {sci(um.mean)}, max {sci(um.max)}", fontsize=9)
        caption += (" Right: the baseline mass outside the tokens both top-k lists share, which bounds the "
                    "estimator's error (true KL − estimate = p_R × the KL inside the rest).")
    return _plots.embed(fig, f"{name}-kl", caption)


def _fig_groups(s: McqSummary, name: str) -> str:
    key = "subject" if "subject" in s.groups else ("category" if "category" in s.groups else None)
    if key is None:
        return ""
    rows = [r for r in s.groups[key] if r.flips][:PLOT_GROUPS]
    if not rows:
        return ""
    fig, ax = _plots.figure(6.4, max(2.0, 0.22 * len(rows) + 0.9))
    y = np.arange(len(rows))[::-1]
    c2w = [r.correct_to_wrong / r.n for r in rows]
    w2c = [r.wrong_to_correct / r.n for r in rows]
    ax.barh(y, c2w, color="#b3261e", label="correct→wrong")
    ax.barh(y, w2c, left=c2w, color="#1b9e77", label="wrong→correct")
    ax.set_yticks(y)
    ax.set_yticklabels([f"{r.group} (n={r.n})" for r in rows], fontsize=7)
    ax.set_xlabel("flip rate")
    ax.legend(fontsize=8, loc="lower right")
    more = f" (the {len(rows)} with the highest flip rate of {len(s.groups[key])}; the table lists all)" if len(
        s.groups[key]) > len(rows) else ""
    return _plots.embed(fig, f"{name}-groups", f"Flips per {key}{more}, split by direction.")


# ---- the item list -------------------------------------------------------------------------------

_KIND_LABEL = {"c2w": "correct→wrong", "w2c": "wrong→correct", "chg": "changed (both wrong)"}


def _item_html(v: ItemView, text: ItemText | None) -> str:
    tags = f'<span class="tag {v.kind}">{_KIND_LABEL[v.kind]}</span>'
    head = (f"{tags} <span class=\"mono\">{esc(v.item_id)}</span> {esc(v.subject or v.category or '')} — gold "
            f"{_letter(v.gold)}, baseline {_letter(v.base_choice)} → candidate {_letter(v.cand_choice)}; option KL "
            f"{sci(v.option_kl)}" + (f", margin {num(v.margin, 3)}" if v.margin is not None else ""))
    rows = []
    for i, (bp, cp) in enumerate(zip(v.base_probs, v.cand_probs, strict=True)):
        label = _letter(i) + (" (gold)" if i == v.gold else "")
        option = text.options[i] if text is not None and i < len(text.options) else ""
        rows.append("<tr>" + f"<td class=\"{'gold' if i == v.gold else ''}\">{esc(label)}</td>"
                    f"<td>{esc(option)}</td>"
                    f"<td class=\"num\" data-v=\"{bp!r}\">{pct(bp)}</td><td class=\"num\" data-v=\"{cp!r}\">"
                    f"{pct(cp)}</td></tr>")
    opts = ("<table><thead><tr><th>option</th><th>text</th><th class=\"num\">p baseline</th>"
            "<th class=\"num\">p candidate</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")
    question = f"<pre>{esc(text.question)}</pre>" if text is not None else ""
    group = v.subject or v.category or ""
    return (f'<details class="item" data-kind="{v.kind}{" flip" if v.kind in ("c2w", "w2c") else ""}" '
            f'data-group="{esc(group.replace(" ", "_"))}" data-item="{esc(v.item_id)}"><summary>{head}</summary>'
            f"{question}{opts}</details>")


def _item_list(per: PerItem, texts: Mapping[str, ItemText], why_not: str | None, name: str) -> str:
    shown = [v for v in per.items if v.kind != "same"]
    order = {"c2w": 0, "w2c": 1, "chg": 2}
    shown.sort(key=lambda v: (order[v.kind], -(v.option_kl or 0.0)))
    n_flip = sum(v.kind in ("c2w", "w2c") for v in shown)
    groups = sorted({(v.subject or v.category or "") for v in shown} - {""})
    list_id = f"{name}-items"
    group_opts = "".join(f'<option value="{esc(g.replace(" ", "_"))}">{esc(g)}</option>' for g in groups)
    bar = (f'<div class="filters" data-for="{esc(list_id)}"><input type="search" placeholder="filter: words, id, '
           f'subject" aria-label="filter items"><select name="kind" aria-label="kind"><option value="">flips and '
           f'changes</option><option value="flip">flips only</option><option value="c2w">correct→wrong</option>'
           f'<option value="w2c">wrong→correct</option><option value="chg">changed, both wrong</option></select>'
           + (f'<select name="group" aria-label="subject"><option value="">every subject</option>{group_opts}'
              f"</select>" if groups else "") + '<span class="count muted"></span></div>')
    note = (f"<p class=\"muted\">{n_flip:,} flipped and {len(shown) - n_flip:,} changed items of {len(per.items):,} "
            f"(correct→wrong first, then by option KL). Click an item for the question, its options and each "
            f"endpoint's option probabilities (renormalised over the options).</p>")
    if why_not:
        note += f"<p class=\"note\">Question texts not shown: {esc(why_not)}.</p>"
    items = "".join(_item_html(v, texts.get(v.item_id)) for v in shown)
    return f"{note}{bar}<div id=\"{esc(list_id)}\">{items}</div>"


# ---- the page ------------------------------------------------------------------------------------


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", name) or "c"


def candidate_sections(page: Page, c: CandidateResult, per: PerItem | None, texts: Mapping[str, ItemText],
                       why_not: str | None, *, several: bool) -> None:
    s = c.summary
    name = _slug(c.name)
    p = f"{c.name}:" if several else ""
    label = f" — {c.name}" if several else ""
    page.add(f"{name}-summary", f"Accuracy, flips, KL{label}",
             (f"<p>{esc(reading(s))}</p>" if several else "") + _summary_tables(s, p))
    figs = [_fig_margin_changes(s, name)]
    if per is not None:
        figs.append(_fig_margin_hist(per, name))
    # The bucket table beside the paper's Figure 3 (they show the same numbers), then Table 1's histograms.
    page.add(f"{name}-margin", f"Top margin{label}", '<div class="figs">' + _margin_bucket_table(s, p)
             + "".join(figs) + "</div>")
    if per is not None:
        page.add(f"{name}-kl", f"KL histograms{label}", _fig_kl(per, s, name))
    groups = _groups(s, p)
    if groups:
        page.add(f"{name}-groups", f"Flips by category and subject{label}", _fig_groups(s, name) + groups)
    if per is not None:
        page.add(f"{name}-items", f"Flipped and changed items{label}", _item_list(per, texts, why_not, name))
    else:
        page.add(f"{name}-items", f"Flipped and changed items{label}",
                 "<p class=\"note\">No records to list items from (this report was made from a summary).</p>")


def _settings(cmp: McqComparison, manifest: McqManifest | None) -> str:
    pairs: list[tuple[str, object]] = []
    pairs.append(("run", cmp.run_dir or "–"))
    pairs.append(("task", f"{cmp.task} ({cmp.source})"))
    first = cmp.candidates[0].summary
    planned = f" of {cmp.n_items_planned:,} planned" if cmp.n_items_planned else ""
    pairs.append(("items compared", f"{first.n_items:,}{planned}; {first.n_options} options"
                  + ("" if cmp.complete else " — the run is unfinished")))
    if manifest is not None:
        for e in manifest.endpoints:
            who = "baseline" if e.role == "baseline" else (
                "candidate" if (e.name or "candidate") == "candidate" else f"candidate {e.name}")
            key = f", key from ${e.api_key_env}" if e.api_key_env else ""
            rps = "unlimited" if e.requests_per_second is None else f"{e.requests_per_second:g}"
            pairs.append((who, f"{e.model} at {e.base_url} (concurrency {e.max_concurrency}, rps {rps}, timeout "
                               f"{e.timeout_s:g} s, retries {e.max_retries}{key})"))
        if manifest.secondary is not None:
            pairs.append(("secondary", f"{manifest.secondary.model} at {manifest.secondary.base_url}"))
        pairs += [("few-shot", manifest.fewshot), ("top-k", manifest.top_k), ("seed", manifest.seed),
                  ("limit", manifest.limit), ("sample", manifest.sample), ("noise floor", manifest.noise_floor),
                  ("item-set fingerprint", manifest.task_fingerprint), ("prompt format", manifest.prompt_format_hash),
                  ("started", manifest.started_at), ("finished", manifest.finished_at or "not finished"),
                  ("run made by", f"servecmp {manifest.servecmp_version}")]
    else:
        pairs.append(("baseline", f"{cmp.baseline.model} at {cmp.baseline.url}"))
        for c in cmp.candidates:
            pairs.append((f"candidate {c.name}", f"{c.endpoint.model} at {c.endpoint.url}"))
    st = first.settings
    pairs.append(("statistics", f"{st.confidence:.0%} intervals, {st.n_boot:,} bootstrap resamples, seed {st.seed}, "
                                f"KL in {st.kl_units}"))
    rpi = first.run.requests_per_item
    if rpi:
        pairs.append(("requests per item", ", ".join(f"{k} {v:.2f}" for k, v in rpi.items())))
    if first.run.apis:
        pairs.append(("asked through", ", ".join(f"{k} {'+'.join(v)}" for k, v in first.run.apis.items())))
    if first.run.api_mismatch:
        pairs.append(("warning", first.run.api_mismatch))
    for role, err in first.run.item_errors.items():
        pairs.append((f"{role} refused", f"{err.count} item(s), left out; e.g. {err.example[:200]}"))
    return settings_list(pairs + versions())


def _leaderboard(cmp: McqComparison) -> str:
    rows = []
    for r in cmp.leaderboard:
        rows.append([r.rank, Cell(r.name, numeric=False), Cell(r.model, numeric=False), r.n_items,
                     _est_cell(r.delta_acc, f"{r.name}:leaderboard.delta_acc", signed=True),
                     _prop_cell(r.flips, f"{r.name}:leaderboard.flips"),
                     Cell(f"{r.correct_to_wrong:,}/{r.wrong_to_correct:,}", r.correct_to_wrong),
                     _prop_cell(r.answer_changes, f"{r.name}:leaderboard.changes"),
                     Cell(f"{sci(r.option_kl.point)} {interval(r.option_kl.low, r.option_kl.high, 'sci', 3)}",
                          r.option_kl.point, f"{r.name}:leaderboard.option_kl"),
                     Cell("–" if r.topk_kl is None else
                          f"{sci(r.topk_kl.point)} {interval(r.topk_kl.low, r.topk_kl.high, 'sci', 3)}",
                          None if r.topk_kl is None else r.topk_kl.point),
                     _est_cell(r.flips_excess, f"{r.name}:leaderboard.flips_excess", signed=True)
                     if r.flips_excess is not None else None,
                     None if r.within_floor is None else ("within" if r.within_floor else "above")])
    return table(["#", "candidate", "model", "n", "Δacc [95%]", "flips [95%]", "c→w/w→c", "answer changes",
                  "option KL [95%]", "top-k KL [95%]", "flips excess over floor", "vs floor"], rows,
                 caption="Leaderboard, fewest flips first (click a header to sort)",
                 numeric_cols=(0, 3, 4, 5, 6, 7, 8, 9))


def _fig_scatter(cmp: McqComparison) -> str:
    pts = [r for r in cmp.leaderboard if r.flips.rate is not None and r.option_kl.point is not None]
    if not pts:
        return ""
    fig, ax = _plots.figure(6.0, 4.0)
    for i, r in enumerate(pts):
        assert r.flips.rate is not None and r.option_kl.point is not None
        color = _plots.PALETTE[i % len(_plots.PALETTE)]
        xerr = [[r.option_kl.point - (r.option_kl.low if r.option_kl.low is not None else r.option_kl.point)],
                [(r.option_kl.high if r.option_kl.high is not None else r.option_kl.point) - r.option_kl.point]]
        yerr = [[r.flips.rate - (r.flips.low or r.flips.rate)], [(r.flips.high or r.flips.rate) - r.flips.rate]]
        ax.errorbar([r.option_kl.point], [r.flips.rate], xerr=xerr, yerr=yerr, fmt="o", capsize=3, color=color)
        ax.annotate(r.name, (r.option_kl.point, r.flips.rate), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel("mean option KL (nats)")
    ax.set_ylabel("flip rate")
    ax.grid(alpha=0.3)
    return _plots.embed(fig, "scatter-flips-kl", "Flips vs option KL per candidate, with 95% intervals on both.")


def _correlations(cmp: McqComparison) -> str:
    if not cmp.correlations:
        return (f"<p class=\"muted\">{len(cmp.candidates)} candidates: a correlation across candidates needs at "
                "least 3.</p>")
    rows = []
    for c in cmp.correlations:
        r = c.correlation
        rows.append([Cell(f"{c.x} vs {c.y}", numeric=False), r.n,
                     Cell(num(r.spearman_r, 3), r.spearman_r), Cell(pval(r.spearman_p), r.spearman_p),
                     Cell(num(r.pearson_r, 3), r.pearson_r), Cell(pval(r.pearson_p), r.pearson_p),
                     Cell(c.note or r.p_method, numeric=False)])
    return table(["x vs y", "n", "Spearman ρ", "p", "Pearson r", "p", "note"], rows,
                 caption="Correlations across candidates", sortable=False, numeric_cols=range(1, 6))


def _floor(cmp: McqComparison) -> str:
    from servecmp.mcq.render import floor_sentences

    f = cmp.floor
    if f is None:
        return ""
    rows = []
    for ch in f.checks:
        s = ch.summary
        rows.append([Cell(ch.endpoint, numeric=False), Cell(ch.method, numeric=False), s.n_items,
                     s.flips.flips, s.answer_changes.count, Cell(sci(s.option_kl.mean), s.option_kl.mean),
                     Cell(sci(ch.max_option_kl), ch.max_option_kl),
                     Cell("exact" if ch.exact else "yes" if ch.reproducible else "NO", numeric=False)])
    body = table(["endpoint", "how", "n", "flips", "answer changes", "option KL mean", "max", "reproducible"], rows,
                 caption="Each endpoint against itself", sortable=False, numeric_cols=range(2, 7))
    return body + "".join(f"<p>{esc(x)}</p>" for x in floor_sentences(cmp))


def render_mcq(view: McqView | McqComparison, *, verdicts: Sequence[Verdict] = ()) -> str:
    """The page of an MCQ run (one or several candidates), from its view (`servecmp.mcq.view`): the
    summary's tables and plots, and, when the view has per-item data, the item lists and histograms.
    A bare comparison (a summary file) gives the tables and the margin plot only."""
    from servecmp.mcq.view import McqView

    if not isinstance(view, McqView):
        view = McqView(comparison=view)
    cmp = view.comparison
    several = len(cmp.candidates) > 1
    run_name = Path(cmp.run_dir).name if cmp.run_dir else "run"
    cands = ", ".join(c.endpoint.model or c.name for c in cmp.candidates)
    page = Page(title=f"servecmp mcq — {cmp.task} — {run_name}",
                subtitle=f"baseline {cmp.baseline.model or cmp.baseline.url} vs {cands}")
    notes = [reading(c.summary) if not several else f"{c.name}: {reading(c.summary)}" for c in cmp.candidates]
    headline: list[tuple[str, str]] = []
    if not several:
        s0 = cmp.candidates[0].summary
        a, f = s0.accuracy, s0.flips
        headline = [
            ("accuracy baseline → candidate", f"{pct(a.baseline.point)} → {pct(a.candidate.point)}"),
            ("Δaccuracy [95%]", f"{pct(a.diff.point, signed=True)} {interval(a.diff.low, a.diff.high, signed=True)}"),
            ("flips [95%]", f"{pct(f.rate.rate)} {interval(f.rate.low, f.rate.high)} "
                            f"({f.correct_to_wrong} c→w, {f.wrong_to_correct} w→c)"),
            ("answer changes", f"{pct(s0.answer_changes.rate)} ({s0.answer_changes.count:,}/{s0.answer_changes.n:,})"),
            ("option KL [95%]", f"{sci(s0.option_kl.mean)} "
                                f"{interval(s0.option_kl.mean_ci.low, s0.option_kl.mean_ci.high, 'sci', 3)}"),
            ("items", f"{s0.n_items:,}"),
        ]
    page.head_html = verdict_html(verdicts, kind="mcq", reading=notes, headline=headline)
    page.add("settings", "Run settings", _settings(cmp, view.manifest))
    if several or cmp.floor is not None:
        body = _leaderboard(cmp)
        if several:
            body += _fig_scatter(cmp) + _correlations(cmp)
        page.add("leaderboard", "Leaderboard" if several else "Noise floor", body + _floor(cmp))
    for c in cmp.candidates:
        candidate_sections(page, c, view.per_item.get(c.name), view.texts, view.texts_missing, several=several)
    return page.render()
