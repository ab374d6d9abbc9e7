"""`servecmp demo`: the whole method on this machine, with no GPU, key or model hub.

Serves the embedded pair (SmolLM2-135M-Instruct baseline and its int8 W8A8 quantization), compares
them on the vendored MMLU sample, on a short GSM8K slice (generated answers: where the two models'
answers part, teacher-forced KL) and on a few MT-Bench questions judged by the local baseline, prints
the reports, and stops the servers. Every step is timed.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from servecmp._cli.common import RunsDir
from servecmp.errors import UserError

if TYPE_CHECKING:
    from rich.console import Console

    from servecmp.gen.run import GenResult
    from servecmp.mtbench.run import MtBenchResult

#: The embedded pair's ports (servecmp.serving.modelpair.DEFAULT_PORTS), spelled out here so that
#: `--help` does not import the serving stack; test_demo_ports_match_the_serving_defaults checks them.
BASELINE_PORT = 8001
CANDIDATE_PORT = 8002


@contextmanager
def _step(console: Console, name: str, timings: list[tuple[str, float]]) -> Iterator[None]:
    console.rule(f"[bold]{name}")
    t0 = time.monotonic()
    yield
    dt = time.monotonic() - t0
    timings.append((name, dt))
    console.print(f"[dim]{name}: {dt:.0f} s[/]")


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        sample: Annotated[int | None, typer.Option(
            "--sample", min=1, help="A seeded sample of N MMLU items (default: all 228 of the vendored sample).",
        )] = None,
        mtbench_questions: Annotated[int, typer.Option(
            help="MT-Bench questions to answer and judge (0 skips MT-Bench).")] = 3,
        gsm8k_items: Annotated[int, typer.Option(
            help="GSM8K items of the generated-answers slice (0 skips it).")] = 8,
        gsm8k_tokens: Annotated[int, typer.Option(help="New tokens per GSM8K answer.")] = 96,
        max_tokens: Annotated[int, typer.Option(help="New tokens per MT-Bench answer turn.")] = 128,
        runs_dir: RunsDir = None,
        baseline_port: Annotated[int, typer.Option()] = BASELINE_PORT,
        candidate_port: Annotated[int, typer.Option()] = CANDIDATE_PORT,
    ) -> None:
        """Serve the embedded bf16/int8 pair locally and compare them (MMLU sample + short MT-Bench)."""
        from rich.console import Console

        from servecmp.endpoints import EndpointSpec
        from servecmp.mcq.run import run_mcq
        from servecmp.mcq.settings import McqSettings, NamedEndpoint
        from servecmp.runstore import new_run_dir
        from servecmp.serving.modelpair import embedded_servers, ensure_embedded_pair
        from servecmp.serving.servers import ServerPair

        console = Console()
        timings: list[tuple[str, float]] = []
        t_start = time.monotonic()
        if mtbench_questions < 0 or gsm8k_items < 0:
            raise UserError("--mtbench-questions and --gsm8k-items must be 0 or more")
        runs = runs_dir if runs_dir is not None else Path("runs")

        with _step(console, "1/5 embedded model pair", timings), console.status(
            "building the pair on first use (GGUF → checkpoint → int8), then cached"
        ):
            pair = ensure_embedded_pair(log=lambda m: console.print(f"  {m}", highlight=False))
        console.print(f"  baseline : {pair.baseline_dir}\n  candidate: {pair.candidate_dir}", highlight=False)

        servers = embedded_servers(pair, baseline_port=baseline_port, candidate_port=candidate_port)
        server_dir = new_run_dir(runs, "demo-servers")
        with _step(console, "2/5 start both vLLM servers", timings):
            pair_ctx = ServerPair(servers, run_dir=server_dir, console=console)
            pair_ctx.__enter__()
        try:
            urls = {role: h.url for role, h in pair_ctx.handles.items()}
            names = {role: h.served_name for role, h in pair_ctx.handles.items()}
            for role in ("baseline", "candidate"):
                console.print(f"  {role:>9}: {names[role]} at {urls[role]} "
                              f"({servers[role].dtype}, log {pair_ctx.handles[role].log_path})", highlight=False)

            with _step(console, "3/5 MMLU 5-shot: accuracy, flips, KL, top margin", timings):
                settings = McqSettings(
                    baseline=EndpointSpec(base_url=urls["baseline"], model=names["baseline"]),
                    candidates=[NamedEndpoint(base_url=urls["candidate"], model=names["candidate"])],
                    task="mmlu-sample", sample=sample, runs_dir=runs,
                )
                mcq = run_mcq(settings, console)

            gen_result = None
            if gsm8k_items:
                with _step(console, "4/5 GSM8K 5-shot, greedy: flips, where the answers part, teacher-forced KL",
                           timings):
                    gen_result = _run_gen(urls, names, gsm8k_items, gsm8k_tokens, runs, console)

            mt_result = None
            if mtbench_questions:
                with _step(console, "5/5 MT-Bench (answers + local judge)", timings):
                    mt_result = _run_mtbench(urls, names, mtbench_questions, max_tokens, runs, console)
        finally:
            pair_ctx.__exit__(None, None, None)

        console.rule("[bold]Results")
        # The same finish step as `servecmp mcq/gen/mtbench` and `servecmp report` (no gates: exit 0).
        from servecmp.finish import Output, finish
        from servecmp.mcq.view import load_view

        finish("mcq", load_view(mcq.run_dir, mcq.comparison), [], Output(), console)
        console.print(f"MCQ run directory: {mcq.run_dir}", highlight=False)
        if gen_result is not None:
            from servecmp.gen.kind import GenView

            console.print()
            # The summary's notes say it when both models solve nothing (flips cannot show at 0%).
            finish("gen", GenView(gen_result.summary, gen_result.run_dir), [], Output(show=3), console)
            console.print(f"GSM8K run directory: {gen_result.run_dir}", highlight=False)
        if mt_result is not None:
            from servecmp.mtbench.kind import MtBenchResult

            # The report itself says that the 135M demo judge's scores only exercise the pipeline.
            finish("mtbench", MtBenchResult(mt_result.summary, mt_result.paths.root, 2), [], Output(show=2), console)
            console.print(f"MT-Bench run directory: {mt_result.paths.root}", highlight=False)
        total = time.monotonic() - t_start
        console.print("timings: " + ", ".join(f"{n.split(' ', 1)[1]} {t:.0f} s" for n, t in timings)
                      + f"; total {total / 60:.1f} min", highlight=False)


def _run_gen(urls: dict[str, str], names: dict[str, str], n: int, max_tokens: int, runs_dir: Path,
             console: Console) -> GenResult:
    from servecmp.config import Config
    from servecmp.gen.run import run_blocking
    from servecmp.gen.settings import GenOptions, new_manifest

    opts = GenOptions(baseline=urls["baseline"], baseline_model=names["baseline"], candidate=[urls["candidate"]],
                      candidate_model=[names["candidate"]], task="gsm8k", limit=n, max_tokens=max_tokens,
                      concurrency=8)
    manifest, items = new_manifest(opts, Config())
    return run_blocking(manifest, items, console, runs_root=runs_dir, is_tty=sys.stdout.isatty())


def _run_mtbench(urls: dict[str, str], names: dict[str, str], n: int, max_tokens: int, runs_dir: Path,
                 console: Console) -> MtBenchResult:
    from servecmp.config import Config
    from servecmp.mtbench.run import RunIO, execute
    from servecmp.mtbench.settings import MtBenchOptions, new_settings

    opts = MtBenchOptions(
        limit=n, max_tokens=max_tokens,
        baseline=urls["baseline"], baseline_model=names["baseline"],
        candidate=urls["candidate"], candidate_model=names["candidate"],
        judge_url="baseline", mode="single", runs_dir=runs_dir, yes=True,
    )
    settings = new_settings(opts, Config())
    io = RunIO(console=console, is_tty=sys.stdout.isatty(), ask=lambda _: True)
    return asyncio.run(execute(settings, io, runs_root=runs_dir))
