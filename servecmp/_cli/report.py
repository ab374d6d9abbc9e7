"""`servecmp report PATH`: print any stored run from disk, with no endpoint and no key.

PATH is an MCQ run directory (manifest kind "mcq": every metric recomputed from its records), an
MT-Bench run directory (kind "mtbench") or a shadow SQLite database. `--json` prints the kind's
typed summary as one JSON object; `--show N` sets how many worst items/questions/requests the
report lists.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from servecmp._cli.common import Json, Show
from servecmp.errors import UserError

if TYPE_CHECKING:
    from rich.console import Console

#: The first 16 bytes of every SQLite 3 database file.
SQLITE_MAGIC = b"SQLite format 3\x00"
#: Shadow's defaults, the same as `servecmp shadow report`'s (MT-Bench's is its DEFAULT_SHOW).
SHADOW_WORST = 10
SHADOW_N_BOOT = 2000


def run_kind(path: Path) -> str:
    """"mcq", "mtbench" or "shadow" for a stored run; one-line UserError for anything else."""
    if path.is_file():
        with path.open("rb") as fh:
            if fh.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC:
                return "shadow"
        raise UserError(f"{path} is neither a run directory nor a shadow database")
    if not path.is_dir():
        raise UserError(f"{path} not found")
    from servecmp.runstore import MANIFEST, read_json

    if not (path / MANIFEST).is_file():
        raise UserError(f"{path} is not a servecmp run directory (no {MANIFEST})")
    raw = read_json(path / MANIFEST)
    kind = raw.get("kind") if isinstance(raw, dict) else None
    if kind not in ("mcq", "mtbench"):
        raise UserError(f"{path / MANIFEST}: unknown run kind {kind!r} (servecmp report reads mcq and mtbench runs)")
    return str(kind)


def _echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


def print_report(path: Path, *, as_json: bool, show: int | None, console: Console) -> None:
    kind = run_kind(path)
    if kind == "mcq":
        from servecmp._cli.mcq import print_summary
        from servecmp.mcq.summary import summarize_run

        print_summary(summarize_run(path), as_json=as_json, show=show, console=console)
    elif kind == "mtbench":
        from servecmp.mtbench.render import render
        from servecmp.mtbench.run import DEFAULT_SHOW, load_summary

        n = DEFAULT_SHOW if show is None else show
        mt = load_summary(path, show=n)
        if as_json:
            _echo_json(mt.model_dump(mode="json"))
        else:
            render(console, mt, show=n)
    else:
        from servecmp.shadow.report import load_summary as load_shadow
        from servecmp.shadow.report import render as render_shadow

        sh = load_shadow(path, worst_n=SHADOW_WORST if show is None else show, n_boot=SHADOW_N_BOOT)
        if as_json:
            _echo_json(sh.model_dump(mode="json"))
        else:
            render_shadow(sh, console, path)


def register(app: typer.Typer) -> None:
    @app.command()
    def report(
        path: Annotated[Path, typer.Argument(
            metavar="RUN", help="An MCQ or MT-Bench run directory, or a shadow database file.")],
        as_json: Json = False,
        show: Show = None,
    ) -> None:
        """Print a stored run's report from disk (MCQ metrics are recomputed from the records)."""
        from rich.console import Console

        print_report(path, as_json=as_json, show=show, console=Console(stderr=as_json))
