"""`servecmp gen`: generated answers compared item by item (a thin wrapper of `servecmp.gen`).

Only stdlib, typer and the shared option types are imported at module level, so `servecmp --help`
stays fast; the service layer loads inside the command.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from servecmp._cli import common as opt

if TYPE_CHECKING:

    pass

Task = Annotated[str | None, typer.Option("--task", help="gsm8k (lm-eval's 5-shot layout), humaneval (needs "
                                                         "--allow-code-execution) or jsonl:PATH (your own "
                                                         "verifiable tasks; see the README).")]
DataDir = Annotated[str | None, typer.Option(
    "--data-dir", help="GSM8K's train.jsonl/test.jsonl (or a local copy of the hub dataset); default: the "
                       "vendored 100-item sample.")]
Source = Annotated[str | None, typer.Option("--source", help="gsm8k: sample, dir or hf (openai/gsm8k from the hub).")]
Fewshot = Annotated[int | None, typer.Option("--fewshot", min=0, help="GSM8K exemplars per prompt (default 5).")]
Sample = Annotated[int | None, typer.Option("--sample", min=1, help="A seeded random sample of N items (see --seed).")]
Seed = Annotated[int | None, typer.Option("--seed", help="Seed of --sample, --noise-floor and of sampled requests.")]
ApiOpt = Annotated[str | None, typer.Option(
    "--api", metavar="auto|completions|chat",
    help="How items are asked: completions (lm-eval's prompt), chat (exemplars as prior turns; for chat-only "
         "endpoints), or auto (completions where every endpoint has it, else chat).")]
MaxTokens = Annotated[int | None, typer.Option("--max-tokens", min=1, help="New tokens per answer (default 256).")]
Samples = Annotated[int | None, typer.Option(
    "--samples", min=1, help="Completions per item and endpoint, in one request (n); needs --temperature > 0.")]
Temperature = Annotated[float | None, typer.Option("--temperature", min=0.0, help="Sampling temperature (default 0).")]
TeacherForcing = Annotated[bool | None, typer.Option(
    "--teacher-forcing/--no-teacher-forcing",
    help="Score each candidate along the baseline's greedy answer (vLLM prompt_logprobs; default on).")]
Resume = Annotated[Path | None, typer.Option(
    "--resume", help="Finish an interrupted run (its RUN_DIR); only pacing (--concurrency, --max-concurrency, "
                     "--rps, --timeout, --retries) and presentation flags apply.")]
AllowCode = Annotated[bool, typer.Option(
    "--allow-code-execution",
    help="Let code tasks (humaneval) run model-written programs, each in its own process with CPU, memory, "
         "time and process limits (see the README for what that does not protect against).")]
BaselineRun = Annotated[Path | None, typer.Option(
    "--baseline-run", metavar="RUN_DIR",
    help="Join a finished gen run's stored baseline answers (and teacher-forcing rows) instead of asking the "
         "baseline: only the candidates are asked. Refused when items, prompts, API, max tokens, sampling, top-k "
         "or teacher forcing differ.")]
BaselineCheck = Annotated[int | None, typer.Option(
    "--baseline-check", min=1, metavar="N",
    help="With --baseline-run and --baseline URL: re-ask N seeded stored items of the live baseline and refuse "
         "unless every greedy answer is the stored text (default 20).")]
BaselineOnly = Annotated[bool | None, typer.Option(
    "--baseline-only", help="Ask only the baseline: a profile for later --baseline-run.")]
FromLmEval = Annotated[tuple[Path, Path] | None, typer.Option(
    "--from-lm-eval", help="Compare two lm-eval gsm8k --log_samples JSONL files (baseline, candidate); no "
                           "endpoint is called.")]


def register(app: typer.Typer) -> None:
    @app.command()
    def gen(
        baseline: opt.Baseline = None,
        candidate: opt.Candidates = None,
        baseline_model: opt.BaselineModel = None,
        candidate_model: opt.CandidateModels = None,
        baseline_key_env: opt.BaselineKeyEnv = None,
        candidate_key_env: opt.CandidateKeyEnvs = None,
        candidate_name: opt.CandidateNames = None,
        secondary: opt.Secondary = None,
        secondary_model: opt.SecondaryModel = None,
        secondary_key_env: opt.SecondaryKeyEnv = None,
        noise_floor: opt.NoiseFloor = None,
        task: Task = None,
        data_dir: DataDir = None,
        source: Source = None,
        fewshot: Fewshot = None,
        limit: opt.Limit = None,
        sample: Sample = None,
        seed: Seed = None,
        api: ApiOpt = None,
        max_tokens: MaxTokens = None,
        samples: Samples = None,
        temperature: Temperature = None,
        top_k: opt.TopK = None,
        teacher_forcing: TeacherForcing = None,
        concurrency: opt.Concurrency = None,
        max_concurrency: opt.MaxConcurrency = None,
        rps: opt.Rps = None,
        timeout: opt.Timeout = None,
        retries: opt.Retries = None,
        runs_dir: opt.RunsDir = None,
        resume: Resume = None,
        from_lm_eval: FromLmEval = None,
        baseline_run: BaselineRun = None,
        baseline_check: BaselineCheck = None,
        baseline_only: BaselineOnly = None,
        allow_code_execution: AllowCode = False,
        gate: opt.Gate = None,
        summary_md: opt.SummaryMd = None,
        html: opt.Html = None,
        as_json: opt.Json = False,
        show: opt.Show = None,
        config: opt.ConfigFile = None,
    ) -> None:
        """Compare generated answers (GSM8K, your own verifiable tasks): accuracy under lm-eval's extractions,
        flips with McNemar, where the outputs part, length ratio and teacher-forced KL."""
        import sys

        from rich.console import Console

        from servecmp.gen.settings import GenOptions
        from servecmp.verdicts import resolve_gates

        opts = GenOptions(
            baseline=baseline, candidate=candidate or None, baseline_model=baseline_model,
            candidate_model=candidate_model or None, baseline_key_env=baseline_key_env,
            candidate_key_env=candidate_key_env or None, candidate_name=candidate_name or None,
            secondary=secondary, secondary_model=secondary_model, secondary_key_env=secondary_key_env,
            noise_floor=noise_floor, task=task, data_dir=data_dir, source=source, fewshot=fewshot, limit=limit,
            sample=sample, seed=seed, api=api, max_tokens=max_tokens, samples=samples, temperature=temperature,
            top_k=top_k, teacher_forcing=teacher_forcing, concurrency=concurrency, max_concurrency=max_concurrency,
            rps=rps, timeout=timeout, retries=retries, runs_dir=runs_dir, resume=resume, config=config,
            allow_code_execution=allow_code_execution or None, baseline_run=baseline_run,
            baseline_check=baseline_check, baseline_only=baseline_only or None,
        )
        console = Console(stderr=as_json)
        from servecmp.finish import Output, check_outputs, finish

        out = Output(as_json=as_json, show=show, html=html, summary_md=summary_md, title="servecmp gen gates")
        check_outputs(out)  # before the run, not after it
        run_dir: Path | None
        if from_lm_eval is not None:
            from servecmp.gen.lmeval import refuse_flags, summary_from_lmeval

            refuse_flags(opts)
            gates = resolve_gates("gen", gate, None)
            summary = summary_from_lmeval(from_lm_eval[0], from_lm_eval[1])
            run_dir = None
            show_n = 10 if show is None else show
        else:
            from servecmp.gen.run import run_blocking

            if resume is not None:
                from servecmp.gen.settings import resumed_manifest

                manifest = resumed_manifest(opts)
                gates = resolve_gates("gen", gate, None)
                result = run_blocking(manifest, None, console, resume=resume, is_tty=console.is_terminal,
                                      allow_code=allow_code_execution)
                if manifest.baseline_only:
                    from servecmp.gen.stored import profile_line

                    console.print(profile_line(result.run_dir), highlight=False, markup=False)
                    return
            else:
                from servecmp.config import load_config
                from servecmp.gen.settings import new_manifest
                from servecmp.gen.stored import plan, profile_line

                cfg = load_config(config)
                gates = resolve_gates("gen", gate, cfg)
                opts, stored = plan(opts)
                manifest, items = new_manifest(opts, cfg)
                root = runs_dir if runs_dir is not None else Path(cfg.gen.runs_dir)
                result = run_blocking(manifest, items, console, runs_root=root, is_tty=console.is_terminal,
                                      allow_code=allow_code_execution, stored=stored)
                show = cfg.gen.show if show is None else show
                if baseline_only:
                    console.print(profile_line(result.run_dir), highlight=False, markup=False)
                    return
            summary, run_dir = result.summary, result.run_dir
            show_n = 10 if show is None else show
        from servecmp.gen.kind import GenView

        code = finish("gen", GenView(summary, run_dir), gates, replace(out, show=show_n), console)
        sys.stdout.flush()
        if code:
            raise SystemExit(code)
