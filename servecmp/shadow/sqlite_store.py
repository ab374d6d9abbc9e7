"""The SQLite backend of the shadow store: one file in WAL mode (the default `--db`)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from servecmp.errors import UserError
from servecmp.shadow.schema import (
    SCHEMA_VERSION,
    Row,
    StoreConn,
    StoreError,
    missing_columns,
    render_schema,
    statements,
)

TYPES = {"text": "TEXT", "int": "INTEGER", "real": "REAL", "blob": "BLOB", "id": "INTEGER PRIMARY KEY"}
SCHEMA = ";\n".join(render_schema(TYPES)) + ";"
SQL = statements("?")


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    """Bring an older database's ``pairs`` up to this layout. BEGIN IMMEDIATE takes the write lock
    before the columns are listed, so two processes opening one old file at once (the proxy and its
    mirror process) cannot both try to add a column."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        existing = [r[1] for r in conn.execute("PRAGMA table_info(pairs)")]
        missing = missing_columns("pairs", existing)
        for name, kind in missing:
            conn.execute(f"ALTER TABLE pairs ADD COLUMN {name} {TYPES[kind]}")
        if missing:
            conn.execute(SQL.update_version, (str(SCHEMA_VERSION),))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


class SqliteConn(StoreConn):
    sql = SQL

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self.label = str(path)
        self._conn = conn
        self._page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])

    @classmethod
    def open(cls, path: Path, *, readonly: bool = False, max_db_mb: float | None = None) -> SqliteConn:
        if readonly:
            if not path.is_file():
                raise UserError(f"shadow database {path} not found")
            try:
                conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
                conn.row_factory = sqlite3.Row
                conn.execute("SELECT 1 FROM pairs LIMIT 1")
            except sqlite3.DatabaseError as exc:
                raise UserError(f"{path} is not a servecmp shadow database ({exc})") from exc
            return cls(path, conn)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # The writer thread uses the connection it did not create; one thread at a time.
            conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(SCHEMA)
            conn.execute(SQL.insert_version, (str(SCHEMA_VERSION),))
            _add_missing_columns(conn)
            out = cls(path, conn)
            if max_db_mb:
                # SQLite itself refuses to grow past the cap (the writer's size check comes first).
                pages = max(1, int(max_db_mb * 1024 * 1024) // out._page_size)
                conn.execute(f"PRAGMA max_page_count = {pages}")
            return out
        except (OSError, sqlite3.DatabaseError) as exc:
            raise UserError(f"cannot open shadow database {path}: {exc}") from exc

    def _tx(self, statements: Sequence[tuple[str, Sequence[Any]]], many: Sequence[tuple[str, Sequence[Any]]]) -> None:
        try:
            with self._conn:
                self._conn.execute("BEGIN")
                for sql, params in statements:
                    self._conn.execute(sql, params)
                for sql, seq in many:
                    self._conn.executemany(sql, seq)
        except sqlite3.OperationalError as exc:
            raise StoreError(str(exc), full="full" in str(exc)) from exc
        except sqlite3.Error as exc:
            raise StoreError(str(exc)) from exc

    def size_bytes(self) -> int:
        try:
            return int(self._conn.execute("PRAGMA page_count").fetchone()[0]) * self._page_size
        except sqlite3.Error as exc:
            raise StoreError(str(exc)) from exc

    def _read(self, sql: str) -> list[Row]:
        try:
            self._conn.row_factory = sqlite3.Row
            return [dict(r) for r in self._conn.execute(sql)]
        except sqlite3.DatabaseError as exc:
            raise UserError(f"{self.path}: cannot read the shadow database ({exc})") from exc

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):  # read-only or already closed: nothing to fold back
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._conn.close()
