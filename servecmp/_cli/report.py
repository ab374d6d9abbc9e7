"""`servecmp report RUN_DIR`: print a stored run from disk, with no endpoint and no key."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from servecmp._cli.mcq import print_summary, summarize_run
from servecmp.errors import UserError
from servecmp.runstore import MANIFEST


def register(app: typer.Typer) -> None:
    @app.command()
    def report(
        run_dir: Annotated[Path, typer.Argument(help="A run directory made by servecmp mcq.")],
        as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object.")] = False,
    ) -> None:
        """Recompute every metric of a run from its per-item records and print the report."""
        if not (run_dir / MANIFEST).exists():
            raise UserError(f"{run_dir} is not a servecmp run directory (no {MANIFEST})")
        summary = summarize_run(run_dir)
        print_summary(summary, as_json, Console(stderr=as_json))
