"""`servecmp mcq`: the MCQ comparison from the command line (a thin wrapper of `servecmp.mcq`).

Only stdlib, typer, the shared option types and the errors are imported at module level, so
`servecmp --help` stays fast; the service layer loads inside the command.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from servecmp._cli.common import (
    Api,
    Baseline,
    BaselineKeyEnv,
    BaselineModel,
    CandidateKeyEnvs,
    CandidateModels,
    CandidateNames,
    Candidates,
    Concurrency,
    ConfigFile,
    Gate,
    Html,
    Json,
    Limit,
    MaxConcurrency,
    NoiseFloor,
    Retries,
    Rps,
    RunsDir,
    Secondary,
    SecondaryKeyEnv,
    SecondaryModel,
    Show,
    SummaryMd,
    Timeout,
    TopK,
)
from servecmp.errors import UserError

if TYPE_CHECKING:
    from rich.console import Console

    from servecmp.gates import Gate as GateRule

#: Kept in step with servecmp.mcq.settings.ACCEPTED_ON_RESUME (a test compares them); written out
#: here so --help needs no import of the settings module.
RESUME_HELP = (
    "Finish an interrupted run (its RUN_DIR). Every setting that decides its results comes from the run's "
    "manifest and flags that would set one are refused; pacing flags apply to this invocation only (not "
    "given: the run's own). These apply: --concurrency, --max-concurrency, --rps, --timeout, --retries, --json, "
    "--show, --gate, --summary-md."
)
Resume = Annotated[Path | None, typer.Option("--resume", help=RESUME_HELP)]

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
_LMEVAL_FLAGS = ("--seed", "--json", "--show", "--gate", "--summary-md")


def register(app: typer.Typer) -> None:
    @app.command()
    def mcq(
        baseline: Baseline = None,
        candidate: Candidates = None,
        baseline_model: BaselineModel = None,
        candidate_model: CandidateModels = None,
        baseline_key_env: BaselineKeyEnv = None,
        candidate_key_env: CandidateKeyEnvs = None,
        candidate_name: CandidateNames = None,
        secondary: Secondary = None,
        secondary_model: SecondaryModel = None,
        secondary_key_env: SecondaryKeyEnv = None,
        noise_floor: NoiseFloor = None,
        task: Task = None,
        data_dir: DataDir = None,
        source: Source = None,
        fewshot: Fewshot = None,
        fewshot_file: FewshotFile = None,
        limit: Limit = None,
        sample: Sample = None,
        seed: Seed = None,
        top_k: TopK = None,
        api: Api = None,
        concurrency: Concurrency = None,
        max_concurrency: MaxConcurrency = None,
        rps: Rps = None,
        timeout: Timeout = None,
        retries: Retries = None,
        runs_dir: RunsDir = None,
        resume: Resume = None,
        from_lm_eval: FromLmEval = None,
        gate: Gate = None,
        summary_md: SummaryMd = None,
        html: Html = None,
        as_json: Json = False,
        show: Show = None,
        config: ConfigFile = None,
    ) -> None:
        """Compare a baseline with one or several candidates on a multiple-choice task: accuracy, flips,
        KL divergence, top margin; with --secondary / --noise-floor, each endpoint against itself."""
        from rich.console import Console

        from servecmp.mcq.settings import McqOptions

        opts = McqOptions(
            baseline=baseline, candidate=candidate or None, baseline_model=baseline_model,
            candidate_model=candidate_model or None, baseline_key_env=baseline_key_env,
            candidate_key_env=candidate_key_env or None, candidate_name=candidate_name or None,
            secondary=secondary, secondary_model=secondary_model, secondary_key_env=secondary_key_env,
            noise_floor=noise_floor, task=task, data_dir=data_dir, source=source, fewshot=fewshot,
            fewshot_file=fewshot_file, limit=limit, sample=sample, seed=seed, top_k=top_k, api=api,
            concurrency=concurrency, max_concurrency=max_concurrency, rps=rps, timeout=timeout, retries=retries,
            runs_dir=runs_dir,
            resume=resume, config=config,
        )
        # Progress and messages go to stderr with --json, so stdout is only the JSON object.
        console = Console(stderr=as_json)
        from servecmp.finish import Output, check_outputs, finish
        from servecmp.verdicts import resolve_gates

        out = Output(as_json=as_json, show=show, html=html, summary_md=summary_md, title="servecmp mcq gates")
        check_outputs(out)  # before the run, not after an hour of it

        if from_lm_eval is not None:
            from servecmp.mcq.summary import summarize_lmeval
            from servecmp.mcq.view import McqView

            given = [f"--{name.replace('_', '-')}" for name, value in vars(opts).items()
                     if value is not None and name != "seed"]
            if given:
                raise UserError(f"--from-lm-eval reads two sample logs and calls no endpoint; "
                                f"{', '.join(given)} do not apply to it (only {', '.join(_LMEVAL_FLAGS)} do)")
            gates = resolve_gates("mcq", gate, None)
            summary = summarize_lmeval(from_lm_eval[0], from_lm_eval[1], seed=seed or 0)
            from servecmp.mcq.compare import comparison_from_summary
            from servecmp.mcq.view import ItemText, view_from_records
            from servecmp.tasks.lmeval_import import item_texts, load_lmeval_pair

            comparison = comparison_from_summary(summary)
            if html is not None:
                # No run directory: the item list comes from the logs themselves (read again; only with --html).
                base, cand, _ = load_lmeval_pair(from_lm_eval[0], from_lm_eval[1])
                texts = {k: ItemText(q, list(o)) for k, (q, o) in item_texts(from_lm_eval[0]).items()}
                view = view_from_records(comparison, [*base, *cand], texts=texts)
            else:
                view = McqView(comparison=comparison)
        else:
            from servecmp.mcq.run import run_mcq
            from servecmp.mcq.settings import new_settings, resumed_settings
            from servecmp.mcq.view import load_view

            if resume is not None:
                settings, manifest = resumed_settings(opts)
                gates = resolve_gates("mcq", gate, None)
                result = run_mcq(settings, console, resume=(resume, manifest))
            else:
                from servecmp.config import load_config

                cfg = load_config(config)
                gates = resolve_gates("mcq", gate, cfg)
                result = run_mcq(new_settings(opts, cfg), console)
            view = load_view(result.run_dir, result.comparison)
        code = finish("mcq", view, gates, out, console)
        if code:
            # SystemExit, not typer.Exit: click returns typer.Exit's code in standalone_mode=False.
            raise SystemExit(code)


def report_run(path: Path, *, as_json: bool, show: int | None, console: Console, gates: Sequence[GateRule],
               summary_md: Path | None, title: str = "servecmp mcq gates", html: Path | None = None) -> int:
    """`servecmp report RUN_DIR` for an MCQ run of any shape (one or several candidates, a noise
    floor): recomputed from the records, printed, every candidate decided; nothing written into it.
    Returns the exit code (0 without gates)."""
    from servecmp.finish import Output, adapter, finish

    out = Output(as_json=as_json, show=show, html=html, summary_md=summary_md, title=title)
    return finish("mcq", adapter("mcq").load(path, show=show), gates, out, console)
