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
from typing import Annotated, Any

import typer

from servecmp._cli import common as opt


def register(app: typer.Typer) -> None:
    @app.command()
    @opt.with_options(opt.OWN, opt.OUTPUT, opt.ConfigFile)
    def report(
        path: Annotated[str, typer.Argument(
            metavar="RUN", help="An MCQ or MT-Bench run directory, or a shadow database: a file or a "
                                "postgresql:// URL.")],
        **flags: Any,
    ) -> None:
        """Print a stored run's report from disk (MCQ metrics are recomputed from the records).

        With --gate (or [gate] in servecmp.toml) the run is re-decided: exit 0 pass, 1 fail, 4 inconclusive.
        """
        from rich.console import Console

        from servecmp.finish import detect_kind, report
        from servecmp.shadow.store import is_postgres, redact_target

        # A URL stays a string (a Path would fold its "//"); its name in titles has no password.
        name = redact_target(path) if is_postgres(path) else Path(path).name
        out = opt.output(flags, title=f"servecmp gates: {detect_kind(path)} run {name}")
        code = report(path if is_postgres(path) else Path(path), flags["gate"], flags["config"], out,
                      Console(stderr=out.as_json))
        if code:
            raise SystemExit(code)  # not typer.Exit: main() runs click with standalone_mode=False, which swallows it
