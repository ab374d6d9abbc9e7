"""`servecmp mcq` and `servecmp report`: the MCQ comparison from the command line."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from servecmp import __version__
from servecmp.config import Config, load_config
from servecmp.endpoints import EndpointClient, EndpointSpec, endpoint_from
from servecmp.errors import UserError
from servecmp.mcq.records import McqRecord
from servecmp.mcq.render import render_mcq_report
from servecmp.mcq.run import ITEM_ERRORS, RECORDS, failure_message, make_progress, prepare_clients, run_items
from servecmp.metrics.from_records import summarize_records
from servecmp.records import ROLES, EndpointInfo, EndpointRole, RunManifest
from servecmp.runstore import (
    MANIFEST,
    SUMMARY,
    iter_jsonl,
    load_records,
    new_run_dir,
    read_model,
    utcnow,
    write_json_atomic,
)
from servecmp.tasks.lmeval_import import load_lmeval_pair
from servecmp.tasks.registry import TaskData, load_task


@dataclass
class McqOptions:
    """Everything a run needs, after config file and flags are merged."""

    baseline: EndpointSpec
    candidate: EndpointSpec
    task: str = "mmlu"
    data_dir: str | None = None
    limit: int | None = None
    seed: int = 0
    top_k: int = 20
    runs_dir: Path = Path("runs")
    resume: Path | None = None


def _endpoint(cfg: EndpointSpec | None, url: str | None, model: str | None, key_env: str | None,
              role: str, concurrency: int | None, rps: float | None, timeout: float | None,
              retries: int | None) -> EndpointSpec:
    return endpoint_from(role, cfg, url, model=model, api_key_env=key_env, max_concurrency=concurrency,
                         requests_per_second=rps, timeout_s=timeout, max_retries=retries)


def summarize_run(run_dir: Path) -> dict[str, Any]:
    """Recompute every metric from the run's records; write and return the summary."""
    manifest = read_model(run_dir / MANIFEST, RunManifest)
    records = load_records(run_dir / RECORDS, McqRecord)
    by_role: dict[EndpointRole, list[McqRecord]] = {r: [x for x in records if x.endpoint == r] for r in ROLES}
    if not by_role["baseline"] or not by_role["candidate"]:
        raise UserError(f"{run_dir}: no item has been answered by both endpoints yet")
    summary = summarize_records(by_role["baseline"], by_role["candidate"], seed=manifest.seed)
    summary["run"] = {
        "run_dir": str(run_dir),
        "task": manifest.task,
        "source": manifest.source,
        "n_items_planned": manifest.n_items,
        "complete": manifest.finished_at is not None,
        "endpoints": {e.role: {"url": e.base_url, "model": e.model} for e in manifest.endpoints},
        "requests_per_item": _requests_per_item(records),
        "item_errors": _item_errors(run_dir, records),
    }
    write_json_atomic(run_dir / SUMMARY, summary)
    return summary


def _item_errors(run_dir: Path, records: list[McqRecord]) -> dict[str, dict[str, Any]]:
    """Items an endpoint refused and that no later attempt (resume) answered."""
    answered = {(r.item_id, r.endpoint) for r in records}
    out: dict[str, dict[str, Any]] = {}
    for e in iter_jsonl(run_dir / ITEM_ERRORS):
        if (e["item_id"], e["endpoint"]) in answered:
            continue
        slot = out.setdefault(e["endpoint"], {"count": 0, "items": set(), "example": e["error"]})
        slot["items"].add(e["item_id"])
    for slot in out.values():
        slot["count"] = len(slot.pop("items"))
    return out


def _requests_per_item(records: list[McqRecord]) -> dict[str, float]:
    out: dict[str, float] = {}
    for role in ROLES:
        rs = [r for r in records if r.endpoint == role]
        if rs:
            out[role] = sum(r.n_requests for r in rs) / len(rs)
    return out


def _manifest_for(opts: McqOptions, data: TaskData) -> RunManifest:
    return RunManifest(
        kind="mcq",
        servecmp_version=__version__,
        task=opts.task,
        task_fingerprint=data.fingerprint,
        prompt_format_hash=data.prompt_format_hash,
        n_items=len(data.items),
        limit=opts.limit,
        seed=opts.seed,
        source=data.source,
        endpoints=[
            EndpointInfo(role="baseline", base_url=opts.baseline.base_url, model=opts.baseline.model or ""),
            EndpointInfo(role="candidate", base_url=opts.candidate.base_url, model=opts.candidate.model or ""),
        ],
        started_at=utcnow(),
        extra={
            "data_dir": opts.data_dir or "",
            "top_k": str(opts.top_k),
            # Names of environment variables only; the keys themselves are never written.
            "baseline_api_key_env": opts.baseline.api_key_env or "",
            "candidate_api_key_env": opts.candidate.api_key_env or "",
        },
    )


def options_from_resume(run_dir: Path, task: str | None) -> McqOptions:
    if not (run_dir / MANIFEST).exists():
        raise UserError(f"{run_dir} is not a servecmp run directory (no {MANIFEST})")
    m = read_model(run_dir / MANIFEST, RunManifest)
    if m.kind != "mcq":
        raise UserError(f"{run_dir} is a {m.kind} run, not an mcq run")
    if task is not None and task != m.task:
        raise UserError(f"{run_dir} is a run of task '{m.task}', not '{task}'")
    eps = {e.role: e for e in m.endpoints}
    return McqOptions(
        baseline=EndpointSpec(base_url=eps["baseline"].base_url, model=eps["baseline"].model,
                              api_key_env=m.extra.get("baseline_api_key_env") or None),
        candidate=EndpointSpec(base_url=eps["candidate"].base_url, model=eps["candidate"].model,
                               api_key_env=m.extra.get("candidate_api_key_env") or None),
        task=m.task,
        data_dir=m.extra.get("data_dir") or None,
        limit=m.limit,
        seed=m.seed,
        top_k=int(m.extra.get("top_k", "20")),
        runs_dir=run_dir.parent,
        resume=run_dir,
    )


def run_mcq(opts: McqOptions, console: Console) -> tuple[Path, dict[str, Any]]:
    """Load the task, check both endpoints, score every pending item, summarise. Returns (run_dir, summary)."""
    data = load_task(opts.task, data_dir=opts.data_dir, limit=opts.limit, seed=opts.seed)
    letter = any(it.kind == "letter" for it in data.items)

    if opts.resume is not None:
        run_dir = opts.resume
        manifest = read_model(run_dir / MANIFEST, RunManifest)
        if manifest.task_fingerprint != data.fingerprint:
            raise UserError(
                f"{run_dir} was made from different items or prompts than task '{opts.task}' gives now "
                "(data or prompt format changed); start a new run"
            )
    else:
        manifest = None
        run_dir = Path()

    async def go() -> tuple[Path, Any]:
        clients = {
            "baseline": EndpointClient(opts.baseline),
            "candidate": EndpointClient(opts.candidate),
        }
        try:
            await prepare_clients(clients, opts.top_k, letter)  # type: ignore[arg-type]
            nonlocal run_dir
            if manifest is None:
                run_dir = new_run_dir(opts.runs_dir, f"mcq-{opts.task.replace(':', '_').replace('/', '_')}")
                write_json_atomic(run_dir / MANIFEST, _manifest_for(opts, data).model_dump())
            console.print(f"run directory: {run_dir}  ({len(data.items)} items, {data.source})")
            with make_progress(console) as progress:
                try:
                    outcome = await run_items(data.items, clients, run_dir,  # type: ignore[arg-type]
                                              top_k=opts.top_k, progress=progress)
                except asyncio.CancelledError:
                    raise KeyboardInterrupt from None
            return run_dir, outcome
        finally:
            for c in clients.values():
                await c.aclose()

    try:
        run_dir, outcome = asyncio.run(go())
    except KeyboardInterrupt:
        where = f" in {run_dir}; resume with: servecmp mcq --resume {run_dir}" if str(run_dir) != "." else ""
        raise UserError(f"interrupted; finished items are saved{where}", exit_code=130) from None
    if outcome.failed:
        raise UserError(failure_message(outcome, run_dir), exit_code=3)
    m = read_model(run_dir / MANIFEST, RunManifest)
    m.finished_at = utcnow()
    write_json_atomic(run_dir / MANIFEST, m.model_dump())
    return run_dir, summarize_run(run_dir)


def print_summary(summary: dict[str, Any], as_json: bool, console: Console) -> None:
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        render_mcq_report(summary, console)


def register(app: typer.Typer) -> None:
    @app.command()
    def mcq(
        baseline: Annotated[str | None, typer.Option(help="Baseline endpoint URL (OpenAI-compatible).")] = None,
        candidate: Annotated[str | None, typer.Option(help="Candidate endpoint URL.")] = None,
        baseline_model: Annotated[str | None, typer.Option(help="Model name at the baseline.")] = None,
        candidate_model: Annotated[str | None, typer.Option(help="Model name at the candidate.")] = None,
        baseline_key_env: Annotated[str | None, typer.Option(help="Env var holding the baseline's API key.")] = None,
        candidate_key_env: Annotated[str | None, typer.Option(help="Env var holding the candidate's API key.")] = None,
        task: Annotated[str | None, typer.Option(help="mmlu, mmlu-sample, arc_easy, arc_challenge, hellaswag, "
                                                       "piqa, winogrande, or jsonl:PATH.")] = None,
        data_dir: Annotated[str | None, typer.Option(help="MMLU in its original CSV layout (dev/, test/).")] = None,
        limit: Annotated[int | None, typer.Option(help="Score a seeded sample of N items.")] = None,
        seed: Annotated[int | None, typer.Option(help="Seed for --limit sampling and bootstrap.")] = None,
        top_k: Annotated[int | None, typer.Option(help="Top-k logprobs per request (vLLM: <= --max-logprobs).")] = None,
        concurrency: Annotated[int | None, typer.Option(help="Requests in flight per endpoint.")] = None,
        rps: Annotated[float | None, typer.Option(help="Requests per second per endpoint.")] = None,
        timeout: Annotated[float | None, typer.Option(help="Per-request timeout, seconds.")] = None,
        retries: Annotated[int | None, typer.Option(help="Retries on 429/5xx/timeouts/dropped connections.")] = None,
        runs_dir: Annotated[Path | None, typer.Option(help="Where run directories are created.")] = None,
        resume: Annotated[Path | None, typer.Option(help="Finish an interrupted run.")] = None,
        from_lm_eval: Annotated[tuple[Path, Path] | None, typer.Option(
            help="Compare two lm-eval --log_samples JSONL files (baseline, candidate); no endpoint is called.")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object.")] = False,
        config: Annotated[Path | None, typer.Option("--config", "-c", help="servecmp.toml")] = None,
    ) -> None:
        """Compare two endpoints on a multiple-choice task: accuracy, flips, KL divergence, top margin."""
        console = Console(stderr=as_json)
        if from_lm_eval is not None:
            base_recs, cand_recs, name = load_lmeval_pair(from_lm_eval[0], from_lm_eval[1])
            summary = summarize_records(base_recs, cand_recs, seed=seed or 0)
            summary["run"] = {"task": name, "source": "lm-eval sample logs",
                              "endpoints": {"baseline": {"url": str(from_lm_eval[0]), "model": ""},
                                            "candidate": {"url": str(from_lm_eval[1]), "model": ""}}}
            print_summary(summary, as_json, console)
            return
        if resume is not None:
            opts = options_from_resume(resume, task)
        else:
            cfg: Config = load_config(config)
            opts = McqOptions(
                baseline=_endpoint(cfg.baseline, baseline, baseline_model, baseline_key_env, "baseline",
                                   concurrency, rps, timeout, retries),
                candidate=_endpoint(cfg.candidate, candidate, candidate_model, candidate_key_env, "candidate",
                                    concurrency, rps, timeout, retries),
                task=task or cfg.mcq.task,
                data_dir=data_dir or cfg.mcq.data_dir,
                limit=limit if limit is not None else cfg.mcq.limit,
                seed=seed if seed is not None else cfg.mcq.seed,
                top_k=top_k or cfg.mcq.top_k,
                runs_dir=runs_dir or Path(cfg.mcq.runs_dir),
            )
        if opts.limit is not None and opts.limit <= 0:
            raise UserError("--limit must be a positive number of items")
        _, summary = run_mcq(opts, console)
        print_summary(summary, as_json, console)
