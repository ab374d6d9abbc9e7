"""The MCQ run kind's adapter to the finish step (`servecmp.finish.RunKind`).

Its result is an `McqView` (`servecmp.mcq.view`): the comparison of every candidate with the baseline,
the manifest, the per-item data and the item texts of a run directory, all read once.
"""

from __future__ import annotations

import json
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
        from servecmp.errors import UserError
        from servecmp.mcq.settings import read_manifest

        path = Path(target)
        if read_manifest(path).baseline_only:
            raise UserError(f"{path} is a baseline profile (--baseline-only): nothing to compare; use it with "
                            f"servecmp mcq --baseline-run {path} --candidate URL")
        return load_view(path)

    def verdicts(self, result: McqView, gates: Sequence[Gate]) -> list[Verdict]:
        from servecmp.verdicts import verdict_for

        run_dir = _run_dir(result)
        if run_dir is not None:
            from servecmp.mcq.sequential import sequential_verdicts

            # An --until-decided run is decided on its anytime-valid intervals.
            seq = sequential_verdicts(run_dir, result.comparison, gates)
            if seq is not None:
                return seq[0]
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

    def epilogue(self, result: McqView, console: Console, *, as_json: bool, gates: Sequence[Gate]) -> None:
        """What a run adds below its report: the stored baseline it joined, its cost per endpoint and,
        for a sequential run, items used, both intervals and requests saved. With --json each is a JSON
        object on the console (stderr), so stdout keeps the summary's layout."""
        run_dir = _run_dir(result)
        if run_dir is None or result.manifest is None:
            return
        from rich.markup import escape

        from servecmp.mcq.cost import cost_lines, run_cost
        from servecmp.mcq.sequential import render_sequential, sequential_verdicts

        stored = result.manifest.stored_baseline
        if stored is not None:
            check = stored.check
            checked = (f"; drift check: {check.items} items re-asked, {check.answer_changes} answers changed, largest "
                       f"option KL {check.max_option_kl:.3g} <= {check.tolerance:.3g}" if check is not None else "")
            if as_json:
                console.print_json(json.dumps({"stored_baseline": stored.model_dump(mode="json")}))
            else:
                console.print(escape(f"baseline: stored run {stored.run_dir} ({stored.model} at {stored.base_url}, "
                                     f"made {stored.finished_at or stored.started_at}){checked}"), highlight=False)
        costs = run_cost(run_dir, stored_baseline=stored is not None)
        if as_json:
            console.print_json(json.dumps({"cost": [c.model_dump() for c in costs]}))
        elif costs:
            console.print("cost (requests sent, retries and probes included; tokens the servers reported):",
                          highlight=False)
            for ln in cost_lines(costs):
                console.print(escape(ln), highlight=False)
        seq = sequential_verdicts(run_dir, result.comparison, gates)
        if seq is not None:
            if as_json:
                console.print_json(seq[1].model_dump_json())
            else:
                render_sequential(seq[1], console)

    def html(self, result: McqView, verdicts: Sequence[Verdict]) -> str:
        from servecmp.html.mcq import render_mcq

        return render_mcq(result, verdicts=verdicts)


def _run_dir(view: McqView) -> Path | None:
    """The run directory of a view read from one (None for lm-eval logs or a bare summary)."""
    return Path(view.comparison.run_dir) if view.manifest is not None and view.comparison.run_dir else None


ADAPTER = McqKind()
