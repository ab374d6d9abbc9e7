"""Where comparisons run: in the proxy's event loop (`LocalMirror`) or in a separate, lower-priority
process (`ProcessMirror`, the default of `shadow serve`).

Both take finished exchanges through ``submit(job) -> bool``, which never waits: a full queue drops
the job and counts it (``dropped_queue_full``). Both end in `compare_and_store`, the one path from a
`MirrorJob` to stored records and metrics, whoever produced the job (the proxy or the collector).
Process mode keeps all comparison work (candidate and secondary calls, SSE parsing, edit distances,
teacher-forced scoring, database writes) off the proxy's event loop and its GIL, and ``nice`` makes
the OS run the proxy first when the cores are busy: the primary's latency then depends on the
mirror only through the non-blocking queue put.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Protocol

from servecmp.config import ShadowConfig
from servecmp.errors import UserError
from servecmp.shadow.mirror import MirrorJob
from servecmp.shadow.prom import Telemetry
from servecmp.shadow.store import Counters, RunInfo, StoreError, save_counters
from servecmp.shadow.wiring import ComparisonParts, ShadowEndpoints, build_comparison

log = logging.getLogger("servecmp.shadow")

#: A process mirror puts accepted jobs on its queue in batches of up to this many, or after this
#: long (the comparisons wait for the candidate anyway; a proxy killed outright loses at most these
#: jobs, none of them counted as recorded).
BATCH_MAX = 64
BATCH_DELAY_S = 0.05


class MirrorSink(Protocol):
    def start(self) -> None: ...

    def submit(self, job: MirrorJob) -> bool: ...

    async def stop(self, drain_timeout_s: float) -> None: ...


def describe_failure(exc: BaseException) -> str:
    """Exception type and where it was raised, without its message: a message can quote the payload
    (prompt or answer text), which must never reach the logs."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames[-4:]))
    return f"{type(exc).__name__} at {where}" if where else type(exc).__name__


async def compare_and_store(parts: ComparisonParts, counters: Counters, job: MirrorJob) -> None:
    """Compare one job, hand its records to the writer and its measures to the metrics."""
    try:
        records = await parts.comparer.compare(job)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        counters.inc("mirror_failures", route=job.kind)
        log.error("shadow: comparison failed (request %s): %s", job.request_id, describe_failure(exc))
        return
    counters.inc("mirrored", route=job.kind)
    parts.telemetry.observe_records(records)
    parts.writer.submit(records)


def job_bytes(job: MirrorJob) -> int:
    """What a waiting job holds: the request and the primary's answer (the backlog's byte bound)."""
    return len(job.body) + len(job.primary_body)


class LocalMirror:
    """Bounded asyncio queue + worker tasks in the current event loop (replay, tests, small setups)."""

    def __init__(self, parts: ComparisonParts, counters: Counters, *, queue_size: int = 1000,
                 workers: int = 8, queue_bytes: int = 256 * 1024 * 1024) -> None:
        self.parts = parts
        self.counters = counters
        #: Bytes of the jobs waiting (not yet taken by a worker), and their bound.
        self.queued_bytes = 0
        self.queue_bytes = queue_bytes
        self._queue: asyncio.Queue[MirrorJob] = asyncio.Queue(maxsize=max(1, queue_size))
        self._n_workers = max(1, workers)
        self._tasks: list[asyncio.Task[None]] = []
        #: Jobs accepted and not yet finished (queued or being compared).
        self.pending = 0

    def start(self) -> None:
        self.parts.writer.start()
        self._tasks = [asyncio.create_task(self._work()) for _ in range(self._n_workers)]

    def submit(self, job: MirrorJob) -> bool:
        size = job_bytes(job)
        if self.queued_bytes + size > self.queue_bytes:
            self.counters.inc("dropped_queue_full", route=job.kind)
            return False
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self.counters.inc("dropped_queue_full", route=job.kind)
            return False
        self.queued_bytes += size
        self.pending += 1
        return True

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            self.queued_bytes -= job_bytes(job)
            try:
                await compare_and_store(self.parts, self.counters, job)
            finally:
                self.pending -= 1
                self._queue.task_done()

    async def stop(self, drain_timeout_s: float) -> None:
        """Let queued comparisons finish (up to the timeout), cancel the rest, close the database."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), drain_timeout_s)
        if self.pending:
            self.counters.inc("dropped_shutdown", self.pending)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await asyncio.to_thread(self.parts.writer.close)
        await self.parts.aclose()


class ProcessMirror:
    """Comparisons in a child process fed through a bounded ``multiprocessing`` queue."""

    def __init__(self, cfg: ShadowConfig, endpoints: ShadowEndpoints, run: RunInfo) -> None:
        ctx = multiprocessing.get_context("spawn")  # fork is unsafe in a process with threads
        self.shared = ctx.RawArray("q", Counters.SIZE)
        self.counters = Counters(self.shared)
        #: Histograms and error counts: the child observes, the proxy's /metrics reads.
        self.telemetry = Telemetry.shared(ctx)
        #: Jobs the child has taken off the queue (written by the child only).
        self._taken = ctx.RawValue("q", 0)
        #: Bytes of the jobs the child has taken (`job_bytes`), and of those accepted: the
        #: difference is the backlog, bounded by ``queue_mb`` as the job count is by ``queue_size``.
        self._taken_bytes = ctx.RawValue("q", 0)
        self.accepted_bytes = 0
        self._queue_bytes = int(cfg.queue_mb * 1024 * 1024)
        #: Jobs put on the queue (proxy side): at the end, accepted - taken were never compared.
        self.accepted = 0
        self._queue: Any = ctx.Queue(maxsize=max(1, cfg.queue_size))
        self._queue_size = max(1, cfg.queue_size)
        #: Accepted jobs not yet put on the queue (see `submit`), and the timer that flushes them.
        self._batch: list[MirrorJob] = []
        self._flush_timer: asyncio.TimerHandle | None = None
        self._stop_now = ctx.Event()
        self._db = cfg.db
        self._run_id = run.run_id
        self._proc = ctx.Process(
            target=child_main,
            args=(cfg, endpoints, run, self._queue, self.shared, self.telemetry.ints, self.telemetry.floats,
                  self._taken, self._stop_now, self._taken_bytes),
            name="servecmp-shadow-mirror",
            daemon=True,
        )
        self._warned_dead = False

    def start(self) -> None:
        self._proc.start()

    def submit(self, job: MirrorJob) -> bool:
        # Jobs go over in batches, so the proxy pays one queue put (a wake-up of the queue's feeder
        # thread, a pickle, a pipe write) per batch rather than per job. The bound stays per job: the
        # child counts the jobs it takes, so accepted - taken is what waits, batched or not.
        size = job_bytes(job)
        if (self.accepted - self._taken.value >= self._queue_size
                or self.accepted_bytes - self._taken_bytes.value + size > self._queue_bytes):
            self.counters.inc("dropped_queue_full", route=job.kind)
            if not self._warned_dead and not self._proc.is_alive():
                self._warned_dead = True
                log.error("shadow: the mirror process has exited; comparisons are being dropped")
            return False
        self.accepted += 1
        self.accepted_bytes += size
        self._batch.append(job)
        if len(self._batch) >= BATCH_MAX:
            self._flush()
        elif self._flush_timer is None:
            try:
                self._flush_timer = asyncio.get_running_loop().call_later(BATCH_DELAY_S, self._flush)
            except RuntimeError:  # not called from an event loop: no timer to flush it later
                self._flush()
        return True

    def _flush(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if not self._batch:
            return
        batch, self._batch = self._batch, []
        try:
            self._queue.put_nowait(batch)
        except queue.Full:  # cannot happen while batches <= jobs waiting <= queue size; counted if it does
            self.accepted -= len(batch)
            self.accepted_bytes -= sum(job_bytes(j) for j in batch)
            for job in batch:
                self.counters.inc("dropped_queue_full", route=job.kind)

    async def stop(self, drain_timeout_s: float) -> None:
        self._flush()
        await asyncio.to_thread(self._stop_blocking, drain_timeout_s)

    def _stop_blocking(self, drain_timeout_s: float) -> None:
        deadline = time.monotonic() + drain_timeout_s
        if self._proc.is_alive():
            # The end marker queues behind the jobs, so the child compares what is queued first.
            with contextlib.suppress(queue.Full):
                self._queue.put(None, timeout=max(0.01, drain_timeout_s))
            self._proc.join(max(0.0, deadline - time.monotonic()))
        if self._proc.is_alive():
            self._stop_now.set()  # out of time: the child cancels what it compares and closes the database
            self._proc.join(15)
        if self._proc.is_alive():
            log.error("shadow: the mirror process did not stop; terminating it")
            self._proc.terminate()
            self._proc.join(5)
        self._queue.cancel_join_thread()
        self._queue.close()
        # Jobs still in the pipe (or not yet written to it) when the child stopped were accepted
        # and never compared; the child counted the ones it cancelled mid-comparison.
        never_taken = self.accepted - int(self._taken.value)
        if never_taken > 0:
            self.counters.inc("dropped_shutdown", never_taken)
        # The child stored the counters last time it wrote; if it died early, these are the only
        # ones (the proxy's own counts are all in shared memory).
        try:
            save_counters(self._db, self._run_id, self.counters.snapshot())
        except (StoreError, UserError) as exc:
            log.error("shadow: could not store the final counters: %s", exc)


def child_main(
    cfg: ShadowConfig, endpoints: ShadowEndpoints, run: RunInfo, jobs: Any, shared: Any, hist_ints: Any,
    hist_floats: Any, taken: Any, stop_now: Any, taken_bytes: Any = None,
) -> None:
    """Entry point of the mirror process."""
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # Ctrl-C reaches the whole process group; the parent's shutdown (end marker, then the stop
    # event) decides when this process stops, so queued comparisons can finish.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if cfg.mirror_nice:
        with contextlib.suppress(OSError):
            os.nice(cfg.mirror_nice)
    asyncio.run(_child(cfg, endpoints, run, jobs, Counters(shared), Telemetry(hist_ints, hist_floats), taken,
                       stop_now, os.getppid(), taken_bytes))


async def _child(
    cfg: ShadowConfig, endpoints: ShadowEndpoints, run: RunInfo, jobs: Any, counters: Counters,
    telemetry: Telemetry, taken: Any, stop_now: Any, parent_pid: int, taken_bytes: Any = None,
) -> None:
    parts = build_comparison(cfg, endpoints, run, counters, telemetry)
    parts.writer.start()
    loop = asyncio.get_running_loop()
    slots = threading.Semaphore(cfg.mirror_concurrency)
    finished = asyncio.Event()
    tasks: set[asyncio.Task[None]] = set()

    async def run_one(job: MirrorJob) -> None:
        try:
            await compare_and_store(parts, counters, job)
        finally:
            slots.release()

    def launch(job: MirrorJob) -> None:
        task = loop.create_task(run_one(job))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def stopping() -> bool:
        if os.getppid() != parent_pid:  # the proxy died without stopping us
            stop_now.set()
        return bool(stop_now.is_set())

    def reader() -> None:
        # Takes a job only when a comparison slot is free, so the backlog stays in the bounded
        # queue (where the proxy sees it as full) instead of piling up here. The proxy sends lists
        # of jobs (batches): one is counted as taken only when it starts.
        batch: collections.deque[MirrorJob] = collections.deque()
        while not stopping():
            if not slots.acquire(timeout=0.2):
                continue
            job = None
            while not stopping():
                if batch:
                    job = batch.popleft()
                    break
                try:
                    item = jobs.get(timeout=0.2)
                except queue.Empty:
                    continue
                if isinstance(item, list):
                    batch.extend(item)
                    continue
                job = item
                break
            if job is None:
                break
            taken.value += 1
            if taken_bytes is not None:
                taken_bytes.value += job_bytes(job)
            loop.call_soon_threadsafe(launch, job)
        loop.call_soon_threadsafe(finished.set)

    threading.Thread(target=reader, name="shadow-mirror-reader", daemon=True).start()
    await finished.wait()
    while tasks and not stop_now.is_set():
        await asyncio.wait(set(tasks), timeout=0.2)
    left = sum(1 for t in tasks if not t.done())
    for t in list(tasks):
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if left:
        counters.inc("dropped_shutdown", left)  # what is still queued, the proxy counts
    await asyncio.to_thread(parts.writer.close)
    await parts.aclose()
