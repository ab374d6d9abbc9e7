"""The shared flag groups: typer signatures assembled by `with_options`, options built by `from_flags`."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any

import pytest
import typer
from typer.testing import CliRunner

from servecmp._cli import common as opt
from servecmp._cli.main import build_app
from servecmp.gen.settings import GenOptions
from servecmp.mcq.settings import McqOptions
from servecmp.mtbench.settings import MtBenchOptions
from servecmp.options import PacingOptions

# A command's own parameter, declared as typer declares any (`opt.option` builds the same).
Own = Annotated[int | None, typer.Option("--own", help="A command's own flag.")]


def _toy() -> tuple[typer.Typer, list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []
    app = typer.Typer()

    @app.command()
    @opt.with_options((opt.Baseline, opt.Limit), opt.OWN, (opt.flag("as_json", opt.Json, False),), opt.Gate)
    def toy(own: Own = None, **flags: Any) -> None:
        seen.append({"own": own, **flags})

    @app.callback()
    def _root() -> None:  # keeps "toy" a named subcommand
        pass

    return app, seen


def test_with_options_orders_groups_around_the_commands_own_flags() -> None:
    app, seen = _toy()
    command = typer.main.get_command(app).commands["toy"]  # type: ignore[attr-defined]
    assert [p.name for p in command.params] == ["baseline", "limit", "own", "as_json", "gate"]
    result = CliRunner().invoke(app, ["toy", "--limit", "3", "--own", "2", "--gate", "flips<=5%", "--gate", "kl<=0.1"])
    assert result.exit_code == 0, result.output
    assert seen == [{"own": 2, "baseline": None, "limit": 3, "as_json": False, "gate": ["flips<=5%", "kl<=0.1"]}]


def test_a_flag_in_two_groups_is_refused() -> None:
    with pytest.raises(TypeError, match="a flag given twice"):
        opt.with_options(opt.Limit, (opt.Limit,))(lambda **flags: None)


def test_from_flags_takes_its_own_fields_and_reads_an_empty_repeat_as_not_given() -> None:
    flags = {"baseline": "http://b:1", "candidate": [], "gate": ["flips<=5%"], "as_json": True, "seed": 3,
             "limit": None, "from_lm_eval": None}
    assert McqOptions.from_flags(flags) == McqOptions(baseline="http://b:1", seed=3)
    assert MtBenchOptions.from_flags({**flags, "yes": True}) == MtBenchOptions(baseline="http://b:1", yes=True)


def test_given_names_the_flags_in_field_order() -> None:
    opts = GenOptions(sample=5, baseline="http://b:1", concurrency="auto", candidate=["http://c:1"])
    assert opts.given() == ["--baseline", "--candidate", "--concurrency", "--sample"]


def test_pacing_flags_map_to_endpoint_fields() -> None:
    pacing = PacingOptions(concurrency=8, rps=2.5, retries=0)
    assert pacing.endpoint_pacing() == {"max_concurrency": 8, "concurrency_cap": None, "requests_per_second": 2.5,
                                        "timeout_s": None, "max_retries": 0}
    assert pacing.given_pacing() == {"max_concurrency": 8, "requests_per_second": 2.5, "max_retries": 0}


def _params(*path: str) -> set[str]:
    command: Any = typer.main.get_command(build_app())
    for name in path:
        command = command.commands[name]
    return {p.name for p in command.params}


OUTPUT = {"gate", "summary_md", "html", "as_json"}


@pytest.mark.parametrize(("command", "options", "outside", "unset"), [
    ("mcq", McqOptions, OUTPUT | {"show", "from_lm_eval"}, set()),
    ("gen", GenOptions, OUTPUT | {"show", "from_lm_eval"}, set()),
    # MT-Bench keeps --show in its settings; its old --judge-api-key-env is read into judge_key_env;
    # it has no --max-concurrency.
    ("mtbench", MtBenchOptions, OUTPUT | {"judge_api_key_env"}, {"max_concurrency"}),
])
def test_every_flag_lands_in_the_options_or_the_output(command: str, options: type, outside: set[str],
                                                       unset: set[str]) -> None:
    """A flag that neither the options nor the output read would be dropped silently by from_flags."""
    params, names = _params(command), {f.name for f in fields(options)}
    assert params - names == outside
    assert names - params == unset


def test_output_is_built_from_the_output_flags(tmp_path: Path) -> None:
    out = opt.output({"as_json": True, "show": None, "html": tmp_path / "r.html", "summary_md": None, "gate": None},
                     title="t", show=7)
    assert (out.as_json, out.show, out.html, out.summary_md, out.title) == (True, 7, tmp_path / "r.html", None, "t")
