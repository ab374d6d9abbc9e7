"""The MT-Bench page: `MtBenchSummary` (one candidate) or `MtBenchComparison` (several).

Scores, Δ, the Wilcoxon test, pairwise counts and judge counts are the summary's. With the run
directory the page adds what the summary does not hold: per-question and per-category Δ (the
summary's own per-question scores, `servecmp.mtbench.report.per_question_scores`, with the same
paired bootstrap), the judge's explanations beside each of the largest drops, every pairwise game
the candidate lost with the judge's explanations of both orders, and every judgment that could not
be parsed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from servecmp.html import _plots
from servecmp.html._page import Cell, Page, esc, fold, num, pval, settings_list, table, versions
from servecmp.html._verdict import verdict_html

if TYPE_CHECKING:
    from servecmp.gates import Verdict
    from servecmp.mtbench.manifest import MtBenchManifest
    from servecmp.mtbench.questions import MtQuestion, QuestionId
    from servecmp.mtbench.records import PairJudgment, SingleJudgment
    from servecmp.mtbench.report import Delta, MtBenchComparison, MtBenchSummary


@dataclass
class RunFiles:
    """What the run directory adds to a summary (None/empty when it cannot be read)."""

    manifest: MtBenchManifest | None
    questions: list[MtQuestion]
    single: Mapping[tuple[QuestionId, str, int], SingleJudgment]
    #: Pairwise judgments, every candidate's (model_2 tells whose).
    pairs: Sequence[PairJudgment] = ()


def read_run(run_dir: Path | None) -> RunFiles:
    if run_dir is None:
        return RunFiles(None, [], {})
    from servecmp.errors import ServecmpError
    from servecmp.mtbench import questions as qmod
    from servecmp.mtbench.manifest import read_manifest
    from servecmp.mtbench.records import PairJudgment
    from servecmp.mtbench.rundir import MtRunPaths, load_single
    from servecmp.runstore import load_records

    paths = MtRunPaths(run_dir)
    try:
        manifest = read_manifest(run_dir)
        questions = qmod.load_questions(paths.questions)
        single = load_single(paths.single(manifest.judge.model))
        pair_path = paths.pair(manifest.judge.model)
        pairs = list(load_records(pair_path, PairJudgment)) if pair_path.exists() else []
    except (ServecmpError, OSError):
        return RunFiles(None, [], {})
    return RunFiles(manifest, list(questions), single, pairs)


def _delta_text(d: Delta) -> str:
    if d.point is None:
        return "– (no question scored by both)"
    return f"{d.point:+.2f} [{num(d.low, 2, True)}, {num(d.high, 2, True)}] (n={d.n})"


def _score_cell(m: Any, metric: str) -> Cell:
    if m is None or m.mean is None:
        return Cell("–", None, metric)
    return Cell(f"{m.mean:.2f}", m.mean, metric)


def _scores_table(s: MtBenchSummary, p: str) -> str:
    base, cand = s.endpoints["baseline"], s.endpoints["candidate"]
    rows: list[list[Any]] = []

    def row(label: str, b: Any, c: Any, key: str) -> list[Any]:
        d = None if b is None or c is None or b.mean is None or c.mean is None else c.mean - b.mean
        return [Cell(label, numeric=False), _score_cell(b, f"{p}baseline.{key}"), _score_cell(c, f"{p}candidate.{key}"),
                Cell(num(d, 2, True), d), Cell(f"{b.n if b else 0}/{c.n if c else 0}", b.n if b else 0)]

    rows.append(row("MT-Bench score", base.score, cand.score, "score"))
    for t in sorted(set(base.turns) | set(cand.turns)):
        rows.append(row(f"turn {t}", base.turns.get(t), cand.turns.get(t), f"turn.{t}"))
    for cat in dict.fromkeys([*base.categories, *cand.categories]):
        rows.append(row(cat, base.categories.get(cat), cand.categories.get(cat), f"category.{cat}"))
    return table(["", f"baseline {base.model}", f"candidate {cand.model}", "Δ", "n (base/cand)"], rows,
                 caption=f"Single-answer grading, 1-10 (judge: {s.judge_model})", numeric_cols=(1, 2, 3, 4))


def _stats(s: MtBenchSummary, p: str) -> str:
    rows = [[Cell("Δ candidate − baseline (per question, mean of its turns)", numeric=False),
             Cell(_delta_text(s.delta), s.delta.point, f"{p}delta")]]
    for t, d in s.delta_by_turn.items():
        rows.append([Cell(f"  turn {t}", numeric=False), Cell(_delta_text(d), d.point, f"{p}delta.turn.{t}")])
    w = s.wilcoxon
    rows.append([Cell("Wilcoxon signed-rank p (two-sided)", numeric=False),
                 Cell(f"{pval(w.pvalue)} (n = {w.n}, {w.n_nonzero} nonzero)", w.pvalue, f"{p}wilcoxon.pvalue")])
    pw = s.pairwise
    if pw is not None:
        rows.append([Cell("pairwise win / tie / loss (candidate)", numeric=False),
                     Cell(f"{pw.wins} / {pw.ties} / {pw.losses} of {pw.n}", pw.losses, f"{p}pairwise.losses")])
        rows.append([Cell("position-inconsistent pairs (counted as ties)", numeric=False),
                     Cell(f"{pw.inconsistent} ({num(pw.inconsistency_rate, 3)})", pw.inconsistent,
                          f"{p}pairwise.inconsistent")])
        if pw.excluded:
            rows.append([Cell("pairs left out (error or unreadable game)", numeric=False),
                         Cell(str(pw.excluded), pw.excluded)])
    return table(["statistic", "value [95% interval]"], rows, caption="Differences (95% paired bootstrap)",
                 sortable=False, numeric_cols=(1,))


def _judge_counts(s: MtBenchSummary, p: str, run: RunFiles) -> str:
    rows = []
    for label, c in (("single grading", s.single_judgments), ("pairwise games", s.pair_judgments)):
        if c is None:
            continue
        rows.append([Cell(label, numeric=False), c.expected, c.ok,
                     Cell(str(c.unparseable), c.unparseable, f"{p}{label.split()[0]}.unparseable"), c.out_of_range,
                     c.errors, c.missing])
    out = table(["judgments", "expected", "ok", "unparseable", "out of range", "errors", "missing"], rows,
                caption="Judge parse failures and errors (kept and counted, never replaced by a number)",
                sortable=False, numeric_cols=range(1, 7))
    bad = [j for j in run.single.values() if j.status in ("unparseable", "out_of_range", "error")]
    if bad:
        items = "".join(
            f"<details><summary>question {esc(j.question_id)} turn {j.turn}, {esc(j.model)}: {esc(j.status)}"
            f"</summary>{fold(j.judgment or j.error or '', label='judgment')}</details>" for j in bad)
        out += f"<h3>Unreadable single judgments ({len(bad)})</h3>{items}"
    elif s.unparseable_examples:
        out += "<h3>Unreadable judgments (examples)</h3>" + "".join(fold(x) for x in s.unparseable_examples)
    if s.missing_references:
        out += (f"<p class=\"note\">Graded without a reference answer: questions "
                f"{esc(', '.join(str(q) for q in s.missing_references))}.</p>")
    return out


def _radar(s: MtBenchSummary, name: str) -> str:
    """FastChat's radar: per-category score of both endpoints."""
    base, cand = s.endpoints["baseline"], s.endpoints["candidate"]
    cats = [c for c in dict.fromkeys([*base.categories, *cand.categories])]
    if len(cats) < 3:
        return ""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0, 4.4), dpi=100)
    ax = fig.add_subplot(1, 1, 1, projection="polar")
    angles = [2 * math.pi * i / len(cats) for i in range(len(cats))]
    for label, e, color in (("baseline", base, _plots.BASE), ("candidate", cand, _plots.CAND)):
        vals: list[float] = []
        for c in cats:
            m = e.categories.get(c)
            vals.append(m.mean if m is not None and m.mean is not None else 0.0)
        ax.plot([*angles, angles[0]], [*vals, vals[0]], color=color, label=f"{label} {e.model}")
        ax.fill([*angles, angles[0]], [*vals, vals[0]], color=color, alpha=0.12)
    ax.set_xticks(angles)
    ax.set_xticklabels(cats, fontsize=8)
    ax.set_ylim(0, 10)
    ax.legend(fontsize=7, loc="upper right", bbox_to_anchor=(1.25, 1.12))
    return _plots.embed(fig, f"{name}-radar", "MT-Bench score per category, both endpoints (FastChat's radar).")


def _per_question(s: MtBenchSummary, run: RunFiles, cand_stem: str, base_stem: str, name: str, p: str) -> str:
    from servecmp.mtbench.report import paired_delta, per_question_scores

    if not run.questions:
        return ""
    base = per_question_scores(run.questions, run.single, base_stem)
    cand = per_question_scores(run.questions, run.single, cand_stem)
    common = [q for q in run.questions if q.question_id in base and q.question_id in cand]
    if not common:
        return ""
    # Per category: the same paired bootstrap as the summary's Δ, on that category's questions.
    cat_rows = []
    cats = list(dict.fromkeys(q.category for q in common))
    deltas = []
    for cat in cats:
        ids = [q.question_id for q in common if q.category == cat]
        d = paired_delta({i: base[i] for i in ids}, {i: cand[i] for i in ids})
        deltas.append(d)
        cat_rows.append([Cell(cat, numeric=False), d.n, Cell(_delta_text(d), d.point, f"{p}category_delta.{cat}")])
    fig, ax = _plots.figure(6.4, 3.4)
    _plots.errorbars(ax, list(range(len(cats))), [d.point for d in deltas], [d.low for d in deltas],
                     [d.high for d in deltas], color=_plots.CAND)
    ax.axhline(0, color="#888888", linewidth=0.8)
    ax.set_xticks(range(len(cats)))
    ax.set_xticklabels(cats, rotation=30, fontsize=8)
    ax.set_ylabel("Δ score (candidate − baseline)")
    cat_fig = _plots.embed(fig, f"{name}-catdelta", "Δ per category with 95% paired bootstrap intervals.")

    diffs = sorted(((cand[q.question_id] - base[q.question_id], q) for q in common), key=lambda t: t[0])
    fig2, ax2 = _plots.figure(6.4, 3.4)
    ys = [d for d, _ in diffs]
    ax2.bar(range(len(ys)), ys, color=[_plots.CAND if y < 0 else "#1b9e77" for y in ys])
    dl = s.delta
    if dl.point is not None and dl.low is not None and dl.high is not None:
        ax2.axhspan(dl.low, dl.high, color="#7570b3", alpha=0.18, label=f"mean Δ 95% interval (n={dl.n})")
        ax2.axhline(dl.point, color="#7570b3", linewidth=1.2)
        ax2.legend(fontsize=8)
    ax2.axhline(0, color="#888888", linewidth=0.8)
    ax2.set_xlabel("questions, sorted by Δ")
    ax2.set_ylabel("Δ score")
    q_fig = _plots.embed(fig2, f"{name}-qdelta", "Per-question Δ (mean of its turns), with the mean Δ and its 95% "
                         "interval.")
    q_rows = [[Cell(str(q.question_id), str(q.question_id), numeric=False), Cell(q.category, numeric=False),
               Cell(f"{base[q.question_id]:.2f}", base[q.question_id]), Cell(f"{cand[q.question_id]:.2f}",
                                                                            cand[q.question_id]),
               Cell(f"{d:+.2f}", d, f"{p}question_delta.{q.question_id}"),
               Cell(" ".join(q.turns[0].split())[:140], numeric=False)] for d, q in diffs]
    return ('<div class="figs">' + cat_fig + q_fig + "</div>"
            + table(["category", "n", "Δ [95% interval]"], cat_rows, caption="Δ per category", numeric_cols=(1, 2))
            + "<details><summary>Every question's Δ (sortable)</summary>"
            + table(["question", "category", "baseline", "candidate", "Δ", "first turn"], q_rows,
                    numeric_cols=(2, 3, 4)) + "</details>")


def _drops(s: MtBenchSummary, run: RunFiles, base_stem: str, cand_stem: str) -> str:
    if not s.largest_drops:
        return "<p class=\"muted\">No question scored lower for the candidate.</p>"
    out = []
    for d in s.largest_drops:
        turns = []
        for t, q in enumerate(d.questions, start=1):
            def side(who: str, answers: list[str], stem: str, t: int = t, qid: QuestionId = d.question_id) -> str:
                ans = answers[t - 1] if t - 1 < len(answers) else ""
                j = run.single.get((qid, stem, t))
                score = "–" if j is None or j.score is None else f"{j.score:g}"
                judged = fold(j.judgment, label="judge's explanation") if j is not None else ""
                return (f"<div><h4>{esc(who)} — rated {esc(score)}</h4>{fold(ans, label='answer')}"
                        f"<p class=\"muted\">Judge:</p>{judged}</div>")
            turns.append(f"<h4>Turn {t}</h4>{fold(q, label='question')}<div class=\"side\">"
                         f"{side('baseline', d.baseline_answers, base_stem)}"
                         f"{side('candidate', d.candidate_answers, cand_stem)}</div>")
        out.append(f"<details class=\"item\" data-kind=\"drop\"><summary>question {esc(d.question_id)} "
                   f"({esc(d.category)}): {d.baseline_score:.2f} → {d.candidate_score:.2f} "
                   f"(<span data-metric=\"drop.{esc(d.question_id)}\" data-v=\"{d.diff!r}\">{d.diff:+.2f}</span>)"
                   f"</summary>{''.join(turns)}</details>")
    return "".join(out)


def _lost_games(s: MtBenchSummary, run: RunFiles, cand_stem: str) -> str:
    """Every pairwise game the candidate lost (the summary's `pairwise.losses`), with both orders'
    explanations: the judge saw the baseline first in game 1 and the candidate first in game 2."""
    from servecmp.mtbench.report import pair_outcome

    if s.pairwise is None or not run.pairs:
        return ""
    lost = [p for p in run.pairs if p.model_2 == cand_stem and (o := pair_outcome(p)) is not None
            and o.winner == "model_1"]
    if not lost:
        return "<p class=\"muted\">The candidate lost no pairwise game.</p>"
    texts = {q.question_id: q.turns for q in run.questions}
    out = [f"<p>{len(lost)} of {s.pairwise.n} games lost (a loss: both orders preferred the baseline).</p>"]
    for p in sorted(lost, key=lambda p: (str(p.question_id), p.turn)):
        turns = texts.get(p.question_id, [])
        question = turns[p.turn - 1] if 0 < p.turn <= len(turns) else ""
        games = "".join(
            f"<div><h4>{esc(title)}</h4>{fold(judgment, label='judge explanation')}</div>"
            for title, judgment in (("game 1: baseline shown first", p.g1_judgment),
                                    ("game 2: candidate shown first", p.g2_judgment)))
        out.append(f"<details class=\"item\" data-kind=\"lost-game\"><summary>question {esc(p.question_id)} "
                   f"({esc(p.category)}), turn {p.turn}</summary>{fold(question, label='question')}"
                   f"<div class=\"side\">{games}</div></details>")
    return "".join(out)


def _stems(run: RunFiles, cand_model: str) -> tuple[str, str]:
    """Answer-file stems of the baseline and of the candidate serving ``cand_model``."""
    m = run.manifest
    if m is None:
        return "", ""
    base = m.endpoint("baseline").answer_file
    for e in m.candidates:
        if e.model == cand_model:
            return base, e.answer_file
    return base, m.candidates[0].answer_file


def _settings(m: MtBenchManifest | None, first: MtBenchSummary, n_candidates: int) -> str:
    pairs: list[tuple[str, object]] = []
    if m is not None:
        for e in m.endpoints:
            key = f", key from ${e.api_key_env}" if e.api_key_env else ""
            name = e.name or "candidate"
            who = "baseline" if e.role == "baseline" else ("candidate" if name == "candidate" else f"candidate {name}")
            pairs.append((who, f"{e.model} at {e.base_url}{key}"))
        jk = f", key from ${m.judge.api_key_env}" if getattr(m.judge, "api_key_env", None) else ""
        pairs += [("judge", f"{m.judge.model} at {m.judge_base_url}{jk}"), ("mode", m.mode),
                  ("questions", f"{m.n_items} ({m.source})"), ("categories", ", ".join(m.categories or []) or "all"),
                  ("references", m.references), ("max tokens", m.max_tokens),
                  ("question fingerprint", m.task_fingerprint), ("started", m.started_at),
                  ("finished", m.finished_at or "not finished"), ("run made by", f"servecmp {m.servecmp_version}")]
    else:
        pairs += [("judge", f"{first.judge_model} at {first.judge_url}"), ("mode", first.mode),
                  ("questions", first.n_questions), ("candidates", n_candidates)]
    if first.judge_is_baseline:
        pairs.append(("note", "the baseline judged itself (offline demo): the scores only exercise the pipeline"))
    if not first.complete:
        pairs.append(("complete", "no: judgments are missing"))
    return settings_list(pairs + versions())


def candidate_sections(page: Page, s: MtBenchSummary, run: RunFiles, *, name: str, several: bool) -> None:
    label = f" — {name}" if several else ""
    p = f"{name}:" if several else ""
    slug = "".join(ch if ch.isalnum() else "-" for ch in name)
    base_stem, cand_stem = _stems(run, s.endpoints["candidate"].model)
    page.add(f"{slug}-scores", f"Scores{label}", '<div class="figs">' + _scores_table(s, p) + _radar(s, slug)
             + "</div>" + _stats(s, p))
    per_q = _per_question(s, run, cand_stem, base_stem, slug, p) if base_stem else ""
    if per_q:
        page.add(f"{slug}-delta", f"Per-question and per-category Δ{label}", per_q)
    page.add(f"{slug}-drops", f"Largest drops{label}", _drops(s, run, base_stem, cand_stem))
    lost = _lost_games(s, run, cand_stem) if cand_stem else ""
    if lost:
        page.add(f"{slug}-lost", f"Pairwise games lost{label}", lost)
    page.add(f"{slug}-judge", f"Judge{label}", _judge_counts(s, p, run))


def _leaderboard(c: MtBenchComparison) -> str:
    rows = []
    for i, r in enumerate(c.leaderboard, start=1):
        rows.append([i, Cell(r.name, numeric=False), Cell(r.model, numeric=False),
                     Cell(_delta_text(r.delta), r.delta.point, f"{r.name}:leaderboard.delta"),
                     Cell("–" if r.wins is None else f"{r.wins}/{r.ties}/{r.losses}", r.losses),
                     Cell(num(r.loss_share, 3), r.loss_share)])
    out = table(["#", "candidate", "model", "ΔMT-Bench [95%]", "W/T/L", "loss share"], rows,
                caption="Leaderboard, best Δ first", numeric_cols=(0, 3, 4, 5))
    pts = [r for r in c.leaderboard if r.delta.point is not None]
    if pts:
        fig, ax = _plots.figure(6.0, 0.5 * len(pts) + 1.4)
        ys = list(range(len(pts)))[::-1]
        for y, r in zip(ys, pts, strict=True):
            assert r.delta.point is not None
            lo = r.delta.low if r.delta.low is not None else r.delta.point
            hi = r.delta.high if r.delta.high is not None else r.delta.point
            ax.errorbar([r.delta.point], [y], xerr=[[r.delta.point - lo], [hi - r.delta.point]], fmt="o", capsize=3,
                        color=_plots.CAND)
        ax.set_yticks(ys)
        ax.set_yticklabels([r.name for r in pts], fontsize=8)
        ax.axvline(0, color="#888888", linewidth=0.8)
        ax.set_xlabel("ΔMT-Bench (candidate − baseline)")
        out += _plots.embed(fig, "mt-leaderboard", "ΔMT-Bench per candidate with 95% paired bootstrap intervals.")
    return out


def render_mtbench(result: MtBenchSummary | MtBenchComparison, *, run_dir: Path | None = None,
                   verdicts: Sequence[Verdict] = ()) -> str:
    from servecmp.mtbench.report import MtBenchComparison

    run = read_run(run_dir)
    run_name = run_dir.name if run_dir is not None else "run"
    if isinstance(result, MtBenchComparison):
        cands: list[tuple[str, MtBenchSummary]] = [(c.name, c.summary) for c in result.candidates]
    else:
        cands = [("candidate", result)]
    first = cands[0][1]
    several = len(cands) > 1
    models = ", ".join(s.endpoints["candidate"].model for _, s in cands)
    page = Page(title=f"servecmp mtbench — {run_name}",
                subtitle=f"baseline {first.endpoints['baseline'].model} vs {models}; judge {first.judge_model}")
    reading = [f"{n + ': ' if several else ''}MT-Bench Δ candidate − baseline {_delta_text(s.delta)}, Wilcoxon "
               f"p = {pval(s.wilcoxon.pvalue)}" for n, s in cands]
    if first.judge_is_baseline:
        reading.append("The baseline model judged itself (offline demo): the scores only exercise the pipeline.")
    headline: list[tuple[str, str]] = []
    if not several:
        b, c = first.endpoints["baseline"].score, first.endpoints["candidate"].score
        sj = first.single_judgments
        headline = [("MT-Bench baseline → candidate", f"{num(b.mean, 2)} → {num(c.mean, 2)}"),
                    ("Δ [95%]", _delta_text(first.delta)),
                    ("judgments unreadable", f"{sj.unparseable + sj.out_of_range} of {sj.expected}")]
        if first.pairwise is not None:
            pw = first.pairwise
            headline.append(("pairwise W/T/L", f"{pw.wins}/{pw.ties}/{pw.losses} of {pw.n}"))
    page.head_html = verdict_html(verdicts, kind="mtbench", reading=reading, headline=headline)
    page.add("settings", "Run settings", _settings(run.manifest, first, len(cands)))
    if isinstance(result, MtBenchComparison):
        page.add("leaderboard", "Leaderboard", _leaderboard(result))
    for n, s in cands:
        candidate_sections(page, s, run, name=n, several=several)
    return page.render()
