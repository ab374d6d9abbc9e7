"""Printing a shadow summary in the terminal (`servecmp shadow report`, `servecmp report DB`); the
summary itself, and what its numbers mean, is `servecmp.shadow.summary`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from servecmp.metrics.kl_report import DP_PERCENTILES, KLD_PERCENTILES, MeanError
from servecmp.shadow.store import COUNTER_NAMES, redact_target
from servecmp.shadow.summary import (
    Largest,
    Mean,
    MeanExcess,
    Rate,
    RateExcess,
    ShadowSummary,
    TeacherForcedTokens,
    TokenBlock,
)


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _cell(d: Rate | Mean | Largest | None) -> str:
    if d is None:
        return "—"
    if isinstance(d, Rate):
        if d.n == 0:
            return "— (n=0)"
        return f"{_pct(d.rate)} [{_pct(d.low)}, {_pct(d.high)}] (n={d.n})"
    if isinstance(d, Mean):
        if d.n == 0:
            return "— (n=0)"
        return f"{_num(d.mean)} [{_num(d.low)}, {_num(d.high)}] (n={d.n})"
    return f"{_num(d.max)} (n={d.n})"


def _excess(e: RateExcess | MeanExcess | None) -> tuple[str, str]:
    if e is None:
        return "—", "—"
    if e.n == 0:
        return "— (no pairs)", "—"
    fmt = _pct if isinstance(e, RateExcess) else _num
    diff = f"{fmt(e.diff)} [{fmt(e.low)}, {fmt(e.high)}]"
    p = e.p_value
    test = e.test.split()[-1]  # "McNemar" / "signed-rank": the full name is in --json
    if p is None:
        verdict = "no differences to test"
    elif e.significant:
        verdict = f"[bold red]differs[/] (p={p:.2g}, {test})"
    else:
        verdict = f"not significant (p={p:.2g}, {test})"
    return diff, verdict


def _share(r: Rate | None) -> str:
    if r is None:
        return "—"
    return "—" if r.n == 0 else f"{_pct(r.rate)} ({r.count}/{r.n})"


def _counts(d: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in d.items())


def _distinct(values: Sequence[str | None]) -> str:
    return ", ".join(dict.fromkeys(v for v in values if v)) or "—"


def render(summary: ShadowSummary, console: Console, db: Path | str | None = None) -> None:
    where = redact_target(db) if db is not None else summary.database
    # escape(): a path or URL may hold brackets, which rich would read as markup.
    head = Table(title=f"Shadow traffic{f' — {escape(str(where))}' if where else ''}", show_header=False)
    head.add_column("what")
    head.add_column("value")
    head.add_row("runs", str(len(summary.runs)))
    if summary.runs:
        head.add_row("baseline (primary)", escape(_distinct([r.baseline_url for r in summary.runs])))
        head.add_row("candidate", escape(_distinct([r.candidate_url for r in summary.runs])))
        if any(r.secondary_url for r in summary.runs):
            head.add_row("secondary", escape(_distinct([r.secondary_url for r in summary.runs])))
    head.add_row("span", f"{summary.first or '—'} → {summary.last or '—'}")
    head.add_row("requests compared", str(summary.compared_requests))
    head.add_row("noise floor", "secondary replica" if summary.has_secondary else "none (no --secondary)")
    for name in COUNTER_NAMES:
        value = getattr(summary.counters, name)
        if value:
            head.add_row(name.replace("_", " "), str(value))
    if summary.candidate_errors:
        head.add_row("candidate errors", _counts(summary.candidate_errors))
    if summary.teacher_forced_errors:
        head.add_row("teacher-forced skipped", _counts(summary.teacher_forced_errors))
    console.print(head)

    t = Table(title="Candidate vs the primary, above the secondary's noise floor (95% intervals)")
    for col in ("measure", "candidate", "noise floor (secondary)", "candidate − floor", "paired test, 5%"):
        t.add_column(col)
    for m in summary.measures:
        diff, verdict = _excess(m.excess)
        t.add_row(m.label, _cell(m.candidate), _cell(m.secondary), diff, verdict)
    console.print(t)

    if summary.worst:
        w = Table(title="Worst-diverging requests (candidate, by edit distance then KL)")
        for col in ("time", "request", "endpoint", "first diff", "edit dist.", "len. ratio", "KL", "top-1",
                    "prompt"):
            w.add_column(col)
        for r in summary.worst:
            w.add_row(
                r.time, r.request_id[:8], r.endpoint + (" (stream)" if r.stream else ""),
                str(r.first_diff) if r.first_diff is not None else "—", _num(r.edit_distance),
                _num(r.length_ratio, 2), _num(r.kl_mean, 4), _num(r.top1_agree, 2), escape(r.prompt),
            )
        console.print(w)

    if summary.teacher_forced_tokens is not None:
        render_token_blocks(summary.teacher_forced_tokens, console)

    if summary.hourly:
        h = Table(title="Per hour (UTC)")
        for col in ("hour", "requests", "cand. errors", "cand. differs", "floor differs", "cand. edit dist.",
                    "cand. KL"):
            h.add_column(col)
        for hr in summary.hourly:
            h.add_row(hr.hour, str(hr.requests), _share(hr.candidate_errors), _share(hr.candidate_mismatch),
                      _share(hr.secondary_mismatch), _num(hr.candidate_edit_distance.mean),
                      _num(hr.candidate_kl_mean.mean, 4))
        console.print(h)


def _pm(m: MeanError, scale: float, spec: str, unit: str = "") -> str:
    """llama.cpp's "value ± error" (the numbers in its formats)."""
    if m.value is None:
        return "—"
    err = "—" if m.error is None else format(scale * m.error, spec)
    return f"{format(scale * m.value, spec)} ± {err}{unit}"


def block_column(b: TokenBlock | None) -> list[str]:
    """One target's values, in the order of `BLOCK_LABELS`."""
    if b is None:
        return ["—"] * len(BLOCK_LABELS)

    def pct(x: float | None) -> str:
        return "—" if x is None else f"{100 * x:.3f}%"

    out = [f"{b.n} ({b.n_requests} requests)", _pm(b.kld_mean, 1.0, ".6f")]
    out += ["—" if b.kld_percentiles.get(k) is None else f"{b.kld_percentiles[k]:.6f}" for k, _, _ in KLD_PERCENTILES]
    out.append(_pm(b.dp_mean, 100.0, ".3f", " %"))
    out += [pct(b.dp_percentiles.get(k)) for k, _, _ in DP_PERCENTILES]
    out.append(_pm(b.dp_rms, 100.0, ".3f", " %"))
    out.append(_pm(b.same_top, 100.0, ".3f", " %") + f" ({b.same_top_count}/{b.n})")
    return out


#: llama.cpp's labels, top to bottom, after a first row with the number of tokens.
BLOCK_LABELS = ("tokens", "Mean    KLD", *(label for _, _, label in KLD_PERCENTILES), "Mean    Δp",
                 *(label for _, _, label in DP_PERCENTILES), "RMS Δp", "Same top p")


def render_token_blocks(t: TeacherForcedTokens, console: Console) -> None:
    """llama.cpp's ``perplexity --kl-divergence`` block, with its labels, per target side by side:
    the candidate's numbers beside the noise floor's say how much of them quantization explains."""
    table = Table(title="Teacher-forced tokens, as llama.cpp's KL-divergence report (± one standard error)")
    table.add_column("llama.cpp label")
    table.add_column("candidate", justify="right")
    columns = [block_column(t.candidate)]
    if t.secondary is not None:
        table.add_column("noise floor (secondary)", justify="right")
        columns.append(block_column(t.secondary))
    for i, label in enumerate(BLOCK_LABELS):
        table.add_row(label, *(c[i] for c in columns))
    skipped = sum(b.skipped_requests for b in (t.candidate, t.secondary) if b is not None)
    table.caption = (f"KLD: {t.kld_source}. Δp: {t.dp_token}. Same top p: the two most likely tokens agree."
                     + (f" {skipped} requests' per-token values unreadable (left out)." if skipped else ""))
    console.print(table)
