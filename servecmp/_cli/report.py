"""`servecmp report PATH`: print any stored run from disk, with no endpoint and no key.

PATH is an MCQ run directory (manifest kind "mcq": every metric recomputed from its records), an
MT-Bench run directory (kind "mtbench") or a shadow SQLite database. `--json` prints the kind's
typed summary as one JSON object; `--show N` sets how many worst items/questions/requests the
report lists.

`--gate EXPR` (repeatable, or the `[gate]` table of servecmp.toml for the run's kind) re-decides the
stored run without calling any endpoint (`servecmp.verdicts`): the verdict block follows the report,
`--json` gains a top-level `verdict` object, `--summary-md FILE` appends it as Markdown, and the exit
code is the verdict's (0 pass, 1 fail, 4 inconclusive). Without gates and `--summary-md` the output
and exit code are as before. MCQ runs go through `servecmp._cli.mcq.report_run` (one or several
candidates, a noise floor: one verdict per candidate, `flips_excess`/`kl_excess` from the floor);
MT-Bench runs and shadow databases through `servecmp._cli.common.print_and_decide`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from servecmp._cli.common import ConfigFile, Gate, Json, Show, SummaryMd, print_and_decide
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
    from servecmp.runstore import MANIFEST, manifest_kind

    kind = manifest_kind(path)
    if kind not in ("mcq", "mtbench"):
        raise UserError(f"{path / MANIFEST}: unknown run kind {kind!r} (servecmp report reads mcq and mtbench runs)")
    return str(kind)


def print_report(path: Path, *, as_json: bool, show: int | None, console: Console,
                 gates: list[str] | None = None, summary_md: Path | None = None,
                 config: Path | None = None) -> int:
    """Print the stored run at ``path``; decide its gates when any apply. Returns the exit code."""
    from servecmp.verdicts import resolve_gates

    kind = run_kind(path)
    # Bad expressions fail here, with one line, before any metric is computed.
    gate_list = resolve_gates(kind, gates, config)
    summary: Any
    if kind == "mcq":
        from servecmp._cli.mcq import report_run

        # Every shape of MCQ run (one or several candidates, a noise floor): recomputed from the records
        # (seeded: the numbers summary.json holds), each candidate decided with its floor's excesses.
        return report_run(path, as_json=as_json, show=show, console=console, gates=gate_list,
                          summary_md=summary_md, title=f"servecmp gates: mcq run {path.name}")
    if kind == "mtbench":
        from servecmp._cli.mtbench import print_mtbench
        from servecmp.mtbench.run import DEFAULT_SHOW, load_result

        n = DEFAULT_SHOW if show is None else show
        # One candidate: its summary, decided as before; several: the comparison, each candidate decided.
        return print_mtbench(load_result(path, show=n), gate_list, as_json=as_json, show=n, out=console,
                             console=console, summary_md=summary_md, title=f"servecmp gates: {kind} run {path.name}")
    else:
        from servecmp.shadow.report import load_summary as load_shadow
        from servecmp.shadow.report import render as render_shadow

        summary = load_shadow(path, worst_n=SHADOW_WORST if show is None else show, n_boot=SHADOW_N_BOOT)

        def show_report() -> None:
            render_shadow(summary, console, path)
    return print_and_decide(kind, summary, gate_list, as_json=as_json, render=show_report, console=console,
                            summary_md=summary_md, candidate=None, title=f"servecmp gates: {kind} run {path.name}")


def register(app: typer.Typer) -> None:
    @app.command()
    def report(
        path: Annotated[Path, typer.Argument(
            metavar="RUN", help="An MCQ or MT-Bench run directory, or a shadow database file.")],
        as_json: Json = False,
        show: Show = None,
        gate: Gate = None,
        summary_md: SummaryMd = None,
        config: ConfigFile = None,
    ) -> None:
        """Print a stored run's report from disk (MCQ metrics are recomputed from the records).

        With --gate (or [gate] in servecmp.toml) the run is re-decided: exit 0 pass, 1 fail, 4 inconclusive.
        """
        from rich.console import Console

        code = print_report(path, as_json=as_json, show=show, console=Console(stderr=as_json), gates=gate,
                            summary_md=summary_md, config=config)
        if code:
            raise SystemExit(code)  # not typer.Exit: main() runs click with standalone_mode=False, which swallows it
