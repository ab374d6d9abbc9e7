"""`servecmp mtbench` and `servecmp correlate`."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from servecmp.config import load_config
from servecmp.errors import UserError
from servecmp.mtbench.render import render
from servecmp.mtbench.run import RunIO, execute
from servecmp.mtbench.rundir import MtRunPaths
from servecmp.mtbench.settings import MtBenchOptions, new_settings, resumed_settings


def _categories(value: str | None) -> list[str] | None:
    if value is None:
        return None
    cats = [c.strip() for c in value.split(",") if c.strip()]
    if not cats:
        raise UserError("--categories needs at least one category name")
    return cats


def _confirm(prompt: str) -> bool:
    return typer.confirm(prompt, default=False, err=True)


def _fmt(x: float | int | None, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def register(app: typer.Typer) -> None:
    @app.command()
    def mtbench(
        questions: Annotated[
            Path | None,
            typer.Option(help="Your own question file (MT-Bench JSONL layout); default: the 80 vendored."),
        ] = None,
        references: Annotated[
            Path | None,
            typer.Option(help="Reference answers (FastChat answer layout) for math/reasoning/coding."),
        ] = None,
        limit: Annotated[int | None, typer.Option(help="Only the first N selected questions.")] = None,
        categories: Annotated[
            str | None, typer.Option(help="Comma-separated categories, e.g. math,coding,writing.")
        ] = None,
        max_tokens: Annotated[
            int | None, typer.Option(help="New tokens per answer turn (FastChat: 1024).")
        ] = None,
        baseline: Annotated[
            str | None, typer.Option(help="Baseline endpoint URL (OpenAI-compatible).")
        ] = None,
        baseline_model: Annotated[str | None, typer.Option(help="Model name at the baseline.")] = None,
        candidate: Annotated[str | None, typer.Option(help="Candidate endpoint URL.")] = None,
        candidate_model: Annotated[str | None, typer.Option(help="Model name at the candidate.")] = None,
        judge_url: Annotated[
            str | None,
            typer.Option(
                help="Judge endpoint URL (default: OpenAI), or 'baseline' for the offline demo judge."
            ),
        ] = None,
        judge_model: Annotated[
            str | None, typer.Option(help="Judge model (default gpt-4 on OpenAI).")
        ] = None,
        judge_api_key_env: Annotated[
            str | None,
            typer.Option(
                help="Name of the env var holding the judge's API key (default on OpenAI: OPENAI_API_KEY)."
            ),
        ] = None,
        judge_force_format: Annotated[
            bool | None,
            typer.Option(
                "--judge-force-format/--no-judge-force-format",
                help="Force a parseable rating (vLLM structured outputs); default: only for the demo judge.",
            ),
        ] = None,
        mode: Annotated[str | None, typer.Option(help="single, pairwise or both (default both).")] = None,
        resume: Annotated[Path | None, typer.Option(help="Finish an interrupted run (RUN_DIR).")] = None,
        show: Annotated[
            int | None, typer.Option(help="Show the N questions with the largest drop (default 5).")
        ] = None,
        max_judge_calls: Annotated[
            int | None, typer.Option(help="Make at most N new judge calls in this invocation.")
        ] = None,
        judge_rps: Annotated[float | None, typer.Option(help="Judge requests per second.")] = None,
        judge_cache: Annotated[
            str | None,
            typer.Option(
                help="Shared judgment cache directory, or 'off' (default: <servecmp cache>/judgments)."
            ),
        ] = None,
        runs_dir: Annotated[Path | None, typer.Option(help="Where run directories are created.")] = None,
        yes: Annotated[
            bool, typer.Option("--yes", "-y", help="Do not ask before paying for judge calls.")
        ] = False,
        as_json: Annotated[
            bool, typer.Option("--json", help="Print the summary as one JSON object.")
        ] = False,
        config: Annotated[Path | None, typer.Option("--config", "-c", help="servecmp.toml")] = None,
    ) -> None:
        """MT-Bench: answers from both endpoints, judged 1-10 and pairwise; score difference and drops."""
        console = Console(stderr=True)
        cfg = load_config(config)
        if max_judge_calls is not None and max_judge_calls < 0:
            raise UserError("--max-judge-calls must be 0 or more")
        opts = MtBenchOptions(
            questions=questions,
            references=references,
            limit=limit,
            categories=_categories(categories),
            max_tokens=max_tokens,
            baseline=baseline,
            baseline_model=baseline_model,
            candidate=candidate,
            candidate_model=candidate_model,
            judge_url=judge_url,
            judge_model=judge_model,
            judge_api_key_env=judge_api_key_env,
            judge_force_format=judge_force_format,
            mode=mode,
            resume=resume,
            max_judge_calls=max_judge_calls,
            judge_rps=judge_rps,
            judge_cache=judge_cache,
            runs_dir=runs_dir,
            show=show,
            yes=yes,
        )
        io = RunIO(console=console, is_tty=sys.stdin.isatty(), ask=_confirm)
        if resume is not None:
            paths = MtRunPaths(resume)
            settings, manifest = resumed_settings(paths, opts, cfg)
            result = asyncio.run(execute(settings, io, resume=(paths, manifest)))
        else:
            settings = new_settings(opts, cfg)
            root = runs_dir or Path(cfg.mtbench.runs_dir)
            result = asyncio.run(execute(settings, io, runs_root=root))
        if as_json:
            typer.echo(json.dumps(result.summary.model_dump(mode="json"), indent=2, ensure_ascii=False))
        else:
            render(Console(), result.summary, show=settings.show)
            console.print(f"run directory: {result.paths.root}", highlight=False)
