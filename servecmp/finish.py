"""One finish step for every run kind: loaded result -> verdicts -> terminal / JSON / HTML / Markdown -> exit code.

Every command that ends a run (`mcq`, `mtbench`, `gen`, `shadow report`, `report`, `demo`) hands its
result to `finish()` with the user's output options (`Output`). What differs between kinds lives in
one adapter per kind (`RunKind`, the module attribute ``ADAPTER`` of ``servecmp.<kind>.kind``): how
to load a stored run, how to decide its gates (one verdict per candidate), and how to render it. Kind
detection (`detect_kind`), the defaults and the verdict computation therefore exist once each; a new
run kind implements one adapter (docs/adding-a-run-kind.md) and registers its name in `KINDS`.

Order of output, the same for every kind: the JSON object on stdout (``--json``, with a ``verdict``
key when gates apply) or the terminal report; the kind's epilogue (MCQ: stored baseline, cost,
sequential looks); the HTML file; the verdict block and the Markdown.
Exit code: the verdict's (0 pass, 1 fail, 4 inconclusive), 0 without gates and ``--summary-md``.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from servecmp.errors import UserError

if TYPE_CHECKING:
    from rich.console import Console

    from servecmp.gates import Gate, Verdict

#: Every run kind, by the name its manifest (or database) carries.
KINDS = ("mcq", "mtbench", "gen", "shadow")


class RunKind(Protocol):
    """What a run kind provides to the finish step. ``result`` is the kind's own typed object."""

    name: str

    def load(self, target: Path | str, *, show: int | None) -> Any:
        """A stored run, read-only (nothing under ``target`` is written)."""

    def verdicts(self, result: Any, gates: Sequence[Gate]) -> list[Verdict]:
        """One verdict per candidate (no gates: the notes only)."""

    def to_json(self, result: Any) -> dict[str, Any]:
        """The typed summary as JSON data (its ``schema`` key names kind and version)."""

    def render(self, result: Any, console: Console, *, show: int | None,
               verdicts: Sequence[Verdict] | None) -> None:
        """The terminal report."""

    def epilogue(self, result: Any, console: Console, *, as_json: bool, gates: Sequence[Gate]) -> None:
        """What the kind adds after its report (on ``console``; stderr with --json), or nothing."""

    def html(self, result: Any, verdicts: Sequence[Verdict]) -> str:
        """The self-contained HTML page."""


def adapter(kind: str) -> RunKind:
    if kind not in KINDS:
        raise UserError(f"unknown run kind {kind!r} (servecmp knows {', '.join(KINDS)})")
    found: RunKind = importlib.import_module(f"servecmp.{kind}.kind").ADAPTER
    return found


def detect_kind(target: Path | str) -> str:
    """The kind of a stored run: a run directory's manifest kind, or "shadow" for an SQLite file or a
    postgresql:// URL. One-line UserError for anything else."""
    from servecmp.shadow.store import is_postgres, is_sqlite_file

    if is_postgres(target):
        return "shadow"
    path = Path(target)
    if is_sqlite_file(path):
        return "shadow"
    if path.is_file():
        raise UserError(f"{path} is neither a run directory nor a shadow database")
    if not path.is_dir():
        raise UserError(f"{path} not found")
    from servecmp.runstore import MANIFEST, manifest_kind

    kind = manifest_kind(path)
    dirs = [k for k in KINDS if k != "shadow"]
    if kind not in dirs:
        raise UserError(f"{path / MANIFEST}: unknown run kind {kind!r} (servecmp report reads "
                        f"{', '.join(dirs[:-1])} and {dirs[-1]} runs)")
    return str(kind)


@dataclass(frozen=True)
class Output:
    """The user's output options, the same flags in every command."""

    as_json: bool = False
    show: int | None = None
    html: Path | None = None
    summary_md: Path | None = None
    #: The verdict block's title (also the Markdown heading).
    title: str = "servecmp gates"


def check_outputs(out: Output) -> None:
    """Refuse an unwritable --html before a long run, not after it."""
    if out.html is not None:
        from servecmp.html import check_writable

        check_writable(out.html)


def finish(kind: str, result: Any, gates: Sequence[Gate], out: Output, console: Console) -> int:
    """Print, write and decide a run's result; returns the exit code."""
    from servecmp.verdicts import emit_verdict, wants_verdict, with_verdict

    a = adapter(kind)
    verdicts = a.verdicts(result, gates) if wants_verdict(gates, out.summary_md) else None
    if out.as_json:
        one: Verdict | list[Verdict] | None = None
        if verdicts is not None:
            one = verdicts[0] if len(verdicts) == 1 else list(verdicts)
        _echo(json.dumps(with_verdict(a.to_json(result), one), indent=2, ensure_ascii=False))
    else:
        a.render(result, console, show=out.show, verdicts=verdicts)
    a.epilogue(result, console, as_json=out.as_json, gates=gates)
    if out.html is not None:
        from servecmp.html import write_html

        write_html(out.html, a.html(result, verdicts if verdicts is not None else a.verdicts(result, gates)))
    if verdicts is None:
        return 0
    return emit_verdict(verdicts, console=console, summary_md=out.summary_md, title=out.title)


def report(target: Path | str, gates: Sequence[str] | None, config: Path | None, out: Output,
           console: Console) -> int:
    """`servecmp report RUN`: any stored run, decided again, without calling an endpoint."""
    from servecmp.verdicts import resolve_gates

    kind = detect_kind(target)
    # Bad expressions and a bad --html fail here, with one line, before anything is loaded.
    rules = resolve_gates(kind, gates, config)
    check_outputs(out)
    result = adapter(kind).load(target, show=out.show)
    return finish(kind, result, rules, out, console)


def run_html(path: Path | str, gates: Sequence[Gate] = (), *, kind: str | None = None, show: int | None = None,
             verdicts: Sequence[Verdict] | None = None) -> str:
    """The HTML page of any stored run (``kind`` as `detect_kind` finds it, unless given). Reads only."""
    a = adapter(kind or detect_kind(path))
    result = a.load(path, show=show)
    return a.html(result, a.verdicts(result, gates) if verdicts is None else verdicts)


def _echo(text: str) -> None:
    import typer

    typer.echo(text)
