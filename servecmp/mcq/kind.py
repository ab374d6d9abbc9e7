"""The MCQ run kind's adapter to the finish step (`servecmp.finish.RunKind`).

Its result is an `McqView` (`servecmp.mcq.view`): the comparison of every candidate with the baseline,
the manifest, the per-item data and the item texts of a run directory, all read once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from servecmp.mcq.view import McqView, load_view

if TYPE_CHECKING:
    from rich.console import Console

    from servecmp.gates import Gate, MetricEstimate, Verdict
    from servecmp.mcq.compare import CandidateResult


def floor_estimates(candidate: CandidateResult) -> dict[str, MetricEstimate]:
    """``flips_excess`` and ``kl_excess`` of a candidate whose noise floor was measured."""
    from servecmp.gates import MetricEstimate

    if candidate.floor is None or candidate.floor.n == 0:
        return {}
    return {"flips_excess": MetricEstimate.bootstrap(candidate.floor.flips_excess),
            "kl_excess": MetricEstimate.bootstrap(candidate.floor.kl_excess)}


class McqKind:
    name = "mcq"

    def load(self, target: Path | str, *, show: int | None) -> McqView:
        return load_view(Path(target))

    def verdicts(self, result: McqView, gates: Sequence[Gate]) -> list[Verdict]:
        from servecmp.verdicts import verdict_for

        cands = result.comparison.candidates
        # One candidate: labelled by its model (as every earlier report labelled it); several: by name.
        return [verdict_for("mcq", c.summary, gates, extra=floor_estimates(c),
                            candidate=c.name if len(cands) > 1 else (c.endpoint.model or c.name)) for c in cands]

    def to_json(self, result: McqView) -> dict[str, Any]:
        # One candidate without a noise floor: its McqSummary, the layout of every earlier run.
        cmp = result.comparison
        if len(cmp.candidates) == 1 and cmp.floor is None:
            data: dict[str, Any] = cmp.candidates[0].summary.model_dump(mode="json")
        else:
            data = cmp.model_dump(mode="json")
        return data

    def render(self, result: McqView, console: Console, *, show: int | None,
               verdicts: Sequence[Verdict] | None) -> None:
        from servecmp.mcq.render import render_comparison, render_mcq_report

        cmp = result.comparison
        if len(cmp.candidates) == 1 and cmp.floor is None:
            render_mcq_report(cmp.candidates[0].summary, console, show=show)
        else:
            by_name = {c.name: v for c, v in zip(cmp.candidates, verdicts or (), strict=False)}
            render_comparison(cmp, console, show=show, verdicts=by_name)

    def html(self, result: McqView, verdicts: Sequence[Verdict]) -> str:
        from servecmp.html.mcq import render_mcq

        return render_mcq(result, verdicts=verdicts)


ADAPTER = McqKind()
