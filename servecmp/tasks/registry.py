"""Task names → rendered items: the one entry point the commands use to get a task.

mmlu           MMLU 5-shot: --data-dir DIR (the CSV layout) if given, else the vendored sample;
               source="hf" reads cais/mmlu (the hub, or a local copy of it in --data-dir)
mmlu-sample    the vendored 228-item sample (4 test rows per subject)
jsonl:PATH     a user's own set (see servecmp.tasks.jsonl_mcq), optional few-shot file
arc_easy, arc_challenge, hellaswag, piqa, winogrande
               lm-eval's continuation tasks, from the hub or a local copy in --data-dir
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from servecmp.errors import UserError
from servecmp.mcq.records import McqItem
from servecmp.tasks import jsonl_mcq, mmlu
from servecmp.tasks.continuation_tasks import CONTINUATION_TASKS, load_continuation_task

JSONL_PREFIX = "jsonl:"
KNOWN_TASKS: tuple[str, ...] = ("mmlu", "mmlu-sample", f"{JSONL_PREFIX}PATH", *CONTINUATION_TASKS)
MMLU_SOURCES = ("csv", "sample", "hf")


@dataclass(frozen=True)
class TaskData:
    name: str
    items: list[McqItem]
    #: Where the items came from, for the run manifest and the report.
    source: str
    #: Identifies the item set and its rendering (ids, prompts, contexts, continuations, gold).
    fingerprint: str
    #: Identifies the prompt template, independent of which items were drawn.
    prompt_format_hash: str


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def fingerprint(items: Sequence[McqItem]) -> str:
    """Order-independent: the same items drawn from a source in another order hash the same."""
    canonical = sorted(
        (item.item_id, item.prompt, item.contexts, item.continuations, item.gold) for item in items
    )
    return short_hash(json.dumps(canonical, ensure_ascii=False, separators=(",", ":")))


def sample_items(items: Sequence[McqItem], limit: int | None, seed: int) -> list[McqItem]:
    """`limit` items chosen by a seeded hash of their ids, kept in source order.

    Ranking by hash(seed, id) rather than shuffling a list makes the choice independent of the
    order the source yields items in, and nested: a larger limit keeps every item of a smaller one.
    """
    if limit is None or limit >= len(items):
        return list(items)

    def rank(item: McqItem) -> bytes:
        return hashlib.sha256(f"{seed}:{item.item_id}".encode()).digest()

    keep = {item.item_id for item in sorted(items, key=rank)[:limit]}
    return [item for item in items if item.item_id in keep]


def _check_unique_ids(name: str, items: Sequence[McqItem]) -> None:
    seen: set[str] = set()
    for item in items:
        if item.item_id in seen:
            raise UserError(f"task {name}: item id {item.item_id!r} appears more than once")
        seen.add(item.item_id)


def _no_data_dir(name: str, data_dir: str | None) -> None:
    if data_dir is not None:
        raise UserError(f"task {name} does not read --data-dir")


def _load_mmlu(name: str, data_dir: str | None, source: str | None) -> tuple[list[McqItem], str]:
    if source is None:
        source = "csv" if data_dir is not None else "sample"
    if source not in MMLU_SOURCES:
        raise UserError(f"unknown MMLU source {source!r}; known: {', '.join(MMLU_SOURCES)}")
    if source == "sample":
        _no_data_dir(f"{name} (vendored sample)", data_dir)
        return mmlu.load_sample(task=name), f"vendored MMLU sample (prompts/{mmlu.SAMPLE_DIR})"
    if source == "csv":
        if data_dir is None:
            raise UserError("MMLU source 'csv' needs --data-dir (a directory with dev/ and test/)")
        return mmlu.load_csv_dir(Path(data_dir), task=name), f"MMLU CSV directory {data_dir}"
    local = Path(data_dir) if data_dir is not None else None
    where = f"local copy {data_dir}" if local else "the Hugging Face hub"
    return mmlu.load_hf(task=name, local_dir=local), f"{mmlu.HF_DATASET} from {where}"


def _load_items(
    name: str, data_dir: str | None, source: str | None, fewshot: str | None
) -> tuple[list[McqItem], str, str]:
    """(items, source description, prompt format text) for one task name."""
    if fewshot is not None and not name.startswith(JSONL_PREFIX):
        raise UserError(f"--fewshot applies to jsonl:PATH tasks only, not {name}")
    if name == "mmlu":
        items, desc = _load_mmlu(name, data_dir, source)
        return items, desc, mmlu.MMLU_FORMAT
    if name == "mmlu-sample":
        if source not in (None, "sample"):
            raise UserError("task mmlu-sample is the vendored sample; use --task mmlu for other sources")
        items, desc = _load_mmlu(name, data_dir, "sample")
        return items, desc, mmlu.MMLU_FORMAT
    if name.startswith(JSONL_PREFIX):
        path = name.removeprefix(JSONL_PREFIX)
        if not path:
            raise UserError("task jsonl:PATH needs a path, e.g. jsonl:my_questions.jsonl")
        if source is not None:
            raise UserError(f"task {name} reads its file; it takes no source option")
        _no_data_dir(name, data_dir)
        shots = Path(fewshot) if fewshot is not None else None
        desc = f"JSONL file {path}" + (f" with few-shot file {fewshot}" if fewshot else "")
        fmt = jsonl_mcq.JSONL_FORMAT + ("|few-shot file" if shots else "|zero-shot")
        return jsonl_mcq.load_jsonl(Path(path), task=name, fewshot=shots), desc, fmt
    if name in CONTINUATION_TASKS:
        task = CONTINUATION_TASKS[name]
        if source not in (None, "hf"):
            raise UserError(f"task {name} is read through Hugging Face datasets; source must be 'hf'")
        local = Path(data_dir) if data_dir is not None else None
        where = f"local copy {data_dir}" if local else "the Hugging Face hub"
        desc = (
            f"{task.dataset}"
            + (f" {task.config}" if task.config else "")
            + f" {task.split} split from {where}"
        )
        return load_continuation_task(task, local_dir=local), desc, task.prompt_format
    raise UserError(f"unknown task {name!r}; known: {', '.join(KNOWN_TASKS)}")


def load_task(
    name: str,
    *,
    data_dir: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    source: str | None = None,
    fewshot: str | None = None,
) -> TaskData:
    """Load, render and (with `limit`) sample a task. Bad names, paths and rows raise UserError."""
    if limit is not None and limit < 0:
        raise UserError(f"--limit must be 0 or more, got {limit}")
    items, desc, prompt_format = _load_items(name, data_dir, source, fewshot)
    if not items:
        raise UserError(f"task {name} has no items ({desc})")
    _check_unique_ids(name, items)
    chosen = sample_items(items, limit, seed)
    if not chosen:
        raise UserError(f"--limit {limit} selects no items from task {name}")
    if len(chosen) < len(items):
        desc += f"; {len(chosen)} of {len(items)} items sampled with seed {seed}"
    return TaskData(
        name=name,
        items=chosen,
        source=desc,
        fingerprint=fingerprint(chosen),
        prompt_format_hash=short_hash(prompt_format),
    )
