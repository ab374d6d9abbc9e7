"""The shadow database's schema and interface, shared by both backends.

`TABLES` (rendered per dialect by `render_schema`), the statements run on them (`statements`, per
driver placeholder), the record type (`PairRecord`), the counters, target helpers (`is_postgres`,
`is_sqlite_file`, `redact_target`, `scrub`) and the backend interface `StoreConn`.
`servecmp.shadow.sqlite_store` and `servecmp.shadow.pg_store` implement `StoreConn`;
`servecmp.shadow.store` opens one (`open_store`) and writes through it (`PairWriter`). Kept apart
from store.py so the backends import only this module, never the module that imports them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

if TYPE_CHECKING:
    from servecmp.shadow.measures import TeacherForcedStats

log = logging.getLogger("servecmp.shadow")

#: Version of the database layout (2: the ``recorded`` and ``dropped_db_error`` counters; 3: the
#: pairs columns ``kl_tight_mean``, ``kl_cb_mean``, ``js_mean`` and ``tf_token_stats``). Columns are
#: only ever added, at the end of ``pairs``: opening an older database for writing adds them
#: (`missing_columns`), and older rows read back with them null.
SCHEMA_VERSION = 3

#: Every counter a run keeps; created at zero when the run starts so reports show them all.
COUNTER_NAMES = (
    "requests",  # proxied requests on the mirrored paths
    "sampled_out",  # not mirrored by the sampling rate
    "mirrored",  # comparisons completed (one per request, whatever the number of targets)
    "recorded",  # pair rows committed to the database (raised after the commit)
    "dropped_queue_full",  # mirror queue full: request not compared
    "dropped_writer_full",  # writer queue full: records not stored
    "dropped_db_full",  # database at its size cap: records not stored
    "dropped_db_error",  # the database failed a batch (e.g. PostgreSQL unreachable): records not stored
    "dropped_too_large",  # body larger than the capture limit: not compared
    "dropped_shutdown",  # still queued when the proxy stopped
    "client_disconnected",  # client left before the primary finished: not compared
    "primary_unreachable",  # answered 502 to the client
    "primary_dropped",  # primary stream broke after the response started
    "mirror_failures",  # a comparison raised (a bug or an unexpected payload); logged
)

#: The routes counters are also kept per (`PairRecord.endpoint` values); anything else is "other".
ROUTE_KINDS = ("chat", "completions")

TEXT_COLUMNS = ("prompt", "request_json", "primary_answer", "other_answer")


@dataclass
class PairRecord:
    """One comparison: the primary's answer against one other endpoint's (candidate or secondary)."""

    run_id: str
    request_id: str
    ts: float
    source: str  # "live" (proxy), "mirror" (collect) or "replay"
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
    # Layout 3 (added at the end so a migrated database has the columns in a fresh one's order):
    # per-request means of the tight top-k estimates, and the per-token values of llama.cpp's block.
    kl_tight_mean: float | None = None
    kl_cb_mean: float | None = None
    js_mean: float | None = None
    #: `servecmp.shadow.measures.TokenStats.pack` bytes (13 per answer token): numbers only, so
    #: --hash-only keeps them.
    tf_token_stats: bytes | None = None

    def set_teacher_forced(self, s: TeacherForcedStats) -> None:
        """Fill the teacher-forced columns from one request's statistics."""
        self.tf_positions = s.n_positions
        self.kl_mean, self.kl_max = s.kl_mean, s.kl_max
        self.top1_agree = s.top1_agree
        self.dp_mean, self.dp_max_abs, self.dp_rms = s.dp_mean, s.dp_max_abs, s.dp_rms
        self.kl_tight_mean, self.kl_cb_mean, self.js_mean = s.kl_tight_mean, s.kl_cb_mean, s.js_mean
        self.tf_token_stats = s.tokens.pack()


PAIR_COLUMNS = tuple(f.name for f in dataclasses.fields(PairRecord))

# ---- the one schema ----------------------------------------------------------------------------

#: Logical column types; each backend renders them (`render_schema`). Booleans are stored as
#: integers in both (0/1), so rows read back the same from either.
_PY_TYPES = {"str": "text", "int": "int", "float": "real", "bool": "int", "bytes": "blob"}


def _logical(f: dataclasses.Field[Any]) -> str:
    return _PY_TYPES[str(f.type).split("|")[0].strip()]


#: table -> [(column, logical type, constraint)], and the table's extra clauses.
TABLES: dict[str, tuple[list[tuple[str, str, str]], str]] = {
    "meta": ([("key", "text", "PRIMARY KEY"), ("value", "text", "NOT NULL")], ""),
    "runs": (
        [("run_id", "text", "PRIMARY KEY"), ("started_at", "real", "NOT NULL"), ("mode", "text", "NOT NULL"),
         ("primary_url", "text", ""), ("candidate_url", "text", ""), ("secondary_url", "text", ""),
         ("hash_only", "int", "NOT NULL"), ("sample_rate", "real", "NOT NULL"), ("settings", "text", "NOT NULL")],
        "",
    ),
    "counters": (
        [("run_id", "text", "NOT NULL"), ("name", "text", "NOT NULL"), ("value", "int", "NOT NULL")],
        ", PRIMARY KEY (run_id, name)",
    ),
    "pairs": ([("id", "id", "")] + [(f.name, _logical(f), "") for f in dataclasses.fields(PairRecord)], ""),
}
INDEXES = ("CREATE INDEX IF NOT EXISTS pairs_ts ON pairs (ts)",
           "CREATE INDEX IF NOT EXISTS pairs_request ON pairs (request_id)",
           "CREATE INDEX IF NOT EXISTS pairs_run ON pairs (run_id)")


def render_schema(types: dict[str, str]) -> list[str]:
    """The CREATE statements of `TABLES` with ``types`` mapping logical types to the dialect's."""
    out = []
    for table, (columns, extra) in TABLES.items():
        cols = ", ".join(f"{name} {types[kind]} {constraint}".strip() for name, kind, constraint in columns)
        out.append(f"CREATE TABLE IF NOT EXISTS {table} ({cols}{extra})")
    return [*out, *INDEXES]


def missing_columns(table: str, existing: Sequence[str]) -> list[tuple[str, str]]:
    """(column, logical type) of `TABLES[table]` that a database's ``existing`` columns lack, in
    schema order: what an older database gets by ``ALTER TABLE ... ADD COLUMN`` when opened for
    writing (columns are only ever added, without constraints)."""
    have = set(existing)
    return [(name, kind) for name, kind, _ in TABLES[table][0] if name not in have]


# ---- targets, redaction ------------------------------------------------------------------------

PG_SCHEMES = ("postgresql", "postgres")


def is_postgres(target: str | Path) -> bool:
    return isinstance(target, str) and target.split("://", 1)[0].lower() in PG_SCHEMES and "://" in target


#: The first bytes of every SQLite database file (sqlite.org/fileformat.html, "The Database Header").
SQLITE_MAGIC = b"SQLite format 3\x00"


def is_sqlite_file(path: Path) -> bool:
    """An existing file that starts as an SQLite database does (not a JSONL file, say)."""
    if not path.is_file():
        return False
    with path.open("rb") as fh:
        return fh.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC


def redact_url(url: str) -> str:
    """An endpoint URL as labels, the database and logs show it: any ``user:password@`` replaced by
    ``***@`` (the URL is still used as given to connect)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def redact_target(target: str | Path) -> str:
    """The database's name for messages and stored settings: a URL's password (in the userinfo or
    a ``password=`` query parameter) replaced by ``***``."""
    text = str(target)
    if not is_postgres(text):
        return text
    try:
        parts = urlsplit(text)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            if ":" in userinfo:
                netloc = f"{userinfo.split(':', 1)[0]}:***@{host}"
        query = urlencode(
            [(k, "***" if k.lower() == "password" else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)],
            safe="*",
        )
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return f"{text.split('://', 1)[0]}://***"  # unparseable: show nothing of it


def secrets_of(target: str | Path) -> list[str]:
    """The password(s) a target holds, to scrub from driver messages that might quote them."""
    text = str(target)
    if not is_postgres(text):
        return []
    out = []
    with contextlib.suppress(ValueError):
        parts = urlsplit(text)
        if parts.password:
            out.append(parts.password)
        out += [v for k, v in parse_qsl(parts.query) if k.lower() == "password" and v]
    return out


def scrub(message: object, target: str | Path) -> str:
    text = " ".join(str(message).split())
    for secret in secrets_of(target):
        text = text.replace(secret, "***")
    return text


class StoreError(Exception):
    """A database operation failed; the message is one line with no password in it."""

    def __init__(self, message: str, *, full: bool = False) -> None:
        super().__init__(message)
        self.full = full


# ---- counters ----------------------------------------------------------------------------------


class Counters:
    """Named event counts, in total and per route, shared by the event loop, the writer thread and
    (in process mode) the mirror process.

    ``shared`` is a ctypes int64 array of `Counters.SIZE` in shared memory (a ``multiprocessing``
    RawArray): the totals, then one block per `ROUTE_KINDS` entry. Every counter has one writing
    process, so no cross-process lock is needed; the in-process lock covers the threads.
    """

    SIZE = len(COUNTER_NAMES) * (1 + len(ROUTE_KINDS))

    def __init__(self, shared: Any | None = None) -> None:
        self._lock = threading.Lock()
        self._values: Any = shared if shared is not None else [0] * self.SIZE
        self._index = {name: i for i, name in enumerate(COUNTER_NAMES)}
        self._route = {kind: len(COUNTER_NAMES) * (1 + j) for j, kind in enumerate(ROUTE_KINDS)}

    def inc(self, name: str, n: int = 1, route: str | None = None) -> None:
        """Add ``n``; ``route`` (a `ROUTE_KINDS` value) also counts it for that route."""
        i = self._index[name]
        with self._lock:
            self._values[i] += n
            offset = self._route.get(route) if route is not None else None
            if offset is not None:
                self._values[offset + i] += n

    def get(self, name: str) -> int:
        return int(self._values[self._index[name]])

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {name: int(self._values[i]) for name, i in self._index.items()}

    def by_route(self) -> dict[str, dict[str, int]]:
        """Per counter, per route; what no route was given for is under "other", so a counter's
        routes always add up to its total."""
        with self._lock:
            out: dict[str, dict[str, int]] = {}
            for name, i in self._index.items():
                per = {kind: int(self._values[off + i]) for kind, off in self._route.items()}
                per["other"] = int(self._values[i]) - sum(per.values())
                out[name] = per
            return out


@dataclass(frozen=True)
class RunInfo:
    mode: str  # "serve", "collect" or "replay"
    primary_url: str
    candidate_url: str
    secondary_url: str | None
    hash_only: bool
    sample_rate: float
    #: Non-secret settings worth knowing when reading the report (never keys, never a DB password).
    settings: dict[str, Any]
    run_id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex[:12])


def pair_row(rec: PairRecord, hash_only: bool) -> tuple[Any, ...]:
    """The record as a row of `PAIR_COLUMNS`: text left out with ``hash_only``, booleans as 0/1."""
    out = []
    for c in PAIR_COLUMNS:
        v = None if hash_only and c in TEXT_COLUMNS else getattr(rec, c)
        out.append(int(v) if isinstance(v, bool) else v)
    return tuple(out)


def run_row(run: RunInfo, started_at: float) -> tuple[Any, ...]:
    """The run as a row of ``runs`` (settings as sorted JSON)."""
    return (run.run_id, started_at, run.mode, run.primary_url, run.candidate_url, run.secondary_url,
            int(run.hash_only), run.sample_rate, json.dumps(run.settings, sort_keys=True))


def counter_rows(run_id: str, counters: dict[str, int]) -> list[tuple[Any, ...]]:
    """Parameters of `Statements.update_counter`, one a counter."""
    return [(value, run_id, name) for name, value in counters.items()]


@dataclass(frozen=True)
class Statements:
    """The statements both backends run, in one driver's parameter style: sqlite3's ``?`` or
    psycopg's ``%s`` (`statements`). Written once so the two databases cannot drift apart."""

    insert_pair: str
    update_counter: str
    insert_run: str
    insert_counter: str
    insert_version: str
    update_version: str
    #: The report's reads (no parameters).
    select_pairs: str = "SELECT * FROM pairs ORDER BY ts, id"
    select_counters: str = "SELECT name, SUM(value) AS total FROM counters GROUP BY name"
    select_runs: str = ("SELECT run_id, started_at, mode, primary_url, candidate_url, secondary_url, hash_only, "
                        "sample_rate, settings FROM runs ORDER BY started_at")
    #: `StoreConn.load_requests`: the candidate's row is the one every compared request has.
    select_requests: str = "SELECT endpoint, request_json FROM pairs WHERE target = 'candidate' ORDER BY ts, id"


def statements(p: str) -> Statements:
    """`Statements` with ``p`` as the parameter placeholder."""

    def marks(n: int) -> str:
        return ", ".join([p] * n)

    return Statements(
        insert_pair=f"INSERT INTO pairs ({', '.join(PAIR_COLUMNS)}) VALUES ({marks(len(PAIR_COLUMNS))})",
        update_counter=f"UPDATE counters SET value = {p} WHERE run_id = {p} AND name = {p}",
        insert_run=f"INSERT INTO runs VALUES ({marks(len(TABLES['runs'][0]))})",
        insert_counter=f"INSERT INTO counters (run_id, name, value) VALUES ({marks(2)}, 0) ON CONFLICT DO NOTHING",
        insert_version=f"INSERT INTO meta (key, value) VALUES ('schema_version', {p}) ON CONFLICT DO NOTHING",
        update_version=f"UPDATE meta SET value = {p} WHERE key = 'schema_version'",
    )


# ---- the interface -----------------------------------------------------------------------------

Row = dict[str, Any]


class StoreConn(ABC):
    """One open connection to a shadow database (created with its schema when writable).

    What is written and read is defined here once, in the backend's `Statements`; a backend
    provides the transaction (`_tx`), the reads (`_read`), its size and closing."""

    #: The database as messages name it (password redacted).
    label: str
    #: The statements in the backend driver's placeholder style.
    sql: Statements

    @abstractmethod
    def _tx(self, statements: Sequence[tuple[str, Sequence[Any]]], many: Sequence[tuple[str, Sequence[Any]]]) -> None:
        """Each (sql, params) of ``statements``, then each (sql, rows) of ``many`` executed for every
        row, in one transaction; StoreError (full=True when the database is at its cap) on failure."""

    @abstractmethod
    def _read(self, sql: str) -> list[Row]:
        """Every row of a read-only statement, as column → value; UserError "LABEL: cannot read the
        shadow database (why)" on failure."""

    def register_run(self, run: RunInfo) -> None:
        """Record the run and its counters at zero (one transaction)."""
        self._tx([(self.sql.insert_run, run_row(run, time.time()))],
                 [(self.sql.insert_counter, [(run.run_id, n) for n in COUNTER_NAMES])])

    def insert_batch(self, run_id: str, rows: Sequence[tuple[Any, ...]], counters: dict[str, int]) -> None:
        """Insert ``rows`` (`pair_row` tuples) and set the run's counters, in one transaction.
        StoreError(full=True) when the database is at its cap."""
        self._tx([], [(self.sql.insert_pair, rows), (self.sql.update_counter, counter_rows(run_id, counters))])

    def write_counters(self, run_id: str, counters: dict[str, int]) -> None:
        self._tx([], [(self.sql.update_counter, counter_rows(run_id, counters))])

    @abstractmethod
    def size_bytes(self) -> int:
        """The size the cap is compared with."""

    def load(self) -> tuple[list[Row], dict[str, int], list[Row]]:
        """(pair rows, counters summed over runs, runs) for the report."""
        rows = self._read(self.sql.select_pairs)
        counters = dict.fromkeys(COUNTER_NAMES, 0)
        for r in self._read(self.sql.select_counters):
            counters[r["name"]] = int(r["total"])
        return rows, counters, self._read(self.sql.select_runs)

    def load_requests(self) -> list[tuple[str, str | None]]:
        """(endpoint, request_json) of every recorded request, oldest first (``ts``, then ``id``):
        what `shadow replay` sends again. One row per request, its candidate pair (the secondary's
        pair repeats the same request); request_json is null in rows recorded with ``--hash-only``,
        left for the caller to tell a hash-only database from one with text."""
        return [(r["endpoint"], r["request_json"]) for r in self._read(self.sql.select_requests)]

    @abstractmethod
    def close(self) -> None: ...
