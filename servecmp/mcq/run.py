"""Run an MCQ comparison: items × {baseline, candidate} → records appended to the run directory.

Each endpoint gets its own pool of workers, so a slow endpoint never holds the other back, and
every finished record is on disk before the next one starts being waited for. A resumed run
skips every (item, endpoint) pair that already has a record.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from servecmp.endpoints import EndpointClient, EndpointError
from servecmp.mcq.records import McqItem, McqRecord
from servecmp.mcq.scoring import score_item
from servecmp.records import ROLES, EndpointRole
from servecmp.runstore import JsonlAppender, iter_jsonl

RECORDS = "records.jsonl"
#: Items an endpoint refused (HTTP 400/413/422, e.g. a prompt over its context length). Kept apart
#: from records so the metrics never see them; a resume tries them again (say, after a server
#: restart with a longer --max-model-len).
ITEM_ERRORS = "item_errors.jsonl"


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


async def prepare_clients(clients: dict[EndpointRole, EndpointClient], top_k: int, letter: bool) -> None:
    """Resolve model names and prove each endpoint serves logprobs, before any item is sent."""
    for role in ROLES:
        await clients[role].resolve_model(role)
    for role in ROLES:
        await clients[role].probe_logprobs(role, top_k if letter else 1)


def failure_message(outcome: RunOutcome, run_dir: Path) -> str:
    parts = [f"{role} endpoint failed: {msg}" for role, msg in outcome.failed.items()]
    return "; ".join(parts) + f"; finished items are saved, resume with: servecmp mcq --resume {run_dir}"
