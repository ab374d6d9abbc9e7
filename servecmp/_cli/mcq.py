"""`servecmp mcq`: the MCQ comparison from the command line (a thin wrapper of `servecmp.mcq`).

Only stdlib, typer, the shared option types and the errors are imported at module level, so
`servecmp --help` stays fast; the service layer loads inside the command.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from servecmp._cli import common as opt
from servecmp.errors import UserError

if TYPE_CHECKING:
    from rich.console import Console

    from servecmp.gates import Gate as GateRule
    from servecmp.mcq.settings import McqOptions, SequentialPlan

#: Kept in step with servecmp.mcq.settings.ACCEPTED_ON_RESUME (a test compares them); written out
#: here so --help needs no import of the settings module.
RESUME_HELP = (
    "Finish an interrupted run (its RUN_DIR). Every setting that decides its results comes from the run's "
    "manifest and flags that would set one are refused; pacing flags apply to this invocation only (not "
    "given: the run's own). These apply: --concurrency, --max-concurrency, --rps, --timeout, --retries, --json, "
    "--show, --gate, --summary-md."
)
Resume = opt.option("--resume", Path, RESUME_HELP)

Task = opt.option("--task", str, "mmlu, mmlu-sample, arc_easy, arc_challenge, hellaswag, piqa, winogrande, or "
                  "jsonl:PATH.")
DataDir = opt.option("--data-dir", str, "MMLU in its CSV layout (dev/, test/), or a local copy of a Hugging Face "
                     "dataset.")
Source = opt.option("--source", str, "Where MMLU comes from: csv (--data-dir), sample (vendored), hf (cais/mmlu: the "
                    "hub, or a local copy in --data-dir).")
Fewshot = opt.option("--fewshot", int, "Exemplars per prompt: MMLU's first N dev rows (default 5), or the first N "
                     "rows of --fewshot-file.", min=0)
FewshotFile = opt.option("--fewshot-file", str, "jsonl:PATH tasks: a file of exemplars in the same format.")
Sample = opt.option("--sample", int, "Score a seeded random sample of N items (see --seed).", min=1)
Seed = opt.option("--seed", int, "Seed of --sample and of the bootstrap intervals.")
FromLmEval = opt.option("--from-lm-eval", tuple[Path, Path], "Compare two lm-eval --log_samples JSONL files "
                        "(baseline, candidate); no endpoint is called.")

UntilDecided = opt.option("--until-decided", bool, "Score items in a seeded random order, a batch at a time, and "
                          "stop asking a candidate once its verdict is decided on anytime-valid intervals (a gate "
                          "FAILs, or every gate PASSes); needs --gate.")
Batch = opt.option("--batch", int, "--until-decided: items per look (default 20).", min=1)
Budget = opt.option("--budget", int, "--until-decided: at most N requests per candidate.", min=1)

#: With --from-lm-eval only these change anything; other flags are refused rather than ignored.
_LMEVAL_FLAGS = ("--seed", "--json", "--show", "--gate", "--summary-md")


def sequential_plan(opts: McqOptions, gates: Sequence[GateRule], secondary: bool) -> SequentialPlan:
    """The --until-decided plan of a new run; UserError (one line) for flags that do not go with it."""
    from servecmp.mcq.sequential import check_gates
    from servecmp.mcq.settings import DEFAULT_BATCH, SequentialPlan

    if not opts.until_decided:
        raise UserError("--batch and --budget apply to --until-decided only")
    if secondary or opts.noise_floor:
        raise UserError("--until-decided does not run a noise floor (--secondary, --noise-floor): measure it in a "
                        "fixed-n run")
    check_gates(gates)
    return SequentialPlan(gates=[g.expr for g in gates], batch=opts.batch or DEFAULT_BATCH, budget=opts.budget)


def stored_opts(opts: McqOptions) -> tuple[McqOptions, bool]:
    """The flags of a new run with --baseline-run / --baseline-only (UserError, one line, for flags
    that do not go together), and whether a live baseline is given to re-check."""
    live = opts.check_stored_flags(**{"--until-decided": bool(opts.until_decided)})
    if opts.baseline_run is None:
        return opts, live
    from dataclasses import replace

    from servecmp.mcq.stored import read_stored, stored_options

    manifest, _ = read_stored(opts.baseline_run)
    opts = stored_options(opts, manifest)
    base = manifest.endpoint("baseline")
    if not live:
        opts = replace(opts, baseline=base.base_url, baseline_model=base.model)
    return opts, live


#: The flags of `servecmp mcq`, in --help order.
FLAGS = (opt.ENDPOINTS, opt.NOISE_FLOOR, Task, DataDir, Source, Fewshot, FewshotFile, opt.Limit, Sample, Seed,
         opt.TopK, opt.Api, opt.PACING, opt.RunsDir, Resume, FromLmEval, opt.OUTPUT, opt.ConfigFile, UntilDecided,
         Batch, Budget, opt.STORED_BASELINE)


def register(app: typer.Typer) -> None:
    @app.command()
    @opt.with_options(*FLAGS)
    def mcq(**flags: Any) -> None:
        """Compare a baseline with one or several candidates on a multiple-choice task: accuracy, flips,
        KL divergence, top margin; with --secondary / --noise-floor, each endpoint against itself."""
        from rich.console import Console

        from servecmp.mcq.settings import McqOptions

        opts = McqOptions.from_flags(flags)
        resume, gate, html, as_json, seed = opts.resume, flags["gate"], flags["html"], flags["as_json"], opts.seed
        from_lm_eval = flags["from_lm_eval"]
        # Progress and messages go to stderr with --json, so stdout is only the JSON object.
        console = Console(stderr=as_json)
        from servecmp.finish import check_outputs, finish
        from servecmp.verdicts import resolve_gates

        out = opt.output(flags, title="servecmp mcq gates")
        check_outputs(out)  # before the run, not after an hour of it

        if from_lm_eval is not None:
            from servecmp.mcq.summary import summarize_lmeval
            from servecmp.mcq.view import McqView

            given = [f for f in opts.given() if f != "--seed"]
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
                if not gates and manifest.until_decided is not None:
                    gates = manifest.until_decided.parsed()  # the gates that stop the run decide it too
                result = run_mcq(settings, console, resume=(resume, manifest))
            else:
                from servecmp.config import load_config

                cfg = load_config(opts.config)
                gates = resolve_gates("mcq", gate, cfg)
                opts, live = stored_opts(opts)
                settings = new_settings(opts, cfg)
                if opts.baseline_run is not None:
                    settings.baseline_run, settings.live_baseline = opts.baseline_run, live
                    settings.baseline_check = opts.baseline_check or settings.baseline_check
                settings.baseline_only = bool(opts.baseline_only)
                if opts.until_decided or opts.batch is not None or opts.budget is not None:
                    settings.until_decided = sequential_plan(opts, gates, settings.secondary is not None)
                result = run_mcq(settings, console)
            if result.comparison is None:
                console.print(f"baseline profile: {result.run_dir}; compare candidates with it: servecmp mcq "
                              f"--baseline-run {result.run_dir} --candidate URL", highlight=False)
                return
            view = load_view(result.run_dir, result.comparison)
        code = finish("mcq", view, gates, out, console)
        if code:
            # SystemExit, not typer.Exit: click returns typer.Exit's code in standalone_mode=False.
            raise SystemExit(code)


def report_run(path: Path, *, as_json: bool, show: int | None, console: Console, gates: Sequence[GateRule],
               summary_md: Path | None, title: str = "servecmp mcq gates", html: Path | None = None) -> int:
    """`servecmp report RUN_DIR` for an MCQ run of any shape (one or several candidates, a noise
    floor, --until-decided): recomputed from the records, printed, every candidate decided; nothing
    written into it. Returns the exit code (0 without gates)."""
    from servecmp.finish import Output, adapter, finish

    out = Output(as_json=as_json, show=show, html=html, summary_md=summary_md, title=title)
    return finish("mcq", adapter("mcq").load(path, show=show), gates, out, console)
