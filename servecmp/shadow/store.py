"""The shadow database: request pairs, runs and counters, in SQLite (a file path, the default) or
PostgreSQL (a ``postgresql://`` URL, for several proxy replicas writing to one database).

One schema (`TABLES`, rendered per dialect), one writer (`PairWriter`) and one interface
(`StoreConn`) for both backends: `servecmp.shadow.sqlite_store` and `servecmp.shadow.pg_store`.
`open_store(target)` picks the backend from the target's form.

Writes never happen on the request path: `PairWriter.submit` puts records on a bounded queue
(a full queue drops and counts), and one writer thread inserts them in batches. Each batch is one
transaction that inserts the rows *and* stores the run's counters, ``recorded`` included, so the
``recorded`` counter in the database always equals the run's rows there; the in-memory ``recorded``
counter (what ``/metrics`` exports) is raised only after that commit. So every request the proxy
has counted as recorded is in the database, whatever happens to the process afterwards.

Privacy is enforced here, in one place: with ``hash_only`` the prompt, the request body and both
answers are replaced by nothing (their SHA-256 is stored instead), so no text reaches the database.
A database URL's password never reaches a message, a log line or the stored run settings
(`redact_target`).

Size cap: before each batch the writer compares the database's size with the cap and, past it,
drops rows (counted as ``dropped_db_full``). SQLite backs that up with ``PRAGMA max_page_count``
(the WAL file can hold up to ~4 MB more between checkpoints); in PostgreSQL the size is that of
servecmp's tables, checked by each replica before its batch, so several replicas can overshoot the
cap by up to one batch each.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections import Counter as Tally
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from servecmp.errors import UserError

if TYPE_CHECKING:
    pass

from servecmp.shadow.schema import (
    COUNTER_NAMES,
    INDEXES,
    PAIR_COLUMNS,
    ROUTE_KINDS,
    SCHEMA_VERSION,
    TABLES,
    TEXT_COLUMNS,
    Counters,
    PairRecord,
    Row,
    RunInfo,
    StoreConn,
    StoreError,
    is_postgres,
    is_sqlite_file,
    missing_columns,
    pair_row,
    redact_target,
    redact_url,
    render_schema,
    scrub,
    secrets_of,
)

__all__ = [
    "COUNTER_NAMES",
    "Counters",
    "INDEXES",
    "PAIR_COLUMNS",
    "PairRecord",
    "PairWriter",
    "ROUTE_KINDS",
    "Row",
    "RunInfo",
    "SCHEMA_VERSION",
    "StoreConn",
    "StoreError",
    "TABLES",
    "TEXT_COLUMNS",
    "is_postgres",
    "is_sqlite_file",
    "load_all",
    "missing_columns",
    "open_readonly",
    "open_store",
    "pair_row",
    "redact_target",
    "redact_url",
    "register_run",
    "render_schema",
    "save_counters",
    "scrub",
    "secrets_of",
]

log = logging.getLogger("servecmp.shadow")


def open_store(target: str | Path, *, readonly: bool = False, max_db_mb: float | None = None) -> StoreConn:
    """A connection to the database at ``target``: a ``postgresql://`` URL or an SQLite file path.
    One-line UserError (password redacted) when it cannot be opened."""
    if is_postgres(target):
        from servecmp.shadow.pg_store import PgConn

        return PgConn.open(str(target), readonly=readonly)
    from servecmp.shadow.sqlite_store import SqliteConn

    return SqliteConn.open(Path(target), readonly=readonly, max_db_mb=max_db_mb)


def register_run(target: str | Path, run: RunInfo, *, max_db_mb: float | None = None) -> None:
    """Create the database if needed and record the run (settings, zeroed counters).

    Done once, in the process that parses the user's options, so a bad path or URL, an unreachable
    server or a full database is one clear error before any traffic flows.
    """
    conn = open_store(target)
    try:
        try:
            conn.register_run(run)
        except StoreError as exc:
            raise UserError(f"shadow database {conn.label} is full or unwritable ({exc})") from None
        if max_db_mb is not None:
            try:
                size = conn.size_bytes()
            except StoreError as exc:
                raise UserError(f"shadow database {conn.label}: {exc}") from None
            if size >= max_db_mb * 1024 * 1024:
                raise UserError(f"shadow database {conn.label} is already larger than --max-db-mb {max_db_mb}")
    finally:
        conn.close()


def save_counters(target: str | Path, run_id: str, snapshot: dict[str, int]) -> None:
    """Store a run's counters from outside the writer (the proxy, after the mirror process ended)."""
    conn = open_store(target)
    try:
        conn.write_counters(run_id, snapshot)
    finally:
        conn.close()


def load_all(target: str | Path) -> tuple[list[Row], dict[str, int], list[Row]]:
    conn = open_store(target, readonly=True)
    try:
        return conn.load()
    finally:
        conn.close()


def open_readonly(path: Path) -> StoreConn:
    """An existing database, for reading (UserError if absent or not a shadow database)."""
    return open_store(path, readonly=True)


_STOP = object()


class PairWriter:
    """Bounded queue + one thread that writes `PairRecord` batches to the database of a registered
    run (see `register_run`)."""

    def __init__(
        self,
        target: str | Path,
        run: RunInfo,
        counters: Counters,
        *,
        max_db_mb: float | None = None,
        queue_size: int = 10_000,
        batch_size: int = 256,
        flush_interval_s: float = 0.5,
    ) -> None:
        self.target = target
        self.run = run
        self.counters = counters
        self._max_bytes = int(max_db_mb * 1024 * 1024) if max_db_mb else None
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max(1, queue_size))
        self._batch_size = batch_size
        self._flush_interval = flush_interval_s
        self._full = False
        self.rows_written = 0
        self._conn = open_store(target, max_db_mb=max_db_mb)
        self._thread = threading.Thread(target=self._loop, name="shadow-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, records: Sequence[PairRecord]) -> bool:
        """Queue records for writing; never blocks. False (and counted) when the queue is full."""
        try:
            self._queue.put_nowait(list(records))
        except queue.Full:
            self.counters.inc("dropped_writer_full", len(records))
            return False
        return True

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, store the final counters and close the connection."""
        if self._thread.is_alive():
            # The stop marker must get in even when the queue is full; a blocking put waits for room.
            with contextlib.suppress(queue.Full):
                self._queue.put(_STOP, timeout=timeout_s)
            self._thread.join(timeout_s)
        else:
            self._write_counters()
        self._conn.close()

    def _loop(self) -> None:
        stop = False
        while not stop:
            batch: list[PairRecord] = []
            try:
                item = self._queue.get(timeout=self._flush_interval)
            except queue.Empty:
                item = None
            while item is not None:
                if item is _STOP:
                    stop = True
                    break
                assert isinstance(item, list)
                batch.extend(item)
                if len(batch) >= self._batch_size:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item = None
            if batch:
                self._write_pairs(batch)
            else:
                self._write_counters()

    def _write_pairs(self, batch: list[PairRecord]) -> None:
        try:
            if self._full or (self._max_bytes is not None and self._conn.size_bytes() >= self._max_bytes):
                self._full = True
                self.counters.inc("dropped_db_full", len(batch))
                self._write_counters()
                return
            rows = [pair_row(r, self.run.hash_only) for r in batch]
            counters = self.counters.snapshot()
            # The stored "recorded" includes this batch: it commits with the rows it counts.
            counters["recorded"] += len(rows)
            self._conn.insert_batch(self.run.run_id, rows, counters)
        except StoreError as exc:
            if exc.full:
                self._full = True
                self.counters.inc("dropped_db_full", len(batch))
            else:
                self.counters.inc("dropped_db_error", len(batch))
                log.error("shadow writer: %d records not stored: %s", len(batch), exc)
            self._write_counters()
            return
        # Only now, after the commit, are the rows counted as recorded (what /metrics exports).
        for route, n in Tally(r.endpoint for r in batch).items():
            self.counters.inc("recorded", n, route=route)
        self.rows_written += len(batch)

    def _write_counters(self) -> None:
        try:
            self._conn.write_counters(self.run.run_id, self.counters.snapshot())
        except StoreError as exc:
            log.error("shadow writer: counters not stored: %s", exc)
