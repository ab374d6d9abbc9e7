"""`servecmp mcq`: the MCQ comparison from the command line (a thin wrapper of `servecmp.mcq`).

Only stdlib, typer, the shared option types and the errors are imported at module level, so
`servecmp --help` stays fast; the service layer loads inside the command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from servecmp._cli.common import (
    Baseline,
    BaselineKeyEnv,
    BaselineModel,
    Candidate,
    CandidateKeyEnv,
    CandidateModel,
    Concurrency,
    ConfigFile,
    Json,
    Limit,
    Resume,
    Retries,
    Rps,
    RunsDir,
    Show,
    Timeout,
    TopK,
)
from servecmp.errors import UserError

if TYPE_CHECKING:
    from rich.console import Console

    from servecmp.mcq.summary import McqSummary

Task = Annotated[str | None, typer.Option(
    "--task", help="mmlu, mmlu-sample, arc_easy, arc_challenge, hellaswag, piqa, winogrande, or jsonl:PATH.")]
DataDir = Annotated[str | None, typer.Option(
    "--data-dir", help="MMLU in its CSV layout (dev/, test/), or a local copy of a Hugging Face dataset.")]
Source = Annotated[str | None, typer.Option(
    "--source", help="Where MMLU comes from: csv (--data-dir), sample (vendored), hf (cais/mmlu: the hub, or "
                     "a local copy in --data-dir).")]
Fewshot = Annotated[int | None, typer.Option(
    "--fewshot", min=0, help="Exemplars per prompt: MMLU's first N dev rows (default 5), or the first N rows "
                             "of --fewshot-file.")]
FewshotFile = Annotated[str | None, typer.Option(
    "--fewshot-file", help="jsonl:PATH tasks: a file of exemplars in the same format.")]
Sample = Annotated[int | None, typer.Option(
    "--sample", min=1, help="Score a seeded random sample of N items (see --seed).")]
Seed = Annotated[int | None, typer.Option("--seed", help="Seed of --sample and of the bootstrap intervals.")]
FromLmEval = Annotated[tuple[Path, Path] | None, typer.Option(
    "--from-lm-eval", help="Compare two lm-eval --log_samples JSONL files (baseline, candidate); "
                           "no endpoint is called.")]

#: With --from-lm-eval only these change anything; other flags are refused rather than ignored.
_LMEVAL_FLAGS = ("--seed", "--json", "--show")


def print_summary(summary: McqSummary, *, as_json: bool, show: int | None, console: Console) -> None:
    """`--json`: the typed summary as one JSON object on stdout; otherwise the terminal report."""
    if as_json:
        typer.echo(json.dumps(summary.model_dump(mode="json"), indent=2))
    else:
        from servecmp.mcq.render import render_mcq_report

        render_mcq_report(summary, console, show=show)


def register(app: typer.Typer) -> None:
    @app.command()
    def mcq(
        baseline: Baseline = None,
        candidate: Candidate = None,
        baseline_model: BaselineModel = None,
        candidate_model: CandidateModel = None,
        baseline_key_env: BaselineKeyEnv = None,
        candidate_key_env: CandidateKeyEnv = None,
        task: Task = None,
        data_dir: DataDir = None,
        source: Source = None,
        fewshot: Fewshot = None,
        fewshot_file: FewshotFile = None,
        limit: Limit = None,
        sample: Sample = None,
        seed: Seed = None,
        top_k: TopK = None,
        concurrency: Concurrency = None,
        rps: Rps = None,
        timeout: Timeout = None,
        retries: Retries = None,
        runs_dir: RunsDir = None,
        resume: Resume = None,
        from_lm_eval: FromLmEval = None,
        as_json: Json = False,
        show: Show = None,
        config: ConfigFile = None,
    ) -> None:
        """Compare two endpoints on a multiple-choice task: accuracy, flips, KL divergence, top margin."""
        from rich.console import Console

        from servecmp.mcq.settings import McqOptions

        opts = McqOptions(
            baseline=baseline, candidate=candidate, baseline_model=baseline_model,
            candidate_model=candidate_model, baseline_key_env=baseline_key_env,
            candidate_key_env=candidate_key_env, task=task, data_dir=data_dir, source=source, fewshot=fewshot,
            fewshot_file=fewshot_file, limit=limit, sample=sample, seed=seed, top_k=top_k,
            concurrency=concurrency, rps=rps, timeout=timeout, retries=retries, runs_dir=runs_dir,
            resume=resume, config=config,
        )
        # Progress and messages go to stderr with --json, so stdout is only the JSON object.
        console = Console(stderr=as_json)
        if from_lm_eval is not None:
            from servecmp.mcq.summary import summarize_lmeval

            given = [f"--{name.replace('_', '-')}" for name, value in vars(opts).items()
                     if value is not None and name != "seed"]
            if given:
                raise UserError(f"--from-lm-eval reads two sample logs and calls no endpoint; "
                                f"{', '.join(given)} do not apply to it (only {', '.join(_LMEVAL_FLAGS)} do)")
            summary = summarize_lmeval(from_lm_eval[0], from_lm_eval[1], seed=seed or 0)
        else:
            from servecmp.mcq.run import run_mcq
            from servecmp.mcq.settings import new_settings, resumed_settings

            if resume is not None:
                settings, manifest = resumed_settings(opts)
                result = run_mcq(settings, console, resume=(resume, manifest))
            else:
                from servecmp.config import load_config

                result = run_mcq(new_settings(opts, load_config(config)), console)
            summary = result.summary
        print_summary(summary, as_json=as_json, show=show, console=console)
