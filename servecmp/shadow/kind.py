"""The shadow run kind's adapter to the finish step (`servecmp.finish.RunKind`).

Its result is a `ShadowView`: the summary of a shadow database and the database it came from (an
SQLite path or a postgresql:// URL, shown redacted).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from servecmp.shadow.summary import DEFAULT_N_BOOT, DEFAULT_WORST, ShadowSummary

if TYPE_CHECKING:
    from rich.console import Console

    from servecmp.gates import Gate, Verdict


@dataclass(frozen=True)
class ShadowView:
    summary: ShadowSummary
    db: Path | str


class ShadowKind:
    name = "shadow"

    def load(self, target: Path | str, *, show: int | None, n_boot: int = DEFAULT_N_BOOT) -> ShadowView:
        from servecmp.shadow.summary import load_summary

        worst = DEFAULT_WORST if show is None else show
        return ShadowView(load_summary(target, worst_n=worst, n_boot=n_boot), target)

    def verdicts(self, result: ShadowView, gates: Sequence[Gate]) -> list[Verdict]:
        from servecmp.verdicts import verdict_for

        return [verdict_for("shadow", result.summary, gates)]

    def to_json(self, result: ShadowView) -> dict[str, Any]:
        return result.summary.model_dump(mode="json")

    def render(self, result: ShadowView, console: Console, *, show: int | None,
               verdicts: Sequence[Verdict] | None) -> None:
        from servecmp.shadow.render import render

        render(result.summary, console, result.db)

    def epilogue(self, result: Any, console: Console, *, as_json: bool, gates: Sequence[Gate]) -> None:
        return None

    def html(self, result: ShadowView, verdicts: Sequence[Verdict]) -> str:
        from servecmp.html.shadow import render_shadow

        return render_shadow(result.summary, db=result.db, verdicts=verdicts)


ADAPTER = ShadowKind()
