"""A gen run directory's files, read and written (items.jsonl, records.jsonl, teacher_forcing.jsonl,
baseline_forcing.jsonl):
what the run (`servecmp.gen.run`) and the summary (`servecmp.gen.summary`) both need."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from servecmp.errors import UserError
from servecmp.gen.records import BASELINE_FORCING, ITEMS, RECORDS, TEACHER_FORCING, BaselineForcing, GenRecord, TfRecord
from servecmp.gen.settings import GenManifest
from servecmp.runstore import iter_jsonl
from servecmp.tasks.gen_task import GenItem, fingerprint


def write_items(run_dir: Path, items: Sequence[GenItem]) -> None:
    tmp = run_dir / (ITEMS + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for it in items:
            fh.write(it.model_dump_json() + "\n")
    tmp.replace(run_dir / ITEMS)


def read_items(run_dir: Path, manifest: GenManifest) -> list[GenItem]:
    path = run_dir / ITEMS
    if not path.is_file():
        raise UserError(f"{path} not found (the run directory is incomplete)")
    try:
        items = [GenItem.model_validate(obj) for obj in iter_jsonl(path)]
    except ValueError as exc:
        raise UserError(f"{path}: not a gen items file ({' '.join(str(exc).split())[:160]})") from None
    if fingerprint(items) != manifest.task_fingerprint:
        raise UserError(f"{path} does not match the run's manifest (edited?)")
    return items


def load_records(run_dir: Path, samples: int) -> list[GenRecord]:
    """Every complete item's records: the last line of each (endpoint, item, sample), and only
    items with all ``samples`` on disk (a kill between two sample lines leaves an item the resume
    asks again)."""
    latest: dict[tuple[str, str, int], GenRecord] = {}
    path = run_dir / RECORDS
    for n, obj in enumerate(iter_jsonl(path), 1):
        try:
            r = GenRecord.model_validate(obj)
        except ValueError as exc:
            raise UserError(f"{path}: line {n} is not a gen record ({' '.join(str(exc).split())[:120]})") from None
        latest[(r.endpoint, r.item_id, r.sample)] = r
    groups: dict[tuple[str, str], list[GenRecord]] = {}
    for r in latest.values():
        groups.setdefault((r.endpoint, r.item_id), []).append(r)
    out = []
    for recs in groups.values():
        if {r.sample for r in recs} >= set(range(samples)):
            out.extend(sorted((r for r in recs if r.sample < samples), key=lambda r: r.sample))
    return out


def load_tf(run_dir: Path) -> dict[tuple[str, str], TfRecord]:
    records = (TfRecord.model_validate(o) for o in iter_jsonl(run_dir / TEACHER_FORCING))
    return {(r.endpoint, r.item_id): r for r in records}


class ForcingIndex:
    """The baseline's teacher-forcing rows of a run (baseline_forcing.jsonl) by item, read one at a
    time from their byte offsets: the whole file (top-k per answer token) is not held in memory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offsets: dict[str, int] = {}
        if not path.exists():
            return
        with path.open("rb") as fh:
            pos = 0
            for raw in fh:
                if not raw.endswith(b"\n"):
                    break  # torn tail, as iter_jsonl
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    self.offsets[str(json.loads(raw)["item_id"])] = pos
                pos += len(raw)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self.offsets

    def __len__(self) -> int:
        return len(self.offsets)

    def read(self, item_id: str) -> BaselineForcing | None:
        pos = self.offsets.get(item_id)
        if pos is None:
            return None
        with self.path.open("rb") as fh:
            fh.seek(pos)
            return BaselineForcing.model_validate_json(fh.readline())


def forcing_index(run_dir: Path) -> ForcingIndex:
    return ForcingIndex(run_dir / BASELINE_FORCING)


def tf_targets(manifest: GenManifest) -> list[str]:
    """The endpoints teacher-forced along the baseline's answers: candidates and the secondary (the
    floor pass is the baseline itself)."""
    return [e.name for e in manifest.endpoints if e.role in ("candidate", "secondary")]


@dataclass(frozen=True)
class GenTexts:
    """What the HTML page shows of each item beyond the summary: items by id, and the sample-0
    records by (endpoint, item), as stored (JSON objects)."""

    items: dict[str, dict[str, Any]]
    records: dict[tuple[str, str], dict[str, Any]]


def load_texts(run_dir: Path) -> GenTexts:
    items = {str(o["item_id"]): o for o in iter_jsonl(run_dir / ITEMS)}
    recs = {(str(o["endpoint"]), str(o["item_id"])): o for o in iter_jsonl(run_dir / RECORDS) if o.get("sample") == 0}
    return GenTexts(items, recs)
