"""`servecmp report PATH`: print any stored run from disk, with no endpoint and no key.

PATH is an MCQ run directory (manifest kind "mcq": every metric recomputed from its records), a gen
run directory (kind "gen": recomputed from its records by `servecmp.gen.summary.load_result`), an
MT-Bench run directory (kind "mtbench") or a shadow database (an SQLite file, or a ``postgresql://``
or ``postgres://`` URL, read as `servecmp shadow report URL` reads it). `--json` prints the kind's
typed summary as one JSON object; `--show N` sets how many worst items/questions/requests the
report lists. `--html FILE` also writes the report as one self-contained HTML file (`servecmp.html`).

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

from servecmp._cli.common import ConfigFile, Gate, Html, Json, Show, SummaryMd, print_and_decide
from servecmp.errors import UserError

if TYPE_CHECKING:
    from rich.console import Console

#: The first 16 bytes of every SQLite 3 database file.
SQLITE_MAGIC = b"SQLite format 3\x00"
#: Shadow's defaults, the same as `servecmp shadow report`'s (MT-Bench's is its DEFAULT_SHOW).
SHADOW_WORST = 10
SHADOW_N_BOOT = 2000


def run_kind(path: Path | str) -> str:
    """"mcq", "mtbench" or "shadow" for a stored run; one-line UserError for anything else."""
    from servecmp.shadow.store import is_postgres

    if is_postgres(path):
        return "shadow"
    path = Path(path)
    if path.is_file():
        with path.open("rb") as fh:
            if fh.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC:
                return "shadow"
        raise UserError(f"{path} is neither a run directory nor a shadow database")
    if not path.is_dir():
        raise UserError(f"{path} not found")
    from servecmp.runstore import MANIFEST, manifest_kind

    kind = manifest_kind(path)
    if kind not in ("mcq", "mtbench", "gen"):
        raise UserError(f"{path / MANIFEST}: unknown run kind {kind!r} (servecmp report reads mcq, mtbench and gen "
                        "runs)")
    return str(kind)


def print_report(path: Path | str, *, as_json: bool, show: int | None, console: Console,
                 gates: list[str] | None = None, summary_md: Path | None = None,
                 config: Path | None = None, html: Path | None = None) -> int:
    """Print the stored run at ``path``; decide its gates when any apply; with ``html``, also write
    the report as one HTML file (servecmp.html). Returns the exit code."""
    from servecmp.shadow.store import is_postgres, redact_target
    from servecmp.verdicts import resolve_gates

    kind = run_kind(path)
    # A URL stays a string (a Path would fold its "//"); its name in titles has no password.
    name = redact_target(path) if is_postgres(path) else Path(path).name
    target = path if is_postgres(path) else Path(path)
    # Bad expressions fail here, with one line, before any metric is computed.
    gate_list = resolve_gates(kind, gates, config)
    if html is not None:
        from servecmp.html import check_writable

        check_writable(html)
    summary: Any
    if kind == "mcq":
        from servecmp._cli.mcq import report_run

        # Every shape of MCQ run (one or several candidates, a noise floor): recomputed from the records
        # (seeded: the numbers summary.json holds), each candidate decided with its floor's excesses.
        return report_run(Path(path), as_json=as_json, show=show, console=console, gates=gate_list,
                          summary_md=summary_md, title=f"servecmp gates: mcq run {name}", html=html)
    if kind == "gen":
        from servecmp._cli.gen import report_run as report_gen

        return report_gen(Path(path), as_json=as_json, show=show, console=console, gates=gate_list,
                          summary_md=summary_md, html=html, title=f"servecmp gates: gen run {name}")
    if kind == "mtbench":
        from servecmp._cli.mtbench import print_mtbench
        from servecmp.mtbench.run import DEFAULT_SHOW, load_result

        n = DEFAULT_SHOW if show is None else show
        # One candidate: its summary, decided as before; several: the comparison, each candidate decided.
        result = load_result(Path(path), show=n)
        if html is not None:
            from servecmp.html import mtbench_verdicts, render_mtbench, write_html

            write_html(html, render_mtbench(result, run_dir=Path(path), verdicts=mtbench_verdicts(result, gate_list)))
        return print_mtbench(result, gate_list, as_json=as_json, show=n, out=console,
                             console=console, summary_md=summary_md, title=f"servecmp gates: {kind} run {name}")
    else:
        from servecmp.shadow.report import load_summary as load_shadow
        from servecmp.shadow.report import render as render_shadow

        summary = load_shadow(target, worst_n=SHADOW_WORST if show is None else show, n_boot=SHADOW_N_BOOT)
        if html is not None:
            from servecmp.html import shadow_html

            shadow_html(html, summary, target, gate_list)

        def show_report() -> None:
            render_shadow(summary, console, target)
    return print_and_decide(kind, summary, gate_list, as_json=as_json, render=show_report, console=console,
                            summary_md=summary_md, candidate=None, title=f"servecmp gates: {kind} run {name}")


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
