"""Task names → rendered items: the one entry point the commands use to get a task.

mmlu           MMLU 5-shot: --data-dir DIR (the CSV layout) if given, else the vendored sample;
               source="hf" reads cais/mmlu (the hub, or a local copy of it in --data-dir);
               fewshot=N takes the first N of the 5 dev exemplars
mmlu-sample    the vendored 228-item sample (4 test rows per subject)
jsonl:PATH     a user's own set (see servecmp.tasks.jsonl_mcq), optional few-shot file
               (fewshot=N: its first N rows)
arc_easy, arc_challenge, hellaswag, piqa, winogrande
               lm-eval's continuation tasks (zero-shot), from the hub or a local copy in --data-dir

Every task has one source kind it resolves to ("csv", "sample", "hf" or "jsonl"); passing that
kind back as `source` loads the same items, which is how a resumed run reloads its task.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from servecmp.errors import UserError
from servecmp.tasks import jsonl_mcq, mmlu
from servecmp.tasks.continuation_tasks import CONTINUATION_TASKS, load_continuation_task
from servecmp.tasks.items import McqItem

JSONL_PREFIX = "jsonl:"
KNOWN_TASKS: tuple[str, ...] = ("mmlu", "mmlu-sample", f"{JSONL_PREFIX}PATH", *CONTINUATION_TASKS)
MMLU_SOURCES = ("csv", "sample", "hf")
JSONL_SOURCE = "jsonl"
HF_SOURCE = "hf"


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
    #: The source kind the task resolved to: "csv", "sample", "hf" or "jsonl".
    source_kind: str = ""
    #: Exemplars in every prompt (0: zero-shot).
    fewshot: int = 0
    #: Items the task holds before --limit / --sample.
    n_available: int = 0


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def fingerprint(items: Sequence[McqItem]) -> str:
    """Order-independent: the same items drawn from a source in another order hash the same."""
    canonical = sorted(
        (item.item_id, item.prompt, item.contexts, item.continuations, item.gold) for item in items
    )
    return short_hash(json.dumps(canonical, ensure_ascii=False, separators=(",", ":")))


def sample_items(items: Sequence[McqItem], sample: int | None, seed: int) -> list[McqItem]:
    """`sample` items chosen by a seeded hash of their ids, kept in source order.

    Ranking by hash(seed, id) rather than shuffling a list makes the choice independent of the
    order the source yields items in, and nested: a larger sample keeps every item of a smaller one.
    """
    if sample is None or sample >= len(items):
        return list(items)

    def rank(item: McqItem) -> bytes:
        return hashlib.sha256(f"{seed}:{item.item_id}".encode()).digest()

    keep = {item.item_id for item in sorted(items, key=rank)[:sample]}
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


@dataclass(frozen=True)
class _Loaded:
    items: list[McqItem]
    description: str
    prompt_format: str
    source_kind: str
    fewshot: int


def _mmlu_shots(fewshot: int | None) -> int:
    return mmlu.N_SHOTS if fewshot is None else fewshot


def _load_mmlu(name: str, data_dir: str | None, source: str | None, fewshot: int | None) -> _Loaded:
    if source is None:
        source = "csv" if data_dir is not None else "sample"
    if source not in MMLU_SOURCES:
        raise UserError(f"unknown MMLU source {source!r}; known: {', '.join(MMLU_SOURCES)}")
    shots = _mmlu_shots(fewshot)
    fmt = mmlu.mmlu_format(shots)
    if source == "sample":
        _no_data_dir(f"{name} (vendored sample)", data_dir)
        items = mmlu.load_sample(task=name, n_shots=shots)
        return _Loaded(items, f"vendored MMLU sample (prompts/{mmlu.SAMPLE_DIR})", fmt, source, shots)
    if source == "csv":
        if data_dir is None:
            raise UserError("MMLU source 'csv' needs --data-dir (a directory with dev/ and test/)")
        items = mmlu.load_csv_dir(Path(data_dir), task=name, n_shots=shots)
        return _Loaded(items, f"MMLU CSV directory {data_dir}", fmt, source, shots)
    local = Path(data_dir) if data_dir is not None else None
    where = f"local copy {data_dir}" if local else "the Hugging Face hub"
    items = mmlu.load_hf(task=name, local_dir=local, n_shots=shots)
    return _Loaded(items, f"{mmlu.HF_DATASET} from {where}", fmt, source, shots)


def _load_items(
    name: str, data_dir: str | None, source: str | None, fewshot: int | None, fewshot_file: str | None
) -> _Loaded:
    """The items of one task name, with how they were rendered and where they came from."""
    if fewshot_file is not None and not name.startswith(JSONL_PREFIX):
        raise UserError(f"--fewshot-file applies to jsonl:PATH tasks only, not {name}")
    if fewshot is not None and fewshot < 0:
        raise UserError(f"--fewshot must be 0 or more, got {fewshot}")
    if name == "mmlu":
        return _load_mmlu(name, data_dir, source, fewshot)
    if name == "mmlu-sample":
        if source not in (None, "sample"):
            raise UserError("task mmlu-sample is the vendored sample; use --task mmlu for other sources")
        return _load_mmlu(name, data_dir, "sample", fewshot)
    if name.startswith(JSONL_PREFIX):
        path = name.removeprefix(JSONL_PREFIX)
        if not path:
            raise UserError("task jsonl:PATH needs a path, e.g. jsonl:my_questions.jsonl")
        if source not in (None, JSONL_SOURCE):
            raise UserError(f"task {name} reads its file; its only source is '{JSONL_SOURCE}'")
        _no_data_dir(name, data_dir)
        shots_file = Path(fewshot_file) if fewshot_file is not None else None
        desc = f"JSONL file {path}" + (f" with few-shot file {fewshot_file}" if fewshot_file else "")
        fmt = jsonl_mcq.JSONL_FORMAT + ("|few-shot file" if shots_file else "|zero-shot")
        items = jsonl_mcq.load_jsonl(Path(path), task=name, fewshot=shots_file, n_shots=fewshot)
        if fewshot is not None:
            n_shots = fewshot
        else:
            n_shots = len(jsonl_mcq.read_rows(shots_file)) if shots_file is not None else 0
        if shots_file is not None and fewshot is not None:
            desc += f" (first {fewshot} rows)"
        return _Loaded(items, desc, fmt, JSONL_SOURCE, n_shots)
    if name in CONTINUATION_TASKS:
        task = CONTINUATION_TASKS[name]
        if source not in (None, HF_SOURCE):
            raise UserError(f"task {name} is read through Hugging Face datasets; source must be 'hf'")
        if fewshot:
            raise UserError(f"task {name} is scored zero-shot, as lm-eval scores it; --fewshot applies to "
                            "mmlu and jsonl:PATH tasks")
        local = Path(data_dir) if data_dir is not None else None
        where = f"local copy {data_dir}" if local else "the Hugging Face hub"
        desc = (
            f"{task.dataset}"
            + (f" {task.config}" if task.config else "")
            + f" {task.split} split from {where}"
        )
        return _Loaded(load_continuation_task(task, local_dir=local), desc, task.prompt_format, HF_SOURCE, 0)
    raise UserError(f"unknown task {name!r}; known: {', '.join(KNOWN_TASKS)}")


def load_task(
    name: str,
    *,
    data_dir: str | None = None,
    limit: int | None = None,
    sample: int | None = None,
    seed: int = 0,
    source: str | None = None,
    fewshot: int | None = None,
    fewshot_file: str | None = None,
) -> TaskData:
    """Load, render and narrow a task: `limit` keeps the first N items in source order, `sample` a
    seeded sample of N (`sample_items`); they are alternatives. `fewshot` is the number of exemplars
    per prompt (None: the task's own), `fewshot_file` a JSONL task's exemplar file. Bad names,
    paths, rows and combinations raise UserError."""
    for flag, value in (("--limit", limit), ("--sample", sample)):
        if value is not None and value < 0:
            raise UserError(f"{flag} must be 0 or more, got {value}")
    if limit is not None and sample is not None:
        raise UserError("--limit (the first N items) and --sample (a seeded sample of N) are alternatives; give one")
    loaded = _load_items(name, data_dir, source, fewshot, fewshot_file)
    items, desc = loaded.items, loaded.description
    if not items:
        raise UserError(f"task {name} has no items ({desc})")
    _check_unique_ids(name, items)
    if limit is not None:
        chosen = list(items[:limit])
        narrowed_by = f"--limit {limit}"
    else:
        chosen = sample_items(items, sample, seed)
        narrowed_by = f"--sample {sample}"
    if not chosen:
        raise UserError(f"{narrowed_by} selects no items from task {name}")
    if len(chosen) < len(items):
        desc += (f"; the first {len(chosen)} of {len(items)} items" if limit is not None
                 else f"; {len(chosen)} of {len(items)} items sampled with seed {seed}")
    return TaskData(
        name=name,
        items=chosen,
        source=desc,
        fingerprint=fingerprint(chosen),
        prompt_format_hash=short_hash(loaded.prompt_format),
        source_kind=loaded.source_kind,
        fewshot=loaded.fewshot,
        n_available=len(items),
    )
