"""The shadow page: a `ShadowSummary` (and, when the database is at hand, the worst requests' answers).

Measures and hourly rates are the summary's; the worst-diverging requests' two answers come from
the database rows of those requests (with --hash-only, only their SHA-256 hashes are stored, and
the page shows those).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from servecmp.html import _plots
from servecmp.html._page import Cell, Page, esc, fold, interval, num, pct, pval, settings_list, table, versions
from servecmp.html._verdict import verdict_html

if TYPE_CHECKING:
    from servecmp.gates import Verdict
    from servecmp.shadow.summary import ShadowSummary


def _cell(d: Any, key: str) -> Cell:
    if d is None:
        return Cell("–", None, key)
    if hasattr(d, "rate"):
        if not d.n:
            return Cell("– (n=0)", None, key)
        return Cell(f"{pct(d.rate)} {interval(d.low, d.high)} (n={d.n:,})", d.rate, key)
    if hasattr(d, "low"):
        if not d.n:
            return Cell("– (n=0)", None, key)
        return Cell(f"{num(d.mean, 3)} {interval(d.low, d.high, 'num', 3)} (n={d.n:,})", d.mean, key)
    return Cell(f"{num(d.max, 3)} (n={d.n:,})", d.max, key)


def _excess(e: Any, key: str) -> tuple[Cell, Cell]:
    if e is None:
        return Cell("–", None), Cell("–", numeric=False)
    if not e.n:
        return Cell("– (no pairs)", None), Cell("–", numeric=False)
    is_rate = hasattr(e, "only_candidate")
    text = (f"{pct(e.diff, signed=True)} {interval(e.low, e.high, signed=True)}" if is_rate
            else f"{num(e.diff, 3, True)} {interval(e.low, e.high, 'num', 3, True)}")
    test = e.test
    if e.p_value is None:
        verdict = "no differences to test"
    else:
        verdict = f"{'differs' if e.significant else 'not significant'} (p = {pval(e.p_value)}, {test}, n = {e.n:,})"
    return Cell(text, e.diff, key), Cell(verdict, numeric=False)


def _measures(s: ShadowSummary) -> str:
    rows = []
    for m in s.measures:
        diff, verdict = _excess(m.excess, f"{m.key}.excess")
        rows.append([Cell(m.label, numeric=False), _cell(m.candidate, f"{m.key}.candidate"),
                     _cell(m.secondary, f"{m.key}.secondary"), diff, verdict])
    return table(["measure", "candidate", "noise floor (secondary)", "candidate − floor", "paired test, 5%"], rows,
                 caption="Candidate vs the primary, next to the secondary's disagreement with the primary "
                         "(95% intervals)", sortable=False, numeric_cols=(1, 2, 3))


def _tokens(s: ShadowSummary) -> str:
    """llama.cpp's KL-divergence block over the teacher-forced tokens, candidate beside the floor."""
    from servecmp.shadow.render import BLOCK_LABELS, block_column

    t = s.teacher_forced_tokens
    assert t is not None
    blocks = {"candidate": t.candidate} | ({"secondary": t.secondary} if t.secondary is not None else {})
    columns = {name: block_column(b) for name, b in blocks.items()}
    # The rows whose raw value the page carries (data-v), by llama.cpp label.
    keyed = {"Mean    KLD": "kld_mean", "Mean    Δp": "dp_mean", "RMS Δp": "dp_rms", "Same top p": "same_top"}
    rows = []
    for i, label in enumerate(BLOCK_LABELS):
        row = [Cell(label, numeric=False)]
        for name, b in blocks.items():
            key = keyed.get(label)
            value = getattr(b, key).value if key and b is not None else None
            row.append(Cell(columns[name][i], value, f"teacher_forced_tokens.{name}.{key}" if key else None))
        rows.append(row)
    return table(["llama.cpp label", "candidate", *(["noise floor (secondary)"] if len(blocks) > 1 else [])], rows,
                 caption=f"As llama.cpp's perplexity --kl-divergence prints it (± one standard error). KLD: "
                         f"{t.kld_source}. Δp: {t.dp_token}.", sortable=False, numeric_cols=(1, 2))


def _hourly(s: ShadowSummary) -> str:
    if not s.hourly:
        return "<p class=\"muted\">No comparisons recorded.</p>"
    rows = []
    for h in s.hourly:
        rows.append([Cell(h.hour, h.hour, numeric=False), h.requests,
                     _cell(h.candidate_errors, f"hour.{h.hour}.errors"),
                     _cell(h.candidate_mismatch, f"hour.{h.hour}.mismatch"),
                     _cell(h.secondary_mismatch, f"hour.{h.hour}.floor"),
                     Cell(num(h.candidate_edit_distance.mean, 3), h.candidate_edit_distance.mean),
                     Cell(num(h.candidate_kl_mean.mean, 4), h.candidate_kl_mean.mean)])
    out = table(["hour (UTC)", "requests", "candidate errors", "candidate differs", "floor differs",
                 "cand. edit distance", "cand. KL"], rows, caption="Per hour", numeric_cols=range(1, 7))
    fig, ax = _plots.figure(7.0, 3.4)
    xs = [datetime.strptime(h.hour, "%Y-%m-%d %H:00Z") for h in s.hourly]
    import matplotlib.dates as mdates

    xn = [float(mdates.date2num(x)) for x in xs]
    cm = [h.candidate_mismatch for h in s.hourly]
    _plots.errorbars(ax, xn, [r.rate for r in cm], [r.low for r in cm], [r.high for r in cm], color=_plots.CAND,
                     label="candidate: answer differs")
    if s.has_secondary:
        sm = [h.secondary_mismatch for h in s.hourly]
        shift = 4 / (24 * 60)  # four minutes right (date units are days), so the two series' bars do not overlap
        _plots.errorbars(ax, [x + shift for x in xn], [r.rate if r else None for r in sm],
                         [r.low if r else None for r in sm], [r.high if r else None for r in sm],
                         color=_plots.BASE, label="noise floor: secondary differs")
    ce = [h.candidate_errors for h in s.hourly]
    if any(r.count for r in ce):
        ax.plot(xn, [r.rate for r in ce], "x", color="#b3261e", label="candidate errors")
    ax.xaxis_date()
    locator = mdates.AutoDateLocator(minticks=2, maxticks=8)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    if len(xn) == 1:  # one hour: give the axis an hour either side
        ax.set_xlim(xn[0] - 1 / 24, xn[0] + 1 / 24)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of requests")
    ax.legend(fontsize=8)
    return _plots.embed(fig, "shadow-hourly", "Answer-differs rate per hour, candidate vs the noise floor, with 95% "
                        "Wilson intervals.") + out


def db_label(db: str | Path | None) -> str:
    """How the page names the database: a file's path, or a PostgreSQL URL without its password."""
    if db is None:
        return "–"
    try:
        from servecmp.shadow.store import is_postgres, redact_target
    except ImportError:  # a servecmp whose shadow store knows SQLite only
        return str(db)
    return redact_target(db) if is_postgres(db) else str(db)


def _answers_by_request(db: str | Path | None, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The candidate rows of the given requests, straight from the database (empty if unreadable)."""
    if db is None or not ids:
        return {}
    from servecmp.errors import ServecmpError
    from servecmp.shadow import summary as sh

    try:
        rows = sh.load(db)[0]
    except (ServecmpError, OSError, ValueError, TypeError):
        return {}
    wanted = set(ids)
    return {str(r.get("request_id")): r for r in rows
            if r.get("target") == "candidate" and str(r.get("request_id")) in wanted}


def _worst(s: ShadowSummary, db: str | Path | None) -> str:
    if not s.worst:
        return "<p class=\"muted\">No request diverged (or none was compared).</p>"
    rows = _answers_by_request(db, [w.request_id for w in s.worst])
    out = []
    for w in s.worst:
        r = rows.get(w.request_id, {})
        head = (f"<span class=\"mono\">{esc(w.request_id[:12])}</span> {esc(w.time)} {esc(w.endpoint)}"
                f"{' (stream)' if w.stream else ''}: edit distance "
                f"<span data-metric=\"worst.{esc(w.request_id)}.edit_distance\" data-v=\"{w.edit_distance!r}\">"
                f"{num(w.edit_distance, 3)}</span>, first diff "
                f"{esc(w.first_diff if w.first_diff is not None else '–')},"
                f" KL {num(w.kl_mean, 4)}, top-1 {num(w.top1_agree, 2)} — {esc(w.prompt)}")

        def side(who: str, text: Any, digest: Any) -> str:
            if text:
                return f"<div><h4>{esc(who)}</h4>{fold(str(text), label='answer')}</div>"
            if digest:
                return f"<div><h4>{esc(who)}</h4><p class=\"mono\">sha256:{esc(digest)}</p></div>"
            return f"<div><h4>{esc(who)}</h4><p class=\"muted\">not stored</p></div>"

        prompt = r.get("prompt")
        prompt_html = (fold(str(prompt), label="prompt") if prompt else
                       f"<p class=\"mono\">prompt sha256:{esc(r.get('prompt_sha256', ''))}</p>" if r else "")
        body = (prompt_html + "<div class=\"side\">" + side("primary (baseline)", r.get("primary_answer"),
                                                             r.get("primary_sha256"))
                + side("candidate", r.get("other_answer"), r.get("other_sha256")) + "</div>") if r else (
            "<p class=\"muted\">The database was not read: answers not shown.</p>")
        out.append(f"<details class=\"item\" data-kind=\"worst\" data-request=\"{esc(w.request_id)}\">"
                   f"<summary>{head}</summary>{body}</details>")
    return "".join(out)


def _settings(s: ShadowSummary, db: str | Path | None) -> str:
    pairs: list[tuple[str, object]] = [("database", db_label(db if db is not None else s.database)),
                                       ("runs", len(s.runs))]
    for r in s.runs:
        models = {k: v for k, v in r.settings.items() if "model" in k and isinstance(v, str)}
        extra = "; ".join(f"{k} {v}" for k, v in models.items())
        pairs.append((f"run {r.run_id[:8]} ({r.mode})",
                      f"started {r.started_at}; primary {r.baseline_url}; candidate {r.candidate_url}"
                      + (f"; secondary {r.secondary_url}" if r.secondary_url else "")
                      + f"; sample rate {r.sample_rate:g}" + ("; hash-only" if r.hash_only else "")
                      + (f"; {extra}" if extra else "")))
    pairs += [("span", f"{s.first or '–'} → {s.last or '–'}"), ("requests compared", f"{s.compared_requests:,}"),
              ("noise floor", "secondary replica" if s.has_secondary else "none (no --secondary)"),
              ("statistics", f"{s.settings.confidence:.0%} intervals, {s.settings.n_boot:,} bootstrap resamples, "
                             f"paired tests at {s.settings.alpha:g}")]
    for name, value in s.counters.model_dump().items():
        if value:
            pairs.append((name.replace("_", " "), f"{value:,}"))
    if s.candidate_errors:
        pairs.append(("candidate errors", ", ".join(f"{k}: {v}" for k, v in s.candidate_errors.items())))
    if s.teacher_forced_errors:
        pairs.append(("teacher-forced skipped", ", ".join(f"{k}: {v}" for k, v in s.teacher_forced_errors.items())))
    return settings_list(pairs + versions())


def render_shadow(summary: ShadowSummary, *, db: str | Path | None = None, verdicts: Sequence[Verdict] = ()) -> str:
    s = summary
    label = db_label(db)
    name = Path(label).name if db is not None and "://" not in label else (label if db is not None else "shadow")
    page = Page(title=f"servecmp shadow — {name}",
                subtitle=f"{s.compared_requests:,} requests compared, {s.first or '–'} → {s.last or '–'}")
    mismatch = s.measure("mismatch")
    cand = mismatch.candidate
    reading = [f"The candidate's answer differed from the primary's on {pct(getattr(cand, 'rate', None))} of "
               f"{getattr(cand, 'n', 0):,} requests"
               + (f" (noise floor: {pct(getattr(mismatch.secondary, 'rate', None))})." if s.has_secondary else
                  "; no secondary, so no noise floor.")]
    headline = [("requests compared", f"{s.compared_requests:,}"),
                ("answer differs", _cell(mismatch.candidate, "").text)]
    if s.has_secondary:
        headline.append(("noise floor", _cell(mismatch.secondary, "").text))
    kl = s.measure("kl_mean")
    if getattr(kl.candidate, "n", 0):
        headline.append(("teacher-forced KL / token", _cell(kl.candidate, "").text))
    page.head_html = verdict_html(verdicts, kind="shadow", reading=reading, headline=headline)
    page.add("settings", "Settings", _settings(s, db))
    page.add("measures", "Measures against the noise floor", _measures(s))
    if getattr(s, "teacher_forced_tokens", None) is not None:
        page.add("tokens", "Teacher-forced tokens, llama.cpp's KL-divergence block", _tokens(s))
    page.add("hourly", "Over time", _hourly(s))
    page.add("worst", "Worst-diverging requests", _worst(s, db))
    return page.render()
