"""The generated-answers run kind's adapter to the finish step (`servecmp.finish.RunKind`).

Its result is a `GenView`: the typed summary (`GenSummary`, every candidate's `Comparison`) and the run
directory the HTML page reads item texts and answers from (None for a `--from-lm-eval` comparison).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from servecmp.gen.summary import DEFAULT_SHOW, GenSummary

if TYPE_CHECKING:
    from rich.console import Console

    from servecmp.gates import Gate, Verdict


@dataclass(frozen=True)
class GenView:
    summary: GenSummary
    run_dir: Path | None = None


class GenKind:
    name = "gen"

    def load(self, target: Path | str, *, show: int | None) -> GenView:
        from servecmp.errors import UserError
        from servecmp.gen.settings import read_manifest
        from servecmp.gen.summary import load_result

        if read_manifest(Path(target)).baseline_only:
            raise UserError(f"{target} is a baseline profile (--baseline-only): nothing to compare; compare "
                            f"candidates with it: servecmp gen --baseline-run {target} --candidate URL")
        return GenView(load_result(Path(target)), Path(target))

    def verdicts(self, result: GenView, gates: Sequence[Gate]) -> list[Verdict]:
        from servecmp.verdicts import verdict_for

        cands = result.summary.candidates
        return [verdict_for("gen", c, gates, candidate=c.name if len(cands) > 1 else (c.model or c.name))
                for c in cands]

    def to_json(self, result: GenView) -> dict[str, Any]:
        return result.summary.model_dump(mode="json", by_alias=True)

    def render(self, result: GenView, console: Console, *, show: int | None,
               verdicts: Sequence[Verdict] | None) -> None:
        from servecmp.gen.render import render

        render(result.summary, console, show=DEFAULT_SHOW if show is None else show)

    def epilogue(self, result: Any, console: Console, *, as_json: bool, gates: Sequence[Gate]) -> None:
        return None

    def html(self, result: GenView, verdicts: Sequence[Verdict]) -> str:
        from servecmp.gen.rundir import load_texts
        from servecmp.html.gen import render_gen

        texts = load_texts(result.run_dir) if result.run_dir is not None else None
        return render_gen(result.summary, texts=texts, verdicts=verdicts)


ADAPTER = GenKind()
