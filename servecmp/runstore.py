"""A run directory on disk: manifest, append-only JSONL records, summary; and the JSON reading
every input file shares.

Records are appended one line at a time and flushed + fsynced in small batches, so a Ctrl-C or a
kill -9 loses at most the line being written; a torn last line is detected on load and cut off on
resume, never parsed as data. Nothing here knows what a record means beyond its JSON.

Inputs a user gives as JSON lines (task files, MT-Bench questions, lm-eval sample logs, replay
files, judge prompts) are read by `read_jsonl_objects`, so each says what is wrong in one format:
``PATH:LINE: problem`` (`line_error`), and a file is missing, unreadable or not UTF-8 in the same
words whatever it holds.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import IO, Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from servecmp.errors import UserError, first_error

M = TypeVar("M", bound=BaseModel)
R = TypeVar("R")

MANIFEST = "manifest.json"
SUMMARY = "summary.json"


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def age(when: str, now: datetime | None = None) -> str:
    """How old a run's timestamp is, in words: "made 2026-12-01T10:00:00Z, 3 days ago" (what a stored
    baseline's users need to judge whether it still stands for the server)."""
    try:
        t = datetime.fromisoformat(when.replace("Z", "+00:00"))
    except ValueError:
        return f"made {when}"
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    secs = max(0.0, ((now or datetime.now(UTC)) - t).total_seconds())
    if secs < 3600:
        ago = f"{secs / 60:.0f} minutes ago"
    elif secs < 86400 * 2:
        ago = f"{secs / 3600:.0f} hours ago"
    else:
        ago = f"{secs / 86400:.0f} days ago"
    return f"made {when}, {ago}"


class StoredRunRef(BaseModel):
    """A manifest's reference to the finished run whose baseline side a run joined (--baseline-run):
    where it is, when it ran, and the server that answered (each kind adds its drift check)."""

    model_config = ConfigDict(extra="forbid")

    run_dir: str
    started_at: str
    finished_at: str | None = None
    model: str
    base_url: str


def new_run_dir(root: Path, prefix: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    path = root / f"{prefix}-{stamp}"
    n = 1
    while path.exists():
        n += 1
        path = root / f"{prefix}-{stamp}-{n}"
    path.mkdir(parents=True)
    return path


def write_json_atomic(path: Path, data: Any) -> None:
    """Write via a temp file + rename so a crash never leaves half a manifest or summary."""
    def dump(fh: IO[str]) -> None:
        json.dump(data, fh, indent=2, sort_keys=False)
        fh.write("\n")

    _write_atomic(path, dump)


def write_jsonl_atomic(path: Path, rows: Iterable[BaseModel]) -> None:
    """One model per line, all or nothing (a run's items.jsonl: written once, never appended)."""
    def dump(fh: IO[str]) -> None:
        for row in rows:
            fh.write(row.model_dump_json() + "\n")

    _write_atomic(path, dump)


def _write_atomic(path: Path, write: Callable[[IO[str]], Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    # The rename is an entry in the directory: sync it too, or a power cut may bring back the old file.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UserError(f"{path} not found") from exc
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from exc


def line_error(source: Path | Traversable | str, line: int, problem: str) -> UserError:
    """The one format of a bad line in an input file: ``PATH:LINE: problem`` (as compilers write it)."""
    return UserError(f"{source}:{line}: {problem}")


def parse_json_object(text: str | bytes, where: str) -> dict[str, Any]:
    """One JSON object; otherwise UserError "WHERE: not valid JSON (why at column C)" or "WHERE:
    expected a JSON object, got list"."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    return obj


def jsonl_objects(fh: IO[bytes], source: Path | Traversable | str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of ``fh``, read lazily (a caller that stops
    early reads no further). Lines end at b"\n" only, as JSON Lines defines them: U+2028 and the
    other breaks `str.splitlines` knows may stand inside a JSON string."""
    offset = 0
    for n, raw in enumerate(fh, 1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UserError(f"{source} is not UTF-8 text ({exc.reason} at byte {offset + exc.start})") from None
        offset += len(raw)
        if text.strip():
            # Without its line end, so that an error at the end of the line is on this line's columns.
            yield n, parse_json_object(text.rstrip("\r\n"), f"{source}:{n}")


def read_jsonl_objects(source: Path | Traversable) -> Iterator[tuple[int, dict[str, Any]]]:
    """`jsonl_objects` of a file; UserError "PATH not found" or "cannot read PATH: why" when it
    cannot be opened. What a line must hold beyond being an object is the caller's to check
    (with `line_error`), and so is an empty file."""
    try:
        fh = source.open("rb")
    except FileNotFoundError:
        raise UserError(f"{source} not found") from None
    except OSError as exc:
        raise UserError(f"cannot read {source}: {exc.strerror or exc}") from None
    with fh:
        try:
            yield from jsonl_objects(fh, source)
        except OSError as exc:  # e.g. a directory: open() succeeds, the first read fails
            raise UserError(f"cannot read {source}: {exc.strerror or exc}") from None


def read_jsonl_rows(
    source: Path | Traversable, parse: Callable[[int, dict[str, Any]], R], key: Callable[[R], Hashable], what: str
) -> list[R]:
    """Each line of a JSONL input as ``parse(line, object)``, no two with one ``key``; a repeat is
    "PATH:LINE: duplicate WHAT 'k' (first on line N)"."""
    rows: list[R] = []
    first: dict[Hashable, int] = {}
    for n, obj in read_jsonl_objects(source):
        row = parse(n, obj)
        k = key(row)
        if k in first:
            raise line_error(source, n, f"duplicate {what} {k!r} (first on line {first[k]})")
        first[k] = n
        rows.append(row)
    return rows


def validate_as(model: type[M], data: Any, path: Path, what: str) -> M:
    """``data``, read from ``path``, as a ``model``; otherwise UserError "PATH: not WHAT (field: why)"."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"{path}: not {what} ({first_error(exc)})") from exc


def check_schema(raw: Any, path: Path, readable: Sequence[str]) -> str:
    """The ``schema`` id of a stored summary (``servecmp.<layout>/<version>``) when this servecmp
    reads it; otherwise one-line UserError: a newer version of a known layout says so (and to
    upgrade servecmp), another layout names what the file is."""
    schema = raw.get("schema") if isinstance(raw, dict) else None
    if not isinstance(schema, str):
        raise UserError(f"{path}: not a servecmp summary (no schema id)")
    if schema in readable:
        return schema
    layout, _, version = schema.rpartition("/")
    known = {s.rpartition("/")[0]: int(s.rpartition("/")[2]) for s in sorted(readable)}
    if layout in known and version.isdigit() and int(version) > known[layout]:
        raise UserError(f"{path}: {schema} was written by a newer servecmp (this one reads "
                        f"{', '.join(sorted(readable))}): upgrade servecmp to read it")
    raise UserError(f"{path}: a {schema} file, not one of {', '.join(sorted(readable))}")


def manifest_kind(run_dir: Path) -> Any:
    """The run kind a run directory's manifest names (None when it names none); UserError when
    the directory has no manifest."""
    if not (run_dir / MANIFEST).is_file():
        raise UserError(f"{run_dir} is not a servecmp run directory (no {MANIFEST})")
    raw = read_json(run_dir / MANIFEST)
    return raw.get("kind") if isinstance(raw, dict) else None


def read_model(path: Path, model: type[M]) -> M:
    return validate_as(model, read_json(path), path, "a servecmp file")


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Complete JSON lines of a file; a torn final line (a crash mid-write) is skipped."""
    if not path.exists():
        return
    with path.open("rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                return  # torn tail: the process died while writing this line
            line = raw.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def repair_tail(path: Path) -> None:
    """Cut a torn last line so the next append starts on a fresh line."""
    if not path.exists():
        return
    with path.open("rb+") as fh:
        data = fh.read()
        if not data or data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1
        fh.truncate(cut)


class JsonlAppender:
    """Appends JSON lines, flushed to the OS at once (a killed process loses nothing written), or with
    `flush_seconds` > 0 at most that often (a killed process loses at most the lines of that long:
    a run that keys its records re-asks them on resume; it saves a write call per line at hundreds of
    lines a second); fsynced every `sync_every` lines or `sync_seconds`, whichever comes later, and on
    close (bounds what a power cut can lose). With `background_sync` the periodic fsync runs in a
    thread: it blocks for ~0.03-0.1 s on a busy disk, which on the event loop stalls every request
    in flight (and reads as server latency to servecmp.concurrency)."""

    def __init__(self, path: Path, sync_every: int = 16, sync_seconds: float = 5.0, *, flush_seconds: float = 0.0,
                 background_sync: bool = False) -> None:
        repair_tail(path)
        self.path = path
        self._fh: IO[str] = path.open("a", encoding="utf-8")
        self._sync_every = max(1, sync_every)
        self._sync_seconds = sync_seconds
        self._flush_seconds = flush_seconds
        self._background = background_sync
        self._syncer: threading.Thread | None = None
        self._last_sync = self._last_flush = time.monotonic()
        self._pending = 0
        self._lines: list[str] = []

    def flush(self) -> None:
        if self._lines:
            self._fh.write("".join(self._lines))
            self._lines.clear()
        self._fh.flush()

    def append(self, obj: BaseModel | dict[str, Any]) -> None:
        line = obj.model_dump_json() if isinstance(obj, BaseModel) else json.dumps(obj, ensure_ascii=False)
        # Whole lines only reach the file, in one write: a kill between two writes never tears a line.
        self._lines.append(line + "\n")
        self._pending += 1
        now = time.monotonic()
        if self._flush_seconds <= 0 or now - self._last_flush >= self._flush_seconds:
            self.flush()
            self._last_flush = now
        if self._pending >= self._sync_every and now - self._last_sync >= self._sync_seconds:
            if not self._background:
                self.sync()
            elif self._syncer is None or not self._syncer.is_alive():
                self.flush()
                self._pending, self._last_sync = 0, now
                self._syncer = threading.Thread(target=os.fsync, args=(self._fh.fileno(),), daemon=True)
                self._syncer.start()

    def sync(self) -> None:
        self.flush()
        os.fsync(self._fh.fileno())
        self._pending = 0
        self._last_sync = time.monotonic()

    def close(self) -> None:
        if self._syncer is not None:
            self._syncer.join()  # its descriptor must outlive it
        if not self._fh.closed:
            self.sync()
            self._fh.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_records(path: Path, model: type[M]) -> list[M]:
    out: list[M] = []
    for n, obj in enumerate(iter_jsonl(path), 1):
        try:
            out.append(model.model_validate(obj))
        except ValidationError as exc:
            raise UserError(f"{path}: line {n} is not a valid record ({exc.errors()[0]['msg']})") from exc
    return out


def refuse_on_resume(run_dir: Path, given: Sequence[str], accepted: Sequence[str]) -> None:
    """The one resume policy of every run kind: a resumed run takes every setting that decides its
    results from its manifest, so flags that would set one are refused (one line naming them all);
    only the ``accepted`` ones (pacing, presentation) apply, to this invocation."""
    if given:
        raise UserError(
            f"cannot resume {run_dir} with {', '.join(given)}: a resumed run takes every setting that decides "
            f"its results from its manifest; drop {'that flag' if len(given) == 1 else 'those flags'} "
            f"(with --resume only {', '.join(accepted)} apply) or start a new run"
        )
