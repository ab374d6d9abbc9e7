"""`servecmp mtbench`: answers from both endpoints, judged, compared.

Only stdlib, typer and servecmp's shared CLI pieces are imported here at module level, so
`servecmp --help` does not pay for pydantic, rich tables or the OpenAI SDK; the work is imported
inside the command.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any

import typer

from servecmp._cli import common as opt
from servecmp._cli.common import renamed
from servecmp.errors import UserError


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


Questions = opt.option("--questions", Path, "Your own question file (MT-Bench JSONL layout); default: the 80 "
                       "vendored.")
References = opt.option("--references", Path, "Reference answers (FastChat answer layout) for math/reasoning/coding.")
Categories = opt.option("--categories", str, "Comma-separated categories, e.g. math,coding,writing.")
MaxTokens = opt.option("--max-tokens", int, "New tokens per answer turn (FastChat: 1024).", min=1)
JudgeUrl = opt.option("--judge-url", str, "Judge endpoint URL (default: OpenAI), or 'baseline' for the offline demo "
                      "judge.")
JudgeModel = opt.option("--judge-model", str, "Judge model (default gpt-4 on OpenAI).")
JudgeKeyEnv = opt.option("--judge-key-env", str, "Name of the env var holding the judge's API key (default on "
                         "OpenAI: OPENAI_API_KEY).")
OldJudgeKeyEnv = opt.legacy("--judge-api-key-env", "--judge-key-env", str)
JudgeForceFormat = opt.option("--judge-force-format/--no-judge-force-format", bool, "Force a parseable rating (vLLM "
                              "structured outputs); default: only for the demo judge.")
Mode = opt.option("--mode", ModeChoice, "Single-answer grading, pairwise, or both (default both).",
                  case_sensitive=False)
MaxJudgeCalls = opt.option("--max-judge-calls", int, "Make at most N new judge calls in this invocation.", min=0)
JudgeRps = opt.option("--judge-rps", float, "Judge requests per second, at most.")
JudgeCache = opt.option("--judge-cache", str, "Shared judgment cache directory, or 'off' (default: <servecmp "
                        "cache>/judgments).")
Yes = opt.switch(("--yes", "-y"), "Do not ask before paying for judge calls.")

#: The flags of `servecmp mtbench`, in --help order (no --max-concurrency: MT-Bench's concurrency is a
#: fixed number unless "auto" is given).
FLAGS = (opt.ENDPOINTS, Questions, References, Categories, opt.Limit, MaxTokens, opt.Concurrency, opt.Rps,
         opt.Timeout, opt.Retries, JudgeUrl, JudgeModel, JudgeKeyEnv, OldJudgeKeyEnv, JudgeForceFormat, Mode,
         MaxJudgeCalls, JudgeRps, JudgeCache, Yes, opt.OUTPUT, opt.RunsDir, opt.Resume, opt.ConfigFile)


def register(app: typer.Typer) -> None:
    @app.command(epilog=RESUME_HELP)
    @opt.with_options(*FLAGS)
    def mtbench(**flags: Any) -> None:
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
        cfg = load_config(flags["config"])
        # Checked before any request: a bad expression must not cost a run.
        gates = resolve_gates("mtbench", flags["gate"], cfg)
        if flags["html"] is not None:
            from servecmp.html import check_writable

            check_writable(flags["html"])  # before the run, not after it
        mode = flags["mode"]
        flags.update(categories=_categories(flags["categories"]), mode=mode.value if mode is not None else None,
                     judge_key_env=renamed("--judge-api-key-env", flags["judge_api_key_env"], "--judge-key-env",
                                           flags["judge_key_env"]))
        opts = MtBenchOptions.from_flags(flags)
        io = RunIO(console=console, is_tty=sys.stdin.isatty(), ask=_confirm)
        if opts.resume is not None:
            paths = MtRunPaths(opts.resume)
            settings, manifest = resumed_settings(paths, opts, cfg)
            result = run_blocking(settings, io, resume=(paths, manifest))
        else:
            settings = new_settings(opts, cfg)
            root = opts.runs_dir or Path(cfg.mtbench.runs_dir)
            result = run_blocking(settings, io, runs_root=root)
        from servecmp.finish import finish
        from servecmp.mtbench.kind import MtBenchResult

        as_json = flags["as_json"]
        out = opt.output(flags, show=settings.show, title=f"servecmp gates: mtbench run {result.paths.root.name}")
        # The report goes to stdout; with --json only the JSON does, and the verdict block to stderr.
        code = finish("mtbench", MtBenchResult(result.summary, result.paths.root, settings.show), gates, out,
                      console if as_json else Console())
        if not as_json:
            console.print(f"run directory: {result.paths.root}", highlight=False)
        if code:
            raise SystemExit(code)  # not typer.Exit: main() runs click with standalone_mode=False, which swallows it
