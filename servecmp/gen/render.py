"""The terminal report of a `servecmp gen` run (rich), from its `GenSummary` alone."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from servecmp.gen.summary import Comparison, GenSummary, ItemRow
from servecmp.mcq.summary import Distribution, Estimate, Proportion


def pct(p: Proportion | None) -> str:
    if p is None or p.rate is None or p.low is None or p.high is None:
        return "n/a"
    return f"{p.rate:.1%} [{p.low:.1%}, {p.high:.1%}] ({p.count}/{p.n})"


def est(e: Estimate | None, *, percent: bool = False, signed: bool = False, digits: int = 3) -> str:
    if e is None or e.point is None:
        return "n/a"

    def f(x: float | None) -> str:
        if x is None:
            return "?"
        if percent:
            return f"{x:+.1%}" if signed else f"{x:.1%}"
        return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"

    interval = f" [{f(e.low)}, {f(e.high)}]" if e.low is not None else " (no interval)"
    return f"{f(e.point)}{interval} (n={e.n})"


def dist(d: Distribution | None, digits: int = 4) -> str:
    if d is None or d.n == 0 or d.mean is None:
        return "n/a"
    return (f"mean {d.mean:.{digits}f} [{d.mean_ci.low:.{digits}f}, {d.mean_ci.high:.{digits}f}], "
            f"median {d.median:.{digits}f}, max {d.max:.{digits}f} (n={d.n})")


def _comparison(c: Comparison, s: GenSummary, console: Console, show: int) -> None:
    head = f"{c.name} ({c.model}) vs baseline" + (" [noise floor]" if c.role in ("secondary", "floor") else "")
    console.print(f"\n[bold]{head}[/bold]: {c.n} paired items")
    t = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    t.add_column("measure")
    t.add_column("value")
    for k in c.correctness:
        f = k.flips
        t.add_row(f"flips ({k.extraction})",
                  f"{pct(f.rate)}; c→w {f.correct_to_wrong}, w→c {f.wrong_to_correct}, McNemar p="
                  + ("n/a" if f.mcnemar_p is None else f"{f.mcnemar_p:.3g}"))
        t.add_row(f"Δ accuracy ({k.extraction})", est(k.delta_acc, percent=True, signed=True))
    if c.sampled is not None:
        t.add_row(f"pass@1 (K={c.sampled.k})", f"baseline {est(c.sampled.baseline_pass_at_1, percent=True)}, "
                                             f"{c.name} {est(c.sampled.candidate_pass_at_1, percent=True)}")
        t.add_row("Δ pass@1", est(c.sampled.delta_pass_at_1, percent=True, signed=True))
    if c.identical is not None:
        t.add_row("identical output", pct(c.identical))
        t.add_row(f"first divergence ({s.run.divergence_unit})", dist(c.first_divergence, 1))
    t.add_row(f"length ratio ({s.run.length_unit})", est(c.length_ratio))
    tf = c.teacher_forcing
    if tf is not None:
        if tf.unavailable:
            t.add_row("teacher-forced KL", f"unavailable: {tf.unavailable}")
        else:
            t.add_row("teacher-forced KL per token", dist(tf.kl_mean))
            t.add_row("teacher-forced KL max", dist(tf.kl_max))
            t.add_row("KL at first divergence", dist(tf.kl_at_divergence))
            if tf.errors:
                t.add_row("not scored", ", ".join(f"{k} {v}" for k, v in tf.errors.items()))
    console.print(t)
    worst = sorted((r for r in c.items if r.flip or not r.identical), key=_row_key)[:show]
    if worst and show:
        w = Table(title=f"items that flipped or changed (first {len(worst)})", show_header=True, box=None,
                  header_style="bold", title_justify="left")
        for col in ("item", "flip", "baseline", c.name, "diverges at", "KL max (pos)"):
            w.add_column(col)
        for r in worst:
            w.add_row(r.item_id, r.flip or "", str(r.base_answer), str(r.cand_answer),
                      "" if r.first_divergence is None else str(r.first_divergence),
                      "" if r.tf_kl_max is None else f"{r.tf_kl_max:.3f} ({r.tf_kl_max_pos})")
        console.print(w)


def _row_key(r: ItemRow) -> tuple[int, int, float]:
    # Flips first (c→w before w→c), then the earliest divergence.
    return ({"c2w": 0, "w2c": 1}.get(r.flip or "", 2), 0 if r.tf_kl_max is None else 1,
            r.first_divergence if r.first_divergence is not None else 10**9)


def render(s: GenSummary, console: Console, *, show: int = 10) -> None:
    r = s.run
    mode = "greedy" if r.samples == 1 and r.temperature == 0 else f"{r.samples} samples at T={r.temperature}"
    console.print(f"[bold]servecmp gen[/bold]: {r.task} ({r.source}), {r.n_items} of {r.n_items_planned} items"
                  + ("" if r.complete else " [yellow](unfinished)[/yellow]")
                  + (f", api {r.api}, max {r.max_tokens} tokens, " if r.api else ", ")
                  + mode)
    if r.stored_baseline is not None:
        from servecmp.runstore import age

        b = r.stored_baseline
        console.print(f"baseline: stored run {b.run_dir} ({b.model} at {b.base_url}, "
                      f"{age(b.finished_at or b.started_at)})"
                      + ("" if b.check is None else f"; re-checked on {b.check.items} items of {b.check.url}, "
                         f"{b.check.changed} answers changed"), highlight=False, markup=False)
    t = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    t.add_column("endpoint")
    for x in r.extractions:
        t.add_column(f"accuracy ({x})")
    t.add_column("no answer")
    t.add_column("truncated")
    t.add_column("mean tokens")
    for e in s.endpoints:
        t.add_row(f"{e.name} ({e.model})", *(pct(a) for a in e.accuracy), pct(e.no_answer), pct(e.truncated),
                  "n/a" if e.mean_completion_tokens is None else f"{e.mean_completion_tokens:.1f}")
    console.print(t)
    for c in [*s.candidates, *s.floors]:
        _comparison(c, s, console, show)
    for note in s.notes:
        console.print(f"note: {note}", highlight=False, markup=False)
