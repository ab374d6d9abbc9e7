"""Run an MCQ comparison: items × {baseline, candidate} → records appended to the run directory.

`run_mcq` is the whole run (load the task, check both endpoints, write the manifest, score every
pending item, summarise); `servecmp mcq` and `servecmp demo` call it with `McqSettings` from
`servecmp.mcq.settings`. Each endpoint gets its own pool of workers, so a slow endpoint never holds
the other back, and every finished record is on disk before the next one starts being waited for.
A resumed run skips every (item, endpoint) pair that already has a record.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from servecmp.endpoints import EndpointClient, EndpointError, EndpointSpec
from servecmp.errors import RunFailed, RunInterrupted, UserError
from servecmp.mcq.records import ITEM_ERRORS, RECORDS, McqItem, McqRecord
from servecmp.mcq.scoring import score_item
from servecmp.mcq.settings import McqManifest, McqSettings, new_manifest, read_manifest, write_manifest
from servecmp.mcq.summary import McqSummary, summarize_run
from servecmp.records import ROLES, EndpointRole
from servecmp.runstore import JsonlAppender, iter_jsonl, new_run_dir, utcnow
from servecmp.tasks.registry import JSONL_PREFIX, TaskData, load_task

__all__ = ["ITEM_ERRORS", "RECORDS", "McqResult", "RunOutcome", "make_progress", "prepare_clients", "run_items",
           "run_mcq"]


@dataclass(frozen=True)
class McqResult:
    run_dir: Path
    summary: McqSummary


def load_settings_task(settings: McqSettings) -> TaskData:
    return load_task(settings.task, data_dir=settings.data_dir, limit=settings.limit, sample=settings.sample,
                     seed=settings.seed, source=settings.source, fewshot=settings.fewshot,
                     fewshot_file=settings.fewshot_file)


def run_dir_label(task: str) -> str:
    """The task part of a run directory's name: jsonl:/data/my set.jsonl → jsonl-my_set."""
    if task.startswith(JSONL_PREFIX):
        task = "jsonl-" + Path(task.removeprefix(JSONL_PREFIX)).stem
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in task)


def describe_endpoint(role: EndpointRole, spec: EndpointSpec) -> str:
    """One line of what servecmp sends an endpoint: where, which model, and the pacing."""
    rps = "unlimited" if spec.requests_per_second is None else f"{spec.requests_per_second:g}"
    key = f", key from ${spec.api_key_env}" if spec.api_key_env else ""
    return (f"{role:>9}: {spec.model} at {spec.base_url} (concurrency {spec.max_concurrency}, rps {rps}, "
            f"timeout {spec.timeout_s:g} s, retries {spec.max_retries}{key})")


def run_mcq(settings: McqSettings, console: Console, *, resume: tuple[Path, McqManifest] | None = None) -> McqResult:
    """Run (or, with `resume`, finish) a comparison and return its directory and summary.

    RunInterrupted on Ctrl-C and RunFailed when an endpoint dies: both after every finished record
    is on disk, with the command that resumes the run in the message.
    """
    # The model names resolved below are filled into this copy, not into the caller's settings.
    settings = settings.model_copy(deep=True)
    data = load_settings_task(settings)
    letter = any(it.kind == "letter" for it in data.items)
    if resume is not None and resume[1].task_fingerprint != data.fingerprint:
        raise UserError(
            f"{resume[0]} was made from different items or prompts than task '{settings.task}' gives now "
            "(data or prompt format changed); start a new run"
        )
    run_dir: Path | None = resume[0] if resume is not None else None

    async def go() -> tuple[Path, RunOutcome]:
        nonlocal run_dir
        clients = {role: EndpointClient(settings.endpoint(role)) for role in ROLES}
        try:
            models = await prepare_clients(clients, settings.top_k, letter)
            for role in ROLES:
                settings.endpoint(role).model = models[role]
            if resume is None:
                run_dir = new_run_dir(settings.runs_dir, f"mcq-{run_dir_label(settings.task)}")
                write_manifest(run_dir, new_manifest(settings, data))
            elif not resume[1].pacing_recorded:
                # A version-1 manifest: rewrite it as version 2, now recording the pacing in use.
                upgraded = new_manifest(settings, data).model_copy(
                    update={"started_at": resume[1].started_at, "servecmp_version": resume[1].servecmp_version})
                write_manifest(resume[0], upgraded)
            assert run_dir is not None
            console.print(f"run directory: {run_dir}  ({len(data.items)} items, {escape(data.source)})",
                          highlight=False)
            for role in ROLES:
                console.print(describe_endpoint(role, settings.endpoint(role)), highlight=False)
            with make_progress(console) as progress:
                try:
                    outcome = await run_items(data.items, clients, run_dir, top_k=settings.top_k,
                                              progress=progress)
                except asyncio.CancelledError:
                    raise KeyboardInterrupt from None
            return run_dir, outcome
        finally:
            for c in clients.values():
                await c.aclose()

    try:
        done_dir, outcome = asyncio.run(go())
    except KeyboardInterrupt:
        if run_dir is None:
            raise RunInterrupted("interrupted before any item was sent; nothing to resume") from None
        raise RunInterrupted(f"interrupted; finished items are saved in {run_dir}; resume with: "
                             f"servecmp mcq --resume {run_dir}") from None
    if outcome.failed:
        raise RunFailed(failure_message(outcome, done_dir))
    manifest = read_manifest(done_dir)
    write_manifest(done_dir, manifest.model_copy(update={"finished_at": utcnow()}))
    return McqResult(done_dir, summarize_run(done_dir))


@dataclass
class RunOutcome:
    done: int = 0
    failed: dict[EndpointRole, str] = field(default_factory=dict)
    item_errors: dict[EndpointRole, int] = field(default_factory=dict)


def done_keys(run_dir: Path) -> set[tuple[str, str]]:
    return {(r["item_id"], r["endpoint"]) for r in iter_jsonl(run_dir / RECORDS)}


def make_progress(console: Console | None = None) -> Progress:
    return Progress(
        TextColumn("{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        # Each redraw costs ~1.6 ms of CPU; 10 a second (rich's default) tripled servecmp's CPU per item.
        refresh_per_second=2,
    )


async def run_items(
    items: Sequence[McqItem],
    clients: dict[EndpointRole, EndpointClient],
    run_dir: Path,
    *,
    top_k: int,
    progress: Progress | None = None,
) -> RunOutcome:
    """Score every pending (item, endpoint) pair, appending each record as it completes.

    Stops an endpoint's workers at its first request that fails after all retries (the endpoint is
    probably down); the other endpoint carries on so its finished work is kept.
    """
    done = done_keys(run_dir)
    outcome = RunOutcome()
    appender = JsonlAppender(run_dir / RECORDS)
    errors = JsonlAppender(run_dir / ITEM_ERRORS, sync_every=1)
    try:
        await asyncio.gather(
            *(
                _run_role(role, [it for it in items if (it.item_id, role) not in done], clients[role],
                          appender, errors, top_k, progress, len(items), outcome)
                for role in ROLES
            )
        )
    finally:
        appender.close()
        errors.close()
    return outcome


async def _run_role(
    role: EndpointRole,
    pending: list[McqItem],
    client: EndpointClient,
    appender: JsonlAppender,
    errors: JsonlAppender,
    top_k: int,
    progress: Progress | None,
    total: int,
    outcome: RunOutcome,
) -> None:
    task_id = None
    if progress is not None:
        task_id = progress.add_task(role, total=total, completed=total - len(pending), rate="")
    queue: asyncio.Queue[McqItem] = asyncio.Queue()
    for it in pending:
        queue.put_nowait(it)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    finished = 0

    async def worker() -> None:
        nonlocal finished
        while role not in outcome.failed:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            try:
                record: McqRecord = await score_item(client, item, role, top_k)
            except EndpointError as exc:
                if not exc.is_request_error:
                    outcome.failed.setdefault(role, str(exc))
                    return
                errors.append({"item_id": item.item_id, "endpoint": role, "status": exc.status,
                               "error": str(exc)[:500]})
                outcome.item_errors[role] = outcome.item_errors.get(role, 0) + 1
            else:
                appender.append(record)
            outcome.done += 1
            finished += 1
            if progress is not None and task_id is not None:
                rate = finished / max(1e-9, loop.time() - t0)
                progress.update(task_id, advance=1, rate=f"{rate:5.2f} it/s")

    await asyncio.gather(*(worker() for _ in range(max(1, client.spec.max_concurrency))))


async def prepare_clients(clients: dict[EndpointRole, EndpointClient], top_k: int,
                          letter: bool) -> dict[EndpointRole, str]:
    """Resolve model names and prove each endpoint serves logprobs, before any item is sent.
    Returns each endpoint's model name."""
    models = {role: await clients[role].resolve_model(role) for role in ROLES}
    for role in ROLES:
        await clients[role].probe_logprobs(role, top_k if letter else 1)
    return models


def failure_message(outcome: RunOutcome, run_dir: Path) -> str:
    parts = [f"{role} endpoint failed: {msg}" for role, msg in outcome.failed.items()]
    return "; ".join(parts) + f"; finished items are saved, resume with: servecmp mcq --resume {run_dir}"
