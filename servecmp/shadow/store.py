"""The shadow database: one SQLite file (WAL) of request pairs, runs and counters.

Writes never happen on the request path: `PairWriter.submit` puts records on a bounded queue
(a full queue drops and counts), and one writer thread inserts them in batches. Privacy is enforced
here, in one place: with ``hash_only`` the prompt, the request body and both answers are replaced
by nothing (their SHA-256 is stored instead), so no text reaches the file.

Size cap: before each batch the writer compares the database's size with the cap and, past it,
drops rows (counted as ``dropped_db_full``); ``PRAGMA max_page_count`` backs that up inside SQLite.
The WAL file can hold up to ~4 MB more between checkpoints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from servecmp.errors import UserError

log = logging.getLogger("servecmp.shadow")

SCHEMA_VERSION = 1

#: Every counter a run keeps; created at zero when the run starts so reports show them all.
COUNTER_NAMES = (
    "requests",  # proxied requests on the mirrored paths
    "sampled_out",  # not mirrored by the sampling rate
    "mirrored",  # comparisons completed (one per request, whatever the number of targets)
    "dropped_queue_full",  # mirror queue full: request not compared
    "dropped_writer_full",  # writer queue full: records not stored
    "dropped_db_full",  # database at its size cap: records not stored
    "dropped_too_large",  # body larger than the capture limit: not compared
    "dropped_shutdown",  # still queued when the proxy stopped
    "client_disconnected",  # client left before the primary finished: not compared
    "primary_unreachable",  # answered 502 to the client
    "primary_dropped",  # primary stream broke after the response started
    "mirror_failures",  # a comparison raised (a bug or an unexpected payload); logged
)

TEXT_COLUMNS = ("prompt", "request_json", "primary_answer", "other_answer")


@dataclass
class PairRecord:
    """One comparison: the primary's answer against one other endpoint's (candidate or secondary)."""

    run_id: str
    request_id: str
    ts: float
    source: str  # "live" or "replay"
    endpoint: str  # "chat" or "completions"
    stream: bool
    target: str  # "candidate" or "secondary"
    prompt_sha256: str
    primary_status: int
    primary_latency_s: float
    prompt: str | None = None
    request_json: str | None = None
    primary_answer: str | None = None
    primary_sha256: str | None = None
    primary_error: str | None = None
    other_answer: str | None = None
    other_sha256: str | None = None
    other_status: int | None = None
    other_error: str | None = None
    other_latency_s: float | None = None
    latency_ratio: float | None = None
    exact_match: bool | None = None
    first_diff: int | None = None
    edit_distance: float | None = None
    length_ratio: float | None = None
    n_tokens_primary: int | None = None
    n_tokens_other: int | None = None
    tokenisation: str | None = None
    tf_source: str | None = None  # where the primary's top-k came from: "response" or "prompt_logprobs"
    tf_positions: int | None = None
    kl_mean: float | None = None
    kl_max: float | None = None
    top1_agree: float | None = None
    dp_mean: float | None = None
    dp_max_abs: float | None = None
    dp_rms: float | None = None
    tf_error: str | None = None


PAIR_COLUMNS = tuple(f.name for f in dataclasses.fields(PairRecord))
_SQL_TYPES = {"str": "TEXT", "int": "INTEGER", "float": "REAL", "bool": "INTEGER"}


def _column_sql(f: dataclasses.Field[Any]) -> str:
    base = str(f.type).split("|")[0].strip()
    return f"{f.name} {_SQL_TYPES[base]}"


SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, started_at REAL NOT NULL, mode TEXT NOT NULL,
    primary_url TEXT, candidate_url TEXT, secondary_url TEXT,
    hash_only INTEGER NOT NULL, sample_rate REAL NOT NULL, settings TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    run_id TEXT NOT NULL, name TEXT NOT NULL, value INTEGER NOT NULL, PRIMARY KEY (run_id, name)
);
CREATE TABLE IF NOT EXISTS pairs (
    id INTEGER PRIMARY KEY, {", ".join(_column_sql(f) for f in dataclasses.fields(PairRecord))}
);
CREATE INDEX IF NOT EXISTS pairs_ts ON pairs (ts);
CREATE INDEX IF NOT EXISTS pairs_request ON pairs (request_id);
"""


class Counters:
    """Named event counts, shared by the event loop, the writer thread and (in process mode) the
    mirror process.

    ``shared`` is a ctypes array of ``len(COUNTER_NAMES)`` int64 in shared memory (a
    ``multiprocessing`` RawArray); every counter has one writing process, so no cross-process lock
    is needed, and the in-process lock covers the threads.
    """

    def __init__(self, shared: Any | None = None) -> None:
        self._lock = threading.Lock()
        self._values: Any = shared if shared is not None else [0] * len(COUNTER_NAMES)
        self._index = {name: i for i, name in enumerate(COUNTER_NAMES)}

    def inc(self, name: str, n: int = 1) -> None:
        i = self._index[name]
        with self._lock:
            self._values[i] += n

    def get(self, name: str) -> int:
        return int(self._values[self._index[name]])

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {name: int(self._values[i]) for name, i in self._index.items()}


@dataclass(frozen=True)
class RunInfo:
    mode: str  # "serve" or "replay"
    primary_url: str
    candidate_url: str
    secondary_url: str | None
    hash_only: bool
    sample_rate: float
    #: Non-secret settings worth knowing when reading the report (never keys).
    settings: dict[str, Any]
    run_id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex[:12])


def _row(rec: PairRecord, hash_only: bool) -> tuple[Any, ...]:
    if hash_only:
        return tuple(None if c in TEXT_COLUMNS else getattr(rec, c) for c in PAIR_COLUMNS)
    return tuple(getattr(rec, c) for c in PAIR_COLUMNS)


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(SCHEMA)
    conn.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
    )
    return conn


def open_readonly(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise UserError(f"shadow database {path} not found")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        conn.row_factory = sqlite3.Row
        conn.execute("SELECT 1 FROM pairs LIMIT 1")
    except sqlite3.DatabaseError as exc:
        raise UserError(f"{path} is not a servecmp shadow database ({exc})") from exc
    return conn


_STOP = object()


def register_run(path: Path, run: RunInfo, *, max_db_mb: float | None = None) -> None:
    """Create the database if needed and record the run (settings, zeroed counters).

    Done once, in the process that parses the user's options, so a bad path or a full database is
    one clear error before any traffic flows.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = connect(path)
    except (OSError, sqlite3.DatabaseError) as exc:
        raise UserError(f"cannot open shadow database {path}: {exc}") from exc
    try:
        with conn:
            conn.execute("BEGIN")
            conn.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run.run_id, time.time(), run.mode, run.primary_url, run.candidate_url, run.secondary_url,
                 int(run.hash_only), run.sample_rate, json.dumps(run.settings, sort_keys=True)),
            )
            conn.executemany(
                "INSERT OR IGNORE INTO counters (run_id, name, value) VALUES (?, ?, 0)",
                [(run.run_id, n) for n in COUNTER_NAMES],
            )
    except sqlite3.OperationalError as exc:
        raise UserError(f"shadow database {path} is full or unwritable ({exc})") from exc
    finally:
        conn.close()
    if max_db_mb is not None and path.stat().st_size >= max_db_mb * 1024 * 1024:
        raise UserError(f"shadow database {path} is already larger than --max-db-mb {max_db_mb}")


class PairWriter:
    """Bounded queue + one thread that writes `PairRecord` batches to the database of a registered
    run (see `register_run`)."""

    def __init__(
        self,
        path: Path,
        run: RunInfo,
        counters: Counters,
        *,
        max_db_mb: float | None = None,
        queue_size: int = 10_000,
        batch_size: int = 256,
        flush_interval_s: float = 0.5,
    ) -> None:
        self.path = path
        self.run = run
        self.counters = counters
        self._max_bytes = int(max_db_mb * 1024 * 1024) if max_db_mb else None
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max(1, queue_size))
        self._batch_size = batch_size
        self._flush_interval = flush_interval_s
        self._full = False
        self.rows_written = 0
        try:
            self._conn = connect(path)
        except (OSError, sqlite3.DatabaseError) as exc:
            raise UserError(f"cannot open shadow database {path}: {exc}") from exc
        self._page_size = int(self._conn.execute("PRAGMA page_size").fetchone()[0])
        if self._max_bytes is not None:
            self._conn.execute(f"PRAGMA max_page_count = {max(1, self._max_bytes // self._page_size)}")
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
        """Write what is queued, store the final counters and close the file."""
        if self._thread.is_alive():
            # The stop marker must get in even when the queue is full; a blocking put waits for room.
            with contextlib.suppress(queue.Full):
                self._queue.put(_STOP, timeout=timeout_s)
            self._thread.join(timeout_s)
        else:
            self._write_counters()
        with contextlib.suppress(sqlite3.Error):
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
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
            try:
                if batch:
                    self._write_pairs(batch)
                self._write_counters()
            except sqlite3.Error:
                log.exception("shadow writer: database error")

    def _size_bytes(self) -> int:
        return int(self._conn.execute("PRAGMA page_count").fetchone()[0]) * self._page_size

    def _write_pairs(self, batch: list[PairRecord]) -> None:
        if self._full or (self._max_bytes is not None and self._size_bytes() >= self._max_bytes):
            self._full = True
            self.counters.inc("dropped_db_full", len(batch))
            return
        rows = [_row(r, self.run.hash_only) for r in batch]
        placeholders = ", ".join("?" for _ in PAIR_COLUMNS)
        try:
            with self._conn:
                self._conn.execute("BEGIN")
                self._conn.executemany(
                    f"INSERT INTO pairs ({', '.join(PAIR_COLUMNS)}) VALUES ({placeholders})", rows
                )
        except sqlite3.OperationalError as exc:
            if "full" not in str(exc):
                raise
            self._full = True
            self.counters.inc("dropped_db_full", len(batch))
            return
        self.rows_written += len(rows)

    def _write_counters(self) -> None:
        snap = self.counters.snapshot()
        with self._conn:
            self._conn.execute("BEGIN")
            self._conn.executemany(
                "UPDATE counters SET value = ? WHERE run_id = ? AND name = ?",
                [(v, self.run.run_id, k) for k, v in snap.items()],
            )


def save_counters(path: Path, run_id: str, snapshot: dict[str, int]) -> None:
    """Store a run's counters from outside the writer (the proxy, after the mirror process ended)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        with conn:
            conn.execute("BEGIN")
            conn.executemany(
                "UPDATE counters SET value = ? WHERE run_id = ? AND name = ?",
                [(v, run_id, k) for k, v in snapshot.items()],
            )
    finally:
        conn.close()


def iter_pairs(conn: sqlite3.Connection, where: str = "", params: Iterable[Any] = ()) -> list[sqlite3.Row]:
    return list(conn.execute(f"SELECT * FROM pairs {where} ORDER BY ts, id", tuple(params)))
