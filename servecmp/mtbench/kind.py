"""The MT-Bench run kind's adapter to the finish step (`servecmp.finish.RunKind`).

Its result is what summary.json holds: an `MtBenchSummary` (one candidate) or an
`MtBenchComparison` (several), plus the run directory the HTML page reads answers and judgments from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from servecmp.mtbench.report import MtBenchComparison, MtBenchSummary
from servecmp.mtbench.run import DEFAULT_SHOW

if TYPE_CHECKING:
    from rich.console import Console

    from servecmp.gates import Gate, Verdict

@dataclass(frozen=True)
class MtBenchResult:
    summary: MtBenchSummary | MtBenchComparison
    run_dir: Path | None
    show: int = DEFAULT_SHOW


class MtBenchKind:
    name = "mtbench"

    def load(self, target: Path | str, *, show: int | None) -> MtBenchResult:
        from servecmp.mtbench.run import load_result

        n = DEFAULT_SHOW if show is None else show
        return MtBenchResult(load_result(Path(target), show=n), Path(target), n)

    def verdicts(self, result: MtBenchResult, gates: Sequence[Gate]) -> list[Verdict]:
        from servecmp.verdicts import verdict_for

        s = result.summary
        if isinstance(s, MtBenchComparison):
            return [verdict_for("mtbench", c.summary, gates, candidate=c.name) for c in s.candidates]
        return [verdict_for("mtbench", s, gates, candidate=s.candidate_model)]

    def to_json(self, result: MtBenchResult) -> dict[str, Any]:
        return result.summary.model_dump(mode="json")

    def render(self, result: MtBenchResult, console: Console, *, show: int | None,
               verdicts: Sequence[Verdict] | None) -> None:
        from servecmp.mtbench.render import render_any

        render_any(console, result.summary, show=result.show if show is None else show)

    def epilogue(self, result: Any, console: Console, *, as_json: bool, gates: Sequence[Gate]) -> None:
        return None

    def html(self, result: MtBenchResult, verdicts: Sequence[Verdict]) -> str:
        from servecmp.html.mtbench import render_mtbench

        return render_mtbench(result.summary, run_dir=result.run_dir, verdicts=verdicts)


ADAPTER = MtBenchKind()
