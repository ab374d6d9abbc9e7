"""Rich tables for an MT-Bench summary (the --json output is the summary itself)."""

from __future__ import annotations

from rich.console import Console, Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from servecmp.mtbench.report import (
    Delta,
    JudgmentCounts,
    MeanScore,
    MtBenchComparison,
    MtBenchSummary,
    PairwiseSummary,
)

ANSWER_PREVIEW_CHARS = 700


def _score(m: MeanScore | None) -> str:
    return "—" if m is None or m.mean is None else f"{m.mean:.2f}"


def _signed(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{x:+.{digits}f}"


def _delta(d: Delta) -> str:
    if d.point is None:
        return "— (no question scored by both)"
    return f"{d.point:+.2f} [{d.low:+.2f}, {d.high:+.2f}] (n={d.n})"


def _p(p: float | None) -> str:
    return "—" if p is None else (f"{p:.3g}" if p >= 1e-4 else f"{p:.1e}")


def _diff(a: MeanScore | None, b: MeanScore | None) -> str:
    if a is None or b is None or a.mean is None or b.mean is None:
        return "—"
    return _signed(b.mean - a.mean)


def scores_table(s: MtBenchSummary) -> Table:
    base, cand = s.endpoints["baseline"], s.endpoints["candidate"]
    t = Table(
        title=f"MT-Bench single-answer grading (judge: {escape(s.judge_model)}, 1-10)", title_justify="left"
    )
    t.add_column("")
    t.add_column(f"baseline\n{escape(base.model)}", justify="right")
    t.add_column(f"candidate\n{escape(cand.model)}", justify="right")
    t.add_column("Δ", justify="right")
    t.add_column("n (base/cand)", justify="right", style="dim")
    t.add_row("MT-Bench score", _score(base.score), _score(cand.score), _diff(base.score, cand.score),
              f"{base.score.n}/{cand.score.n}", style="bold")  # fmt: skip
    for turn in sorted(set(base.turns) | set(cand.turns)):
        b, c = base.turns.get(turn), cand.turns.get(turn)
        t.add_row(f"turn {turn}", _score(b), _score(c), _diff(b, c), f"{b.n if b else 0}/{c.n if c else 0}")
    t.add_section()
    for cat in list(dict.fromkeys([*base.categories, *cand.categories])):
        b, c = base.categories.get(cat), cand.categories.get(cat)
        t.add_row(escape(cat), _score(b), _score(c), _diff(b, c), f"{b.n if b else 0}/{c.n if c else 0}")
    return t


def stats_lines(s: MtBenchSummary) -> Text:
    lines = [
        f"Δ candidate − baseline, per question (mean of its turns), 95% paired bootstrap: {_delta(s.delta)}"
    ]
    for turn, d in s.delta_by_turn.items():
        lines.append(f"  turn {turn}: {_delta(d)}")
    w = s.wilcoxon
    lines.append(
        f"Wilcoxon signed-rank (two-sided) on per-question scores: p = {_p(w.pvalue)} "
        f"(n = {w.n} questions, {w.n_nonzero} with a nonzero difference)"
    )
    return Text("\n".join(lines))


def _pair_row(t: Table, label: str, p: PairwiseSummary) -> None:
    t.add_row(
        label,
        str(p.wins),
        str(p.ties),
        str(p.losses),
        "—" if p.win_rate_adjusted is None else f"{p.win_rate_adjusted:.3f}",
        "—" if p.inconsistency_rate is None else f"{p.inconsistency_rate:.1%} ({p.inconsistent}/{p.n})",
        str(p.excluded),
    )


def pairwise_table(s: MtBenchSummary) -> Table | None:
    if s.pairwise is None:
        return None
    t = Table(title="Pairwise, candidate vs baseline, judged in both orders (order-dependent verdict = tie)",
              title_justify="left")  # fmt: skip
    for col in ("", "wins", "ties", "losses", "win rate (tie=½)", "position-inconsistent", "left out"):
        t.add_column(col, justify="left" if not col else "right")
    _pair_row(t, "all", s.pairwise)
    for turn, p in s.pairwise_by_turn.items():
        _pair_row(t, f"turn {turn}", p)
    return t


def _counts(label: str, c: JudgmentCounts) -> str:
    parts = [f"{c.ok}/{c.expected} parsed"]
    if c.unparseable:
        parts.append(f"{c.unparseable} unparseable")
    if c.out_of_range:
        parts.append(f"{c.out_of_range} out of range (1-10)")
    if c.errors:
        parts.append(f"{c.errors} errors")
    if c.missing:
        parts.append(f"{c.missing} missing")
    return f"{label}: " + ", ".join(parts)


def judgment_lines(s: MtBenchSummary) -> Text:
    lines = [_counts("single judgments", s.single_judgments)]
    if s.pair_judgments is not None:
        lines.append(_counts("pairwise games", s.pair_judgments))
    for example in s.unparseable_examples:
        lines.append(f"  unreadable judgment: {example[:160]!r}")
    if s.missing_references:
        ids = ", ".join(str(q) for q in s.missing_references)
        lines.append(f"graded without a reference answer (none found): {ids}")
    if not s.complete:
        lines.append("[run incomplete: resume it to fill the missing or failed judgments]")
    return Text("\n".join(lines))


def _preview(text: str) -> str:
    return text if len(text) <= ANSWER_PREVIEW_CHARS else text[:ANSWER_PREVIEW_CHARS] + " […]"


def drops_tables(s: MtBenchSummary) -> list[Table]:
    tables = []
    for d in s.largest_drops:
        t = Table(
            title=f"Question {escape(str(d.question_id))} ({escape(d.category)}): "
            f"{d.baseline_score:.1f} → {d.candidate_score:.1f} ({d.diff:+.1f})",
            title_justify="left",
            show_lines=True,
        )
        t.add_column("turn", justify="right", style="dim")
        t.add_column("baseline answer", ratio=1, overflow="fold")
        t.add_column("candidate answer", ratio=1, overflow="fold")
        for i, question in enumerate(d.questions):
            t.add_row("", Text(f"Q{i + 1}: {_preview(question)}", style="italic"), "")
            base = d.baseline_answers[i] if i < len(d.baseline_answers) else ""
            cand = d.candidate_answers[i] if i < len(d.candidate_answers) else ""
            t.add_row(str(i + 1), Text(_preview(base)), Text(_preview(cand)))
        tables.append(t)
    return tables


DEMO_WARNING = (
    "The judge was the baseline model itself (offline demo judge). A small model's ratings only exercise "
    "the pipeline: they say nothing about answer quality. Use a GPT-4-class judge for real scores."
)


def render(console: Console, s: MtBenchSummary, *, show: int) -> None:
    parts: list[Table | Text] = []
    if s.judge_is_baseline:
        parts.append(Text(DEMO_WARNING, style="bold yellow"))
    if s.mode in ("single", "both"):
        parts += [scores_table(s), stats_lines(s)]
    pair = pairwise_table(s)
    if pair is not None:
        parts.append(pair)
    parts.append(judgment_lines(s))
    console.print(Group(*parts))
    if show > 0 and s.mode in ("single", "both"):
        drops = drops_tables(s)[:show]
        if drops:
            console.print(f"\nLargest drops (up to {show}):")
            for t in drops:
                console.print(t)
        else:
            console.print("\nNo question scored lower on the candidate.")


def leaderboard_table(c: MtBenchComparison) -> Table:
    base = c.baseline
    t = Table(
        title=f"MT-Bench: {len(c.candidates)} candidates against baseline {escape(base.model)} "
        f"(judge: {escape(c.judge_model)})",
        title_justify="left",
    )
    t.add_column("#", justify="right", style="dim")
    t.add_column("candidate")
    t.add_column("model")
    t.add_column("MT-Bench", justify="right")
    t.add_column("Δ MT-Bench [95% CI]", justify="right")
    t.add_column("pairwise W/T/L", justify="right")
    t.add_column("loss share", justify="right")
    scores = {r.endpoint.name: r.summary.endpoints["candidate"].score for r in c.candidates}
    for i, row in enumerate(c.leaderboard, 1):
        wtl = "—" if row.wins is None else f"{row.wins}/{row.ties}/{row.losses}"
        share = "—" if row.loss_share is None else f"{row.loss_share:.1%}"
        t.add_row(str(i), escape(row.name), escape(row.model), _score(scores.get(row.name)), _delta(row.delta),
                  wtl, share)  # fmt: skip
    base_score = c.candidates[0].summary.endpoints["baseline"].score
    t.caption = f"baseline {escape(base.model)}: MT-Bench {_score(base_score)} (answers generated once)"
    return t


def render_comparison(console: Console, c: MtBenchComparison, *, show: int) -> None:
    """The leaderboard, then each candidate's full report against the baseline."""
    if c.judge_is_baseline:
        console.print(Text(DEMO_WARNING, style="bold yellow"))
    console.print(leaderboard_table(c))
    for r in c.candidates:
        console.print(f"\n[bold]candidate {escape(r.endpoint.name)}[/bold] ({escape(r.endpoint.model)} at "
                      f"{escape(r.endpoint.url)}, {escape(r.endpoint.answer_file)})")
        render(console, r.summary.model_copy(update={"judge_is_baseline": False}), show=show)


def render_any(console: Console, s: MtBenchSummary | MtBenchComparison, *, show: int) -> None:
    """`render` for a one-candidate run, `render_comparison` for several candidates."""
    if isinstance(s, MtBenchComparison):
        render_comparison(console, s, show=show)
    else:
        render(console, s, show=show)
