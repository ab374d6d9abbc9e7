"""`servecmp mcq` and `servecmp report`."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def mcq() -> None:
        """Compare two endpoints on a multiple-choice task (accuracy, flips, KL, top margin)."""
        raise typer.Exit(1)
