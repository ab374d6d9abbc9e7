"""Asking items of endpoints: one pool of workers per endpoint, records appended as they come.

The item loop every MCQ pass shares (the main pass and the noise floor in `servecmp.mcq.run`, the
looks of `servecmp.mcq.sequential`, the drift check of `servecmp.mcq.stored`): each endpoint gets its
own workers, so a slow endpoint never holds the others back; a worker takes a seat first and then the
next item from a `servecmp.mcq.order.PrefixScheduler`; finished records reach the file in batches of
whole lines. Records are keyed by (item, endpoint name, repeat); a resumed pass skips every key that
already has a record.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import Progress, TextColumn

from servecmp.concurrency import DEFAULT_MAX_LIMIT
from servecmp.endpoints import EndpointClient, EndpointError
from servecmp.mcq.order import PrefixScheduler
from servecmp.mcq.records import ITEM_ERRORS, RECORDS, McqItem, McqRecord
from servecmp.mcq.scoring import score_item
from servecmp.progress import counting_progress
from servecmp.records import EndpointRole
from servecmp.runstore import JsonlAppender, iter_jsonl


def floor_concurrency(concurrency: int | str) -> int:
    """Another concurrency than the main pass's: 1 when it ran several requests at once ("auto"
    included), else 2."""
    return 1 if concurrency == "auto" or int(concurrency) > 1 else 2


def _role(name: str) -> EndpointRole:
    return "baseline" if name in ("baseline", "secondary") else "candidate"


@dataclass
class RunOutcome:
    done: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    item_errors: dict[str, int] = field(default_factory=dict)


def done_keys(run_dir: Path) -> set[tuple[str, str, int]]:
    """(item, endpoint name, repeat) of every record on disk."""
    return {(r["item_id"], r["endpoint"], int(r.get("repeat", 0))) for r in iter_jsonl(run_dir / RECORDS)}


def make_progress(console: Console | None = None) -> Progress:
    return counting_progress(
        TextColumn("{task.fields[rate]}"),
        description="{task.description:<10}",
        console=console,
        transient=False,
        # Each redraw costs ~1.6 ms of CPU; 10 a second (rich's default) tripled servecmp's CPU per item.
        refresh_per_second=2,
    )


async def run_items(
    items: Sequence[McqItem],
    clients: dict[str, EndpointClient],
    run_dir: Path,
    *,
    top_k: int,
    progress: Progress | None = None,
    repeat: int = 0,
    ordered: bool = True,
) -> RunOutcome:
    """Score every pending (item, endpoint) pair, appending each record as it completes.

    `clients` maps endpoint names (what records carry) to clients. With ``repeat`` > 0 (the noise
    floor) the records carry that marker and every endpoint runs at `floor_concurrency`.
    ``ordered``: the main pass sends prefix groups together (`servecmp.mcq.order`); False sends
    the items as given (benchmarks compare the two).
    Stops an endpoint's workers at its first request that fails after all retries (the endpoint is
    probably down); the others carry on so their finished work is kept.
    """
    done = done_keys(run_dir)
    outcome = RunOutcome()
    # Lines reach the file in batches (at most 0.1 s late) and fsync runs off the event loop: at
    # hundreds of answers a second, a write call per record and a blocking fsync every 5 s cost the
    # loop time every request in flight waits for. A killed run re-asks the unwritten few on resume.
    appender = JsonlAppender(run_dir / RECORDS, flush_seconds=0.1, background_sync=True)
    errors = JsonlAppender(run_dir / ITEM_ERRORS, sync_every=1)
    try:
        await asyncio.gather(
            *(
                _run_role(name, [it for it in items if (it.item_id, name, repeat) not in done], client,
                          appender, errors, top_k, progress, len(items), outcome, repeat, ordered)
                for name, client in clients.items()
            )
        )
    finally:
        appender.close()
        errors.close()
    return outcome


async def _run_role(
    name: str,
    pending: list[McqItem],
    client: EndpointClient,
    appender: JsonlAppender,
    errors: JsonlAppender,
    top_k: int,
    progress: Progress | None,
    total: int,
    outcome: RunOutcome,
    repeat: int = 0,
    ordered: bool = True,
) -> None:
    task_id = None
    if progress is not None:
        label = name if not repeat else f"{name} (again)"
        task_id = progress.add_task(label, total=total, completed=total - len(pending), rate="")
    # The main pass groups items by prompt prefix (servecmp.mcq.order); the noise floor keeps its
    # shuffled order on purpose.
    scheduler = PrefixScheduler(pending, grouped=ordered and not repeat)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    finished = 0
    key = name if not repeat else f"{name} (noise floor)"
    spec_level = client.spec.max_concurrency
    if repeat:
        concurrency = floor_concurrency(spec_level)
    else:
        # "auto": a worker per seat the limit may reach; the client's gate holds the rest back.
        concurrency = spec_level if spec_level != "auto" else client.spec.concurrency_cap or DEFAULT_MAX_LIMIT

    async def worker() -> None:
        nonlocal finished
        while key not in outcome.failed:
            # The seat first, then the item: the scheduler picks what to send when it can be sent.
            async with client.slot():
                item = await scheduler.next()
                if item is None:
                    return
                failure: EndpointError | None = None
                try:
                    record: McqRecord = await score_item(client, item, _role(name), top_k)
                except EndpointError as exc:
                    failure = exc
                finally:
                    scheduler.done(item)
            if failure is not None:
                if not failure.is_request_error:
                    outcome.failed.setdefault(key, str(failure))
                    return
                errors.append({"item_id": item.item_id, "endpoint": name, "status": failure.status,
                               "error": str(failure)[:500], **({"repeat": repeat} if repeat else {})})
                outcome.item_errors[key] = outcome.item_errors.get(key, 0) + 1
            else:
                if record.endpoint != name or repeat:
                    record = record.model_copy(update={"endpoint": name, "repeat": repeat})
                appender.append(record)
            outcome.done += 1
            finished += 1
            if progress is not None and task_id is not None:
                rate = finished / max(1e-9, loop.time() - t0)
                progress.update(task_id, advance=1, rate=f"{rate:5.2f} it/s")

    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
