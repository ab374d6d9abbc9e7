"""Verdicts for the commands: typed summaries → `MetricEstimate`s → `servecmp.gates.decide`, plus the
CLI glue (resolve the gates, render the block, write Markdown, the ``verdict`` JSON object, the exit
code).

`servecmp.gates` is the pure decision layer and knows no summary; this module is the one place that
knows which summary field each gateable metric comes from. Gates never change a measured number:
every estimate below is read from the summary as the report prints it (the same point, the same 95%
interval, the same n).

Where each metric comes from
----------------------------
MCQ (`servecmp.mcq.summary.McqSummary`; n = items both endpoints answered):

=================  =====================================================================  =========
metric             field                                                                  interval
=================  =====================================================================  =========
``flips``          ``flips.rate`` (Proportion: flips / n)                                 Wilson
``c2w``            ``flips.correct_to_wrong`` / ``flips.n``, interval from                Wilson
                   ``servecmp.metrics.stats.wilson_ci`` on those counts
``changes``        ``answer_changes`` (Proportion)                                        Wilson
``kl``             ``option_kl.mean_ci`` (mean option KL, nats)                           bootstrap
``topk_kl``        ``topk_kl.kl_hat.mean_ci``; missing when ``topk_kl`` is None            bootstrap
                   (the endpoints returned no top-k logprobs)
``topk_kl_tight``  ``topk_kl.tight.kl_bc.mean_ci`` (the tight estimate); missing without  bootstrap
                   top-k or in a version-2 summary
``kl_cb``, ``js``  ``option_kl_cb.mean_ci``, ``option_js.mean_ci``; missing in version 2  bootstrap
``top1_disagree``  ``next_token_report``: (n − same_top_count) / n, the items whose next    Wilson
                   tokens' argmax differs (1 − llama.cpp's "Same top p"); missing without
                   top-k
``delta_acc``      ``accuracy.diff`` (candidate − baseline, items resampled in pairs)      bootstrap
``flips_excess``,  not in the summary: the noise-floor code passes them in ``extra``;      as given
``kl_excess``      missing (UNAVAILABLE) otherwise
=================  =====================================================================  =========

Notes: `servecmp.gates.chance_note` when ``accuracy.baseline``'s interval contains
1/``n_options``; "unfinished run" when ``run.complete`` is False.

MT-Bench (`servecmp.mtbench.report.MtBenchSummary`):

- ``delta_mtbench``: ``delta`` (candidate − baseline mean score paired by question, paired bootstrap
  interval; n = questions both endpoints have every turn rated for). Missing when ``mode`` is
  "pairwise" (no single-answer grading).
- ``pairwise_loss``: ``pairwise.losses / pairwise.n`` with a Wilson interval (n = pairs tallied,
  each a (question, turn) judged in both orders; an order-dependent verdict is a tie, not a loss).
  Missing when ``pairwise`` is None (mode "single").
- Note when ``complete`` is False.

gen (`servecmp.gen.summary.Comparison`, one per candidate; n = items both endpoints finished;
the primary extraction, GSM8K's strict-match, is ``correctness[0]``):

- ``flips``, ``c2w``: ``correctness[0].flips.rate`` and ``.correct_to_wrong`` (Wilson); sampled runs:
  the majority-vote answers'. ``delta_acc``: ``correctness[0].delta_acc`` (paired bootstrap).
- ``length_ratio``: ``length_ratio`` (mean candidate / mean baseline tokens, paired bootstrap).
- ``no_answer``: ``no_answer`` (the candidate's generations with nothing extracted, Wilson).
- ``identical``: ``identical`` (Wilson); missing in sampled runs.
- ``tf_kl``: ``teacher_forcing.kl_mean.mean_ci`` (mean over items of the per-item mean per-token
  KL, bootstrap); missing, with the reason, when nothing was teacher-forced.
- Note when both endpoints solve no item (flips cannot show at 0%).

Shadow (`servecmp.shadow.summary.ShadowSummary`; n = requests):

- ``answer_differs``: measure ``"mismatch"`` (answer differs, exact text). With a secondary
  (``has_secondary``), its ``excess``: candidate − secondary rate, paired by request, paired
  bootstrap interval (method "bootstrap"); without one, ``candidate`` (the raw rate, Wilson).
- ``tf_kl``: measure ``"kl_mean"``, ``candidate`` (mean over requests of the per-request mean
  teacher-forced KL per token, bootstrap interval). Missing when no request was teacher-forced
  scored (n = 0).
- ``top1_disagree``: measure ``"top1_agree"``, ``candidate``, as 1 − mean with the interval
  [1 − high, 1 − low] (bootstrap). Missing when n = 0.

API
---
``estimates_for(kind, summary, *, extra=None) -> (estimates, missing)``; per kind
    ``mcq_estimates``, ``mtbench_estimates``, ``shadow_estimates``. ``extra`` (metric →
    `MetricEstimate`) is merged over the computed ones (MCQ: ``flips_excess``/``kl_excess``).
``notes_for(kind, summary) -> list[str]``
``verdict_for(kind, summary, gates, *, extra=None, candidate=None, notes=()) -> Verdict``
``resolve_gates(kind, cli, config) -> list[Gate]``: ``--gate`` flags replace the ``[gate]`` table's
    gates for that kind (`servecmp.gates.gates_for`); ``config`` is a `servecmp.config.Config`, a
    path to servecmp.toml or None (./servecmp.toml when it exists). UserError (exit 2) on a bad one.
``wants_verdict(gates, summary_md) -> bool``: gates were given or ``--summary-md`` was.
``verdict_json(verdicts)`` / ``with_verdict(summary_json, verdicts)``: the ``verdict`` object.
``emit_verdict(verdicts, *, console, summary_md=None, title=...) -> int``: render, write, exit code.

The ``verdict`` object of ``--json``
------------------------------------
Added as a top-level key beside the summary's own fields (``{...summary..., "verdict": {...}}``) and
only when the command was given gates (``--gate`` or a ``[gate]`` table) or ``--summary-md``;
without them the JSON is exactly what it was. A reader that validates the summary with its pydantic
model drops ``verdict`` first. With ``--json`` the terminal block goes to stderr, so stdout holds only
the JSON. One candidate::

    {"candidate": str | null, "status": "pass" | "fail" | "inconclusive", "exit_code": 0 | 1 | 4,
     "summary": "FAIL (exit 1): 1 of 2 gates failed", "notes": [str],
     "gates": [{"metric", "operator": "<=" | ">=", "threshold", "unit", "estimate",
                "interval": [low, high] | null, "n", "method": "wilson" | "bootstrap" | null,
                "status": "pass" | "fail" | "inconclusive" | "unavailable", "items_to_decide",
                "reason"}]}

Numbers are in the metric's unit (fractions, not %). Several candidates (a list of verdicts):
``{"status", "exit_code", "candidates": [one object as above per candidate]}``.

``--summary-md FILE`` appends (GitHub's ``$GITHUB_STEP_SUMMARY`` convention: several commands in one
step each add their section) `servecmp.gates.verdict_markdown`; with no gates it says "No gates".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from servecmp.errors import EXIT_GATE_FAILED, EXIT_OK, UserError
from servecmp.gates import (
    Gate,
    MetricEstimate,
    Verdict,
    chance_note,
    combine,
    decide,
    gates_for,
    render_verdict,
    verdict_markdown,
)

if TYPE_CHECKING:
    from rich.console import Console

    from servecmp.config import Config
    from servecmp.mcq.summary import McqSummary
    from servecmp.mtbench.report import MtBenchSummary
    from servecmp.shadow.summary import ShadowSummary

Estimates = dict[str, MetricEstimate]
Missing = dict[str, str]


# ---- summaries → estimates --------------------------------------------------------------------


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _boot(point: float | None, low: float | None, high: float | None, n: int) -> MetricEstimate:
    point, low, high = _finite(point), _finite(low), _finite(high)
    if low is None or high is None:
        low = high = None
    return MetricEstimate(point=point, low=low, high=high, n=n, method="bootstrap")


def _wilson(count: int, n: int) -> MetricEstimate:
    from servecmp.metrics.stats import wilson_ci

    return MetricEstimate.wilson(wilson_ci(count, n))


def _proportion(p: Any) -> MetricEstimate:
    """A summary's Proportion/Rate model (count, n, rate, low, high)."""
    return MetricEstimate(point=p.rate, low=p.low, high=p.high, n=p.n, method="wilson")


def mcq_estimates(summary: McqSummary, *, extra: Mapping[str, MetricEstimate] | None = None
                  ) -> tuple[Estimates, Missing]:
    """The MCQ metrics of one baseline/candidate summary (fields in the module docstring)."""
    est: Estimates = {
        "flips": _proportion(summary.flips.rate),
        "c2w": _wilson(summary.flips.correct_to_wrong, summary.flips.n),
        "changes": _proportion(summary.answer_changes),
        "kl": _boot(summary.option_kl.mean_ci.point, summary.option_kl.mean_ci.low,
                    summary.option_kl.mean_ci.high, summary.option_kl.mean_ci.n),
        "delta_acc": _boot(summary.accuracy.diff.point, summary.accuracy.diff.low, summary.accuracy.diff.high,
                           summary.accuracy.diff.n),
    }
    missing: Missing = {}
    if summary.topk_kl is not None:
        ci = summary.topk_kl.kl_hat.mean_ci
        est["topk_kl"] = _boot(ci.point, ci.low, ci.high, ci.n)
    else:
        missing["topk_kl"] = "the endpoints returned no top-k logprobs"
    tight = summary.topk_kl.tight if summary.topk_kl is not None else None
    if tight is not None:
        ci = tight.kl_bc.mean_ci
        est["topk_kl_tight"] = _boot(ci.point, ci.low, ci.high, ci.n)
    else:
        missing["topk_kl_tight"] = ("the endpoints returned no top-k logprobs" if summary.topk_kl is None
                                    else "the summary predates the tight estimate (version 2)")
    for name, dist in (("kl_cb", summary.option_kl_cb), ("js", summary.option_js)):
        if dist is None:
            missing[name] = "the summary predates both KL directions (version 2)"
            continue
        ci = dist.mean_ci
        est[name] = _boot(ci.point, ci.low, ci.high, ci.n)
    report = summary.next_token_report
    if report is not None and report.n > 0:
        # One answer position per item: items are independent, so a Wilson interval over them.
        est["top1_disagree"] = _wilson(report.n - report.same_top_count, report.n)
    else:
        missing["top1_disagree"] = ("the endpoints returned no top-k logprobs" if summary.topk_kl is None
                                    else "the summary predates llama.cpp's block (version 2)")
    est.update(extra or {})
    return est, missing


def mtbench_estimates(summary: MtBenchSummary) -> tuple[Estimates, Missing]:
    """``delta_mtbench`` and ``pairwise_loss`` (fields in the module docstring)."""
    est: Estimates = {}
    missing: Missing = {}
    if summary.mode == "pairwise":
        missing["delta_mtbench"] = "no single-answer grading in this run (--mode pairwise)"
    else:
        d = summary.delta
        est["delta_mtbench"] = _boot(d.point, d.low, d.high, d.n)
    if summary.pairwise is None:
        missing["pairwise_loss"] = "no pairwise grading in this run (--mode single)"
    else:
        est["pairwise_loss"] = _wilson(summary.pairwise.losses, summary.pairwise.n)
    return est, missing


def shadow_estimates(summary: ShadowSummary) -> tuple[Estimates, Missing]:
    """``answer_differs``, ``tf_kl`` and ``top1_disagree`` (fields in the module docstring)."""
    from servecmp.shadow.summary import MeanMeasure, RateMeasure

    est: Estimates = {}
    missing: Missing = {}
    mismatch = summary.measure("mismatch")
    assert isinstance(mismatch, RateMeasure)
    if summary.has_secondary and mismatch.excess is not None:
        x = mismatch.excess
        est["answer_differs"] = _boot(x.diff, x.low, x.high, x.n)
    else:
        est["answer_differs"] = _proportion(mismatch.candidate)

    def flip(x: float | None) -> float | None:
        return None if x is None else 1.0 - x

    # The two teacher-forced measures; top1_disagree is 1 − top1_agree (interval ends swapped).
    for name, metric in (("kl_mean", "tf_kl"), ("top1_agree", "top1_disagree")):
        measure = summary.measure(name)
        assert isinstance(measure, MeanMeasure)
        c = measure.candidate
        if c.n == 0:
            missing[metric] = "no teacher-forced scoring in this run (no request had prompt logprobs)"
        elif metric == "tf_kl":
            est[metric] = _boot(c.mean, c.low, c.high, c.n)
        else:
            est[metric] = _boot(flip(c.mean), flip(c.high), flip(c.low), c.n)
    return est, missing


def gen_estimates(comparison: Any) -> tuple[Estimates, Missing]:
    """The gen metrics of one candidate's `servecmp.gen.summary.Comparison` (fields in the module
    docstring). Sampled runs read flips and delta_acc from the majority-vote answers."""
    primary = comparison.correctness[0]
    est: Estimates = {
        "flips": _proportion(primary.flips.rate),
        "c2w": _proportion(primary.correct_to_wrong),
        "delta_acc": _boot(primary.delta_acc.point, primary.delta_acc.low, primary.delta_acc.high,
                           primary.delta_acc.n),
    }
    missing: Missing = {}
    r = comparison.length_ratio
    est["length_ratio"] = _boot(r.point, r.low, r.high, r.n)
    if comparison.no_answer is not None:
        est["no_answer"] = _proportion(comparison.no_answer)
    if comparison.identical is not None:
        est["identical"] = _proportion(comparison.identical)
    else:
        missing["identical"] = "a sampled run (identical outputs are measured on greedy runs)"
    tf = comparison.teacher_forcing
    if tf is not None and tf.kl_mean is not None and tf.n > 0:
        ci = tf.kl_mean.mean_ci
        est["tf_kl"] = _boot(ci.point, ci.low, ci.high, ci.n)
    else:
        missing["tf_kl"] = f"teacher-forced KL unavailable: {tf.unavailable}" if tf is not None and tf.unavailable \
            else "no teacher-forced scoring in this run"
    return est, missing


def estimates_for(kind: str, summary: Any, *, extra: Mapping[str, MetricEstimate] | None = None
                  ) -> tuple[Estimates, Missing]:
    """Dispatch on the run kind ("mcq", "mtbench", "shadow", "gen"; for gen ``summary`` is one
    candidate's Comparison); ``extra`` overrides/adds estimates."""
    if kind == "mcq":
        return mcq_estimates(summary, extra=extra)
    if kind == "gen":
        est, missing = gen_estimates(summary)
    elif kind == "mtbench":
        est, missing = mtbench_estimates(summary)
    elif kind == "shadow":
        est, missing = shadow_estimates(summary)
    else:
        raise ValueError(f"unknown run kind {kind!r}")
    est.update(extra or {})
    return est, missing


def notes_for(kind: str, summary: Any) -> list[str]:
    """Notes a verdict carries: MCQ chance level; an unfinished MCQ or MT-Bench run."""
    notes: list[str] = []
    if kind == "mcq":
        acc = summary.accuracy.baseline
        if summary.n_options >= 2:
            note = chance_note(acc.low, acc.high, summary.n_options)
            if note:
                notes.append(note)
        if not summary.run.complete:
            planned = summary.run.n_items_planned
            of = f" of {planned:,} planned" if planned else ""
            notes.append(f"the run is unfinished: decided on the {summary.n_items:,} items{of} answered so far")
    elif kind == "mtbench" and not summary.complete:
        notes.append("the run is unfinished (judgments missing): decided on what has been judged so far")
    elif kind == "gen":
        p = summary.correctness[0]
        if p.n and p.baseline_accuracy.count == 0 and p.candidate_accuracy.count == 0:
            notes.append(f"both endpoints solve 0 of {p.n} items: accuracy flips cannot show on a model at 0%")
    return notes


def verdict_for(kind: str, summary: Any, gates: Sequence[Gate], *,
                extra: Mapping[str, MetricEstimate] | None = None, candidate: str | None = None,
                notes: Sequence[str] = ()) -> Verdict:
    """Decide ``gates`` on one summary of ``kind``; ``notes`` are added after `notes_for`'s."""
    est, missing = estimates_for(kind, summary, extra=extra)
    return decide(gates, est, candidate=candidate, missing=missing,
                  notes=[*notes_for(kind, summary), *notes])


# ---- CLI glue ---------------------------------------------------------------------------------


def resolve_gates(kind: str, cli: Sequence[str] | None, config: Config | str | Path | None) -> list[Gate]:
    """The gates a command applies: ``--gate`` flags, else the ``[gate]`` table of the config."""
    from servecmp.config import DEFAULT_CONFIG, Config, load_config

    cfg = config if isinstance(config, Config) else load_config(config)
    origin = str(config) if isinstance(config, str | Path) else DEFAULT_CONFIG
    return gates_for(kind, list(cli or ()), cfg.gate, origin=origin)


def wants_verdict(gates: Sequence[Gate], summary_md: Path | None) -> bool:
    """Whether a command shows a verdict at all: without gates and --summary-md nothing changes."""
    return bool(gates) or summary_md is not None


def _one_json(v: Verdict) -> dict[str, Any]:
    return {
        "candidate": v.candidate,
        "status": v.status,
        "exit_code": v.exit_code,
        "summary": v.summary,
        "notes": list(v.notes),
        "gates": [
            {
                "metric": r.metric,
                "operator": r.op,
                "threshold": r.threshold,
                "unit": r.unit,
                "estimate": r.estimate,
                "interval": None if r.low is None or r.high is None else [r.low, r.high],
                "n": r.n,
                "method": r.method,
                "status": r.status,
                "items_to_decide": r.items_to_decide,
                "reason": r.reason,
            }
            for r in v.gates
        ],
    }


def verdict_json(verdicts: Verdict | Sequence[Verdict]) -> dict[str, Any]:
    """The ``verdict`` object (layout in the module docstring)."""
    if isinstance(verdicts, Verdict):
        return _one_json(verdicts)
    vs = list(verdicts)
    code = combine(vs)
    status = {EXIT_OK: "pass", EXIT_GATE_FAILED: "fail"}.get(code, "inconclusive")
    return {"status": status, "exit_code": code, "candidates": [_one_json(v) for v in vs]}


def with_verdict(summary_json: Mapping[str, Any], verdicts: Verdict | Sequence[Verdict] | None
                 ) -> dict[str, Any]:
    """The summary's JSON with a top-level ``verdict`` key (unchanged when ``verdicts`` is None)."""
    out = dict(summary_json)
    if verdicts is not None:
        if "verdict" in out:  # pragma: no cover - a summary layout that grew the key itself
            raise ValueError("the summary already has a 'verdict' key")
        out["verdict"] = verdict_json(verdicts)
    return out


def write_summary_md(path: Path, verdicts: Verdict | Sequence[Verdict], title: str) -> None:
    """Append the verdict's Markdown to ``path`` (created when missing). UserError when unwritable."""
    text = verdict_markdown(verdicts, title)
    try:
        with Path(path).open("a", encoding="utf-8") as fh:
            if fh.tell() > 0:
                fh.write("\n")
            fh.write(text)
    except OSError as exc:
        raise UserError(f"--summary-md {path}: cannot write: {exc.strerror or exc}") from exc


def emit_verdict(verdicts: Verdict | Sequence[Verdict], *, console: Console | None,
                 summary_md: Path | None = None, title: str = "servecmp gates") -> int:
    """Render each verdict on ``console`` (None: not at all), append Markdown to ``summary_md``, and
    return the exit code (`servecmp.gates.combine` over several)."""
    vs = [verdicts] if isinstance(verdicts, Verdict) else list(verdicts)
    if console is not None:
        for v in vs:
            console.print()
            render_verdict(console, v)
    if summary_md is not None:
        write_summary_md(summary_md, verdicts, title)
    return vs[0].exit_code if isinstance(verdicts, Verdict) else combine(vs)
