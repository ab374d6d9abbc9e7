"""`servecmp mtbench`: answers from both endpoints, judged, compared.

Only stdlib, typer and servecmp's shared CLI pieces are imported here at module level, so
`servecmp --help` does not pay for pydantic, rich tables or the OpenAI SDK; the work is imported
inside the command.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from servecmp._cli import common as opt
from servecmp._cli.common import legacy_option, renamed
from servecmp.errors import UserError

if TYPE_CHECKING:

    pass


class ModeChoice(StrEnum):
    """--mode: typer checks the choice, so a typo fails in the parser with one line."""

    single = "single"
    pairwise = "pairwise"
    both = "both"


#: Kept in step with servecmp.mtbench.settings.ACCEPTED_ON_RESUME (a test compares them); written
#: out here so --help needs no import of the settings module.
RESUME_HELP = (
    "With --resume RUN_DIR every setting comes from the run's manifest and flags that would change "
    "the comparison are refused. These apply: --mode, --concurrency, --rps, --timeout, --retries, "
    "--judge-rps, --max-judge-calls, --judge-cache, --show, --json, --yes, -c/--config (only for "
    "[judge] max_judge_calls and cache_dir, [mtbench] show)."
)


def _categories(value: str | None) -> list[str] | None:
    if value is None:
        return None
    cats = [c.strip() for c in value.split(",") if c.strip()]
    if not cats:
        raise UserError("--categories needs at least one category name")
    return cats


def _confirm(prompt: str) -> bool:
    return typer.confirm(prompt, default=False, err=True)


def register(app: typer.Typer) -> None:
    @app.command(epilog=RESUME_HELP)
    def mtbench(
        baseline: opt.Baseline = None,
        candidate: opt.Candidates = None,
        baseline_model: opt.BaselineModel = None,
        candidate_model: opt.CandidateModels = None,
        baseline_key_env: opt.BaselineKeyEnv = None,
        candidate_key_env: opt.CandidateKeyEnvs = None,
        candidate_name: opt.CandidateNames = None,
        questions: Annotated[
            Path | None,
            typer.Option(help="Your own question file (MT-Bench JSONL layout); default: the 80 vendored."),
        ] = None,
        references: Annotated[
            Path | None,
            typer.Option(help="Reference answers (FastChat answer layout) for math/reasoning/coding."),
        ] = None,
        categories: Annotated[
            str | None, typer.Option(help="Comma-separated categories, e.g. math,coding,writing.")
        ] = None,
        limit: opt.Limit = None,
        max_tokens: Annotated[
            int | None, typer.Option(min=1, help="New tokens per answer turn (FastChat: 1024).")
        ] = None,
        concurrency: opt.Concurrency = None,
        rps: opt.Rps = None,
        timeout: opt.Timeout = None,
        retries: opt.Retries = None,
        judge_url: Annotated[
            str | None,
            typer.Option(
                help="Judge endpoint URL (default: OpenAI), or 'baseline' for the offline demo judge."
            ),
        ] = None,
        judge_model: Annotated[
            str | None, typer.Option(help="Judge model (default gpt-4 on OpenAI).")
        ] = None,
        judge_key_env: Annotated[
            str | None,
            typer.Option(
                "--judge-key-env",
                help="Name of the env var holding the judge's API key (default on OpenAI: OPENAI_API_KEY).",
            ),
        ] = None,
        judge_api_key_env: Annotated[str | None, legacy_option("--judge-api-key-env", "--judge-key-env")] = None,
        judge_force_format: Annotated[
            bool | None,
            typer.Option(
                "--judge-force-format/--no-judge-force-format",
                help="Force a parseable rating (vLLM structured outputs); default: only for the demo judge.",
            ),
        ] = None,
        mode: Annotated[
            ModeChoice | None,
            typer.Option(case_sensitive=False, help="Single-answer grading, pairwise, or both (default both)."),
        ] = None,
        max_judge_calls: Annotated[
            int | None, typer.Option(min=0, help="Make at most N new judge calls in this invocation.")
        ] = None,
        judge_rps: Annotated[float | None, typer.Option(help="Judge requests per second, at most.")] = None,
        judge_cache: Annotated[
            str | None,
            typer.Option(
                help="Shared judgment cache directory, or 'off' (default: <servecmp cache>/judgments)."
            ),
        ] = None,
        yes: Annotated[
            bool, typer.Option("--yes", "-y", help="Do not ask before paying for judge calls.")
        ] = False,
        show: opt.Show = None,
        as_json: opt.Json = False,
        gate: opt.Gate = None,
        summary_md: opt.SummaryMd = None,
        html: opt.Html = None,
        runs_dir: opt.RunsDir = None,
        resume: opt.Resume = None,
        config: opt.ConfigFile = None,
    ) -> None:
        """MT-Bench: answers from the baseline and one or several candidates, judged 1-10 and pairwise;
        score difference and drops per candidate."""
        import sys

        from rich.console import Console

        from servecmp.config import load_config
        from servecmp.mtbench.run import RunIO, run_blocking
        from servecmp.mtbench.rundir import MtRunPaths
        from servecmp.mtbench.settings import MtBenchOptions, new_settings, resumed_settings
        from servecmp.verdicts import resolve_gates

        console = Console(stderr=True)
        cfg = load_config(config)
        # Checked before any request: a bad expression must not cost a run.
        gates = resolve_gates("mtbench", gate, cfg)
        if html is not None:
            from servecmp.html import check_writable

            check_writable(html)  # before the run, not after it
        opts = MtBenchOptions(
            questions=questions,
            references=references,
            limit=limit,
            categories=_categories(categories),
            max_tokens=max_tokens,
            baseline=baseline,
            baseline_model=baseline_model,
            baseline_key_env=baseline_key_env,
            candidate=candidate or None,
            candidate_model=candidate_model or None,
            candidate_key_env=candidate_key_env or None,
            candidate_name=candidate_name or None,
            concurrency=concurrency,
            rps=rps,
            timeout=timeout,
            retries=retries,
            judge_url=judge_url,
            judge_model=judge_model,
            judge_key_env=renamed("--judge-api-key-env", judge_api_key_env, "--judge-key-env", judge_key_env),
            judge_force_format=judge_force_format,
            mode=mode.value if mode is not None else None,
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
            result = run_blocking(settings, io, resume=(paths, manifest))
        else:
            settings = new_settings(opts, cfg)
            root = runs_dir or Path(cfg.mtbench.runs_dir)
            result = run_blocking(settings, io, runs_root=root)
        from servecmp.finish import Output, finish
        from servecmp.mtbench.kind import MtBenchResult

        out = Output(as_json=as_json, show=settings.show, html=html, summary_md=summary_md,
                     title=f"servecmp gates: mtbench run {result.paths.root.name}")
        # The report goes to stdout; with --json only the JSON does, and the verdict block to stderr.
        code = finish("mtbench", MtBenchResult(result.summary, result.paths.root, settings.show), gates, out,
                      console if as_json else Console())
        if not as_json:
            console.print(f"run directory: {result.paths.root}", highlight=False)
        if code:
            raise SystemExit(code)  # not typer.Exit: main() runs click with standalone_mode=False, which swallows it
