"""`servecmp gen`: generated answers compared item by item (a thin wrapper of `servecmp.gen`).

Only stdlib, typer and the shared option types are imported at module level, so `servecmp --help`
stays fast; the service layer loads inside the command.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import typer

from servecmp._cli import common as opt

Task = opt.option("--task", str, "gsm8k (lm-eval's 5-shot layout), humaneval (needs --allow-code-execution) or "
                  "jsonl:PATH (your own verifiable tasks; see the README).")
DataDir = opt.option("--data-dir", str, "GSM8K's train.jsonl/test.jsonl (or a local copy of the hub dataset); "
                     "default: the vendored 100-item sample.")
Source = opt.option("--source", str, "gsm8k: sample, dir or hf (openai/gsm8k from the hub).")
Fewshot = opt.option("--fewshot", int, "GSM8K exemplars per prompt (default 5).", min=0)
Sample = opt.option("--sample", int, "A seeded random sample of N items (see --seed).", min=1)
Seed = opt.option("--seed", int, "Seed of --sample, --noise-floor and of sampled requests.")
Api = opt.option("--api", str, "How items are asked: completions (lm-eval's prompt), chat (exemplars as prior turns; "
                 "for chat-only endpoints), or auto (completions where every endpoint has it, else chat).",
                 metavar="auto|completions|chat")
MaxTokens = opt.option("--max-tokens", int, "New tokens per answer (default 256).", min=1)
Samples = opt.option("--samples", int, "Completions per item and endpoint, in one request (n); needs --temperature "
                     "> 0.", min=1)
Temperature = opt.option("--temperature", float, "Sampling temperature (default 0).", min=0.0)
TeacherForcing = opt.option("--teacher-forcing/--no-teacher-forcing", bool, "Score each candidate along the "
                            "baseline's greedy answer (vLLM prompt_logprobs; default on).")
Resume = opt.option("--resume", Path, "Finish an interrupted run (its RUN_DIR); only pacing (--concurrency, "
                    "--max-concurrency, --rps, --timeout, --retries) and presentation flags apply.")
AllowCode = opt.switch("--allow-code-execution", "Let code tasks (humaneval) run model-written programs, each in its "
                       "own process with CPU, memory, time and process limits (see the README for what that does not "
                       "protect against).")
FromLmEval = opt.option("--from-lm-eval", tuple[Path, Path], "Compare two lm-eval gsm8k --log_samples JSONL files "
                        "(baseline, candidate); no endpoint is called.")


#: The flags of `servecmp gen`, in --help order.
FLAGS = (opt.ENDPOINTS, opt.NOISE_FLOOR, Task, DataDir, Source, Fewshot, opt.Limit, Sample, Seed, Api, MaxTokens,
         Samples, Temperature, opt.TopK, TeacherForcing, opt.PACING, opt.RunsDir, Resume, FromLmEval,
         opt.STORED_BASELINE, AllowCode, opt.OUTPUT, opt.ConfigFile)


def register(app: typer.Typer) -> None:
    @app.command()
    @opt.with_options(*FLAGS)
    def gen(**flags: Any) -> None:
        """Compare generated answers (GSM8K, your own verifiable tasks): accuracy under lm-eval's extractions,
        flips with McNemar, where the outputs part, length ratio and teacher-forced KL."""
        import sys

        from rich.console import Console

        from servecmp.gen.settings import GenOptions
        from servecmp.verdicts import resolve_gates

        opts = GenOptions.from_flags(flags)
        resume, gate, show, allow_code = opts.resume, flags["gate"], flags["show"], bool(opts.allow_code_execution)
        from_lm_eval = flags["from_lm_eval"]
        console = Console(stderr=flags["as_json"])
        from servecmp.finish import check_outputs, finish

        out = opt.output(flags, title="servecmp gen gates")
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
                                      allow_code=allow_code)
                if manifest.baseline_only:
                    from servecmp.gen.stored import profile_line

                    console.print(profile_line(result.run_dir), highlight=False, markup=False)
                    return
            else:
                from servecmp.config import load_config
                from servecmp.gen.settings import new_manifest
                from servecmp.gen.stored import plan, profile_line

                cfg = load_config(opts.config)
                gates = resolve_gates("gen", gate, cfg)
                opts, stored = plan(opts)
                manifest, items = new_manifest(opts, cfg)
                root = opts.runs_dir if opts.runs_dir is not None else Path(cfg.gen.runs_dir)
                result = run_blocking(manifest, items, console, runs_root=root, is_tty=console.is_terminal,
                                      allow_code=allow_code, stored=stored)
                show = cfg.gen.show if show is None else show
                if opts.baseline_only:
                    console.print(profile_line(result.run_dir), highlight=False, markup=False)
                    return
            summary, run_dir = result.summary, result.run_dir
            show_n = 10 if show is None else show
        from servecmp.gen.kind import GenView

        code = finish("gen", GenView(summary, run_dir), gates, replace(out, show=show_n), console)
        sys.stdout.flush()
        if code:
            raise SystemExit(code)
