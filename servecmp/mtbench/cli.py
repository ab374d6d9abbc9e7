"""`servecmp mtbench` and `servecmp correlate`."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from servecmp.config import load_config
from servecmp.errors import UserError
from servecmp.mtbench import correlate as corr
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

    @app.command()
    def correlate(
        run_dirs: Annotated[
            list[Path], typer.Argument(help="MCQ and MT-Bench run directories, one baseline.")
        ],
        plot: Annotated[
            Path, typer.Option(help="Where to write the flips vs ΔMT-Bench scatter plot (PNG).")
        ] = Path("correlate-flips-vs-mtbench.png"),
        kl: Annotated[
            str, typer.Option(help="KL to report: option (over the answer options) or topk.")
        ] = "option",
        as_json: Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")] = False,
    ) -> None:
        """Per candidate: Δaccuracy, flips, KL, ΔMT-Bench, and how they correlate (Spearman, Pearson)."""
        if kl not in ("option", "topk"):
            raise UserError(f"--kl must be option or topk, not {kl!r}")
        kl_source: corr.KlSource = "option" if kl == "option" else "topk"
        runs = [corr.read_run(d, kl_source) for d in run_dirs]
        rows, warnings = corr.pair_runs(runs)
        results = corr.correlations(rows)
        wrote = corr.scatter_plot(rows, plot)
        err = Console(stderr=True)
        for w in warnings:
            err.print(f"warning: {w}", highlight=False)
        if as_json:
            report = corr.report_dict(rows, results, warnings, plot if wrote else None, kl_source)
            typer.echo(json.dumps(report, indent=2, ensure_ascii=False))
            return
        out = Console()
        table = Table(title="Candidates against one baseline", title_justify="left")
        for col in ("candidate", "Δaccuracy", "flips", "KL", "ΔMT-Bench"):
            table.add_column(col, justify="left" if col == "candidate" else "right")
        for r in rows:
            flips = (
                "—"
                if r.flip_rate is None
                else f"{r.flip_rate:.1%} ({_fmt(r.flips, 'd')}/{_fmt(r.n_items, 'd')})"
            )
            table.add_row(str(r.candidate), _fmt(r.delta_accuracy, "+.3f"), flips, _fmt(r.kl, ".4f"),
                          _fmt(r.delta_mtbench, "+.2f"))  # fmt: skip
        out.print(table)
        ctable = Table(title="Correlation across candidates", title_justify="left")
        for col in ("x vs y", "n", "Spearman ρ", "p", "Pearson r", "p"):
            ctable.add_column(col, justify="left" if col == "x vs y" else "right")
        for c in results:
            label = f"{corr.LABELS[c.x]} vs {corr.LABELS[c.y]}"
            if c.note:
                ctable.add_row(label, str(c.result.n), c.note, "", "", "")
                continue
            res = c.result
            ctable.add_row(label, str(res.n), _fmt(res.spearman_r, "+.3f"), _fmt(res.spearman_p, ".3g"),
                           _fmt(res.pearson_r, "+.3f"), _fmt(res.pearson_p, ".3g"))  # fmt: skip
        out.print(ctable)
        methods = sorted({c.result.p_method for c in results if not c.note})
        if methods:
            out.print(f"p-values: two-sided, {', '.join(methods)} (exact over all pairings up to 8 candidates).")
        if len(rows) < corr.MIN_CANDIDATES:
            out.print(f"{len(rows)} candidate(s): a correlation needs at least {corr.MIN_CANDIDATES}.")
        out.print(
            f"scatter plot: {plot}" if wrote else "no scatter plot: no candidate has both flips and ΔMT-Bench"
        )
