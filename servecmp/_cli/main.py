"""The `servecmp` command line. Each command family lives in its own module and registers here.

All user-facing failures go through `main()`: a `ServecmpError` becomes one line on stderr and a
non-zero exit; Ctrl-C says where the finished work is and exits 130.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from servecmp.errors import ServecmpError

err_console = Console(stderr=True)


#: One module per command (or command group), each with a `register(app)`.
COMMANDS = ("mcq", "report", "mtbench", "correlate", "serve", "demo", "shadow", "gen")


def build_app() -> typer.Typer:
    """The whole `servecmp` command line (tests invoke it with typer's CliRunner)."""
    app = typer.Typer(
        name="servecmp",
        help="Tell whether a quantized LLM endpoint may replace its baseline.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        # Help texts quote URLs like http://host[/v1]; rich markup would read the brackets as tags.
        rich_markup_mode=None,
    )
    for name in COMMANDS:
        importlib.import_module(f"servecmp._cli.{name}").register(app)
    return app


def main() -> None:
    app = build_app()
    try:
        # Outside standalone mode click returns a typer.Exit's code instead of exiting with it.
        code = app(standalone_mode=False)
    except ServecmpError as exc:
        # escape(): messages quote user input and log tails, where brackets are not rich markup.
        err_console.print(f"[bold red]servecmp: error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("servecmp: interrupted; finished items are saved (resume with --resume RUN_DIR)")
        sys.exit(130)
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", getattr(exc, "code", 0))
        sys.exit(code or 0)
    except Exception as exc:  # usage errors arrive here in standalone_mode=False
        ex = _click_exceptions()
        if isinstance(exc, ex.ClickException):
            hint = " (see --help)" if isinstance(exc, ex.UsageError) else ""
            err_console.print(f"[bold red]servecmp: error:[/] {escape(' '.join(exc.format_message().split()))}{hint}",
                              highlight=False, soft_wrap=True)
            sys.exit(exc.exit_code)
        # Abort is click's (typer re-exports it); not every vendored copy has it in `exceptions`.
        abort = getattr(ex, "Abort", None)
        if abort is not None and isinstance(exc, abort):
            err_console.print("servecmp: aborted")
            sys.exit(130)
        raise
    sys.exit(code if isinstance(code, int) else 0)


def _click_exceptions() -> Any:
    # Recent typer vendors click as typer._click; older ones use click itself.
    try:
        from typer._click import exceptions
    except ImportError:  # pragma: no cover - depends on the installed typer
        from click import exceptions  # type: ignore[no-redef]
    return exceptions


if __name__ == "__main__":
    main()
