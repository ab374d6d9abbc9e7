"""`servecmp report PATH`: print any stored run from disk, with no endpoint and no key.

PATH is a run directory (its manifest names the kind: "mcq", "mtbench", "gen"; metrics recomputed
from its records) or a shadow database (an SQLite file, or a ``postgresql://`` or ``postgres://``
URL, read as `servecmp shadow report --db URL` reads it). Nothing under PATH is written. `--json` prints the kind's
typed summary as one JSON object; `--show N` sets how many worst items/questions/requests the
report lists. `--html FILE` also writes the report as one self-contained HTML file (`servecmp.html`).

`--gate EXPR` (repeatable, or the `[gate]` table of servecmp.toml for the run's kind) re-decides the
stored run without calling any endpoint (`servecmp.verdicts`): the verdict block follows the report,
`--json` gains a top-level `verdict` object, `--summary-md FILE` appends it as Markdown, and the exit
code is the verdict's (0 pass, 1 fail, 4 inconclusive). Every kind goes through the one finish step
(`servecmp.finish`): one verdict per candidate, `flips_excess`/`kl_excess` from an MCQ noise floor.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from servecmp._cli.common import ConfigFile, Gate, Html, Json, Show, SummaryMd

if TYPE_CHECKING:
    from rich.console import Console


def print_report(path: Path | str, *, as_json: bool, show: int | None, console: Console,
                 gates: list[str] | None = None, summary_md: Path | None = None,
                 config: Path | None = None, html: Path | None = None) -> int:
    """Print the stored run at ``path`` (`servecmp.finish.report`); returns the exit code."""
    from servecmp.finish import Output, detect_kind, report
    from servecmp.shadow.store import is_postgres, redact_target

    # A URL stays a string (a Path would fold its "//"); its name in titles has no password.
    name = redact_target(path) if is_postgres(path) else Path(path).name
    title = f"servecmp gates: {detect_kind(path)} run {name}"
    out = Output(as_json=as_json, show=show, html=html, summary_md=summary_md, title=title)
    return report(path if is_postgres(path) else Path(path), gates, config, out, console)


def register(app: typer.Typer) -> None:
    @app.command()
    def report(
        path: Annotated[str, typer.Argument(
            metavar="RUN", help="An MCQ or MT-Bench run directory, or a shadow database: a file or a "
                                "postgresql:// URL.")],
        as_json: Json = False,
        show: Show = None,
        gate: Gate = None,
        summary_md: SummaryMd = None,
        config: ConfigFile = None,
        html: Html = None,
    ) -> None:
        """Print a stored run's report from disk (MCQ metrics are recomputed from the records).

        With --gate (or [gate] in servecmp.toml) the run is re-decided: exit 0 pass, 1 fail, 4 inconclusive.
        """
        from rich.console import Console

        code = print_report(path, as_json=as_json, show=show, console=Console(stderr=as_json), gates=gate,
                            summary_md=summary_md, config=config, html=html)
        if code:
            raise SystemExit(code)  # not typer.Exit: main() runs click with standalone_mode=False, which swallows it
