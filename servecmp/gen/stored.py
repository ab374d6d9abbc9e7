"""Stored baselines for generated-answer runs: a finished gen run's baseline side stands in for the
baseline endpoint (as `servecmp.mcq.stored` does for MCQ runs).

`servecmp gen --baseline-run RUN_DIR --candidate URL ...` asks only the candidates. At the start of
the run the stored baseline's records (records.jsonl lines of endpoint "baseline") and its
teacher-forcing rows (baseline_forcing.jsonl: the token ids and the baseline's top-k along each of
its answers) are copied into the new run, so the new run directory is still the whole truth about
its results and a resume needs nothing else; candidates are teacher-forced along the stored answers
and scored against the stored top-k. `servecmp gen --baseline URL --baseline-only` makes such a
profile without any candidate.

Compatibility (`check_compatible`), refused in one line naming the first difference: the API the
stored baseline was asked through, --max-tokens, --samples, --temperature, the sampling seed (when
sampling), --top-k, teacher forcing, and last the item set and prompt rendering (`task_fingerprint`,
which each of the others would hide). Teacher forcing is refused in one direction only: a run that
teacher-forces needs the stored baseline's rows, a run with --no-teacher-forcing needs nothing of
them. The stored baseline must have finished every item (every sample) and, when the new run
teacher-forces, hold a row for every item. Task flags not given default to the stored run's
(`stored_options`), so ``--baseline-run RUN --candidate URL`` alone reproduces the stored task.

Drift (`--baseline URL` as well): a seeded sample of ``--baseline-check N`` stored items (default
20) is asked of the live baseline before anything else, and the run is refused unless every
re-asked answer is the stored text, character for character. That rule needs greedy decoding (a
greedy server that still answers as stored is the same baseline, to its own nondeterminism, which
the check then shows); a sampled baseline gives other texts by design even when unchanged, so for
sampled stored runs --baseline is refused rather than checked with a rule that cannot tell.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from servecmp.errors import UserError
from servecmp.gen.records import BASELINE_FORCING, RECORDS, GenRecord
from servecmp.gen.rundir import forcing_index, load_records, read_items
from servecmp.gen.settings import (
    BASELINE,
    GenBaselineCheck,
    GenEndpoint,
    GenManifest,
    GenOptions,
    GenStoredBaseline,
    read_manifest,
)
from servecmp.mcq.stored import CHECK_DIR, CHECK_SEED_OFFSET, DEFAULT_CHECK
from servecmp.runstore import MANIFEST, JsonlAppender, age, iter_jsonl

if TYPE_CHECKING:
    from rich.console import Console

    from servecmp.endpoints import EndpointClient
    from servecmp.tasks.gen_task import GenItem

#: `servecmp.gen.run.generate_one`'s shape: (client, tokenizer, manifest, endpoint, item, allow_code=...).
Generate = Callable[..., Awaitable[list[GenRecord]]]

#: Task flags a run on a stored baseline takes from the stored run unless given.
TASK_FLAGS = ("task", "data_dir", "fewshot", "limit", "sample", "seed", "api", "max_tokens", "samples",
              "temperature", "top_k", "teacher_forcing")


@dataclass(frozen=True)
class StoredPlan:
    """A new run on a stored baseline: the stored run, and whether a live baseline is re-checked."""

    run_dir: Path
    manifest: GenManifest
    #: --baseline URL given as well: re-ask ``check`` stored items of it before the run.
    live: bool
    check: int = DEFAULT_CHECK


def read_stored(run_dir: Path) -> GenManifest:
    """The stored run's manifest; UserError (one line) when it is not a gen run directory."""
    if not (run_dir / MANIFEST).exists():
        raise UserError(f"--baseline-run {run_dir}: not a run directory (no {MANIFEST})")
    try:
        return read_manifest(run_dir)
    except UserError as exc:
        raise UserError(f"--baseline-run {run_dir}: {exc}") from None


def stored_options(opts: GenOptions, stored: GenManifest) -> GenOptions:
    """The flags of a run on a stored baseline: task flags not given take the stored run's values."""
    filled = {name: getattr(stored, name) for name in TASK_FLAGS if getattr(opts, name) is None}
    # The manifest keeps where the items came from, not the --source flag: of its values only "hf"
    # is not implied by --data-dir (servecmp.tasks.gsm8k names the hub copy "... (hub)").
    if opts.source is None and stored.source.endswith("(hub)"):
        filled["source"] = "hf"
    return replace(opts, **filled)


def plan(opts: GenOptions) -> tuple[GenOptions, StoredPlan | None]:
    """The flags of a new run with --baseline-run / --baseline-only (UserError, one line, for flags
    that do not go together) and the stored baseline it joins, if any."""
    live = opts.check_stored_flags()
    if opts.baseline_run is None:
        return opts, None
    run_dir = opts.baseline_run
    stored = read_stored(run_dir)
    if live and not stored.greedy:
        raise UserError(f"--baseline {opts.baseline}: the drift check compares greedy answers text by text, and the "
                        f"stored baseline {opts.baseline_run} samples ({stored.samples} samples at temperature "
                        f"{stored.temperature:g}); drop --baseline, or store a greedy profile")
    opts = stored_options(opts, stored)
    if not live:
        opts = replace(opts, baseline=stored.baseline.base_url, baseline_model=stored.baseline.model)
    return opts, StoredPlan(run_dir, stored, live, opts.baseline_check or DEFAULT_CHECK)


def stored_api(stored: GenManifest) -> str:
    """The API the stored baseline was asked through."""
    return stored.baseline.api or "completions"


def baseline_records(run_dir: Path, manifest: GenManifest) -> list[GenRecord]:
    return [r for r in load_records(run_dir, manifest.samples) if r.endpoint == BASELINE]


def check_compatible(plan: StoredPlan, new: GenManifest) -> None:
    """UserError, one line, at the first setting that differs or what the stored baseline lacks."""
    s, d = plan.manifest, plan.run_dir
    pre = f"--baseline-run {d}: refused, the stored baseline"
    if new.floors:
        raise UserError("--baseline-run joins stored baseline records: a noise floor (--secondary, --noise-floor, "
                        "servecmp.toml's [gen]) needs the live baseline in a joint run")
    # The specific settings first: the item set's fingerprint last, as several of them change the prompts.
    was = stored_api(s)
    if new.api not in ("auto", was):
        raise UserError(f"{pre} was asked through {was}, this run --api {new.api}")
    if s.max_tokens != new.max_tokens:
        raise UserError(f"{pre} generated at most {s.max_tokens} tokens, this run --max-tokens {new.max_tokens}")
    if s.samples != new.samples:
        plural = "" if s.samples == 1 else "s"
        raise UserError(f"{pre} drew {s.samples} sample{plural} per item, this run --samples {new.samples}")
    if s.temperature != new.temperature:
        raise UserError(f"{pre} sampled at temperature {s.temperature:g}, this run --temperature {new.temperature:g}")
    if not s.greedy and s.seed != new.seed:
        raise UserError(f"{pre} sampled with seed {s.seed}, this run --seed {new.seed}")
    if s.top_k != new.top_k:
        raise UserError(f"{pre} read the top {s.top_k} logprobs, this run --top-k {new.top_k}")
    forcing = new.teacher_forcing and new.greedy
    if forcing and not s.teacher_forcing:
        raise UserError(f"{pre} was not teacher-forced (--no-teacher-forcing), this run teacher-forces: add "
                        "--no-teacher-forcing or make a new profile")
    if s.task_fingerprint != new.task_fingerprint:
        raise UserError(f"{pre} answered another item set or prompt rendering (task fingerprint "
                        f"{s.task_fingerprint} vs {new.task_fingerprint}); run the stored task or make a new profile")
    items = read_items(d, s)
    have = {r.item_id for r in baseline_records(d, s)}
    missing = [it.item_id for it in items if it.item_id not in have]
    if missing:
        raise UserError(f"{pre} has no finished answer to {len(missing)} of {len(items)} items (first: "
                        f"{missing[0]}); finish it first: servecmp gen --resume {d}")
    if forcing:
        rows = forcing_index(d)
        missing = [it.item_id for it in items if it.item_id not in rows]
        if missing:
            raise UserError(f"{pre} keeps no teacher-forcing row for {len(missing)} of {len(items)} items (first: "
                            f"{missing[0]}; a run made before servecmp kept them, or unfinished): add "
                            "--no-teacher-forcing, or make a new profile with --baseline-only")


def adopt(plan: StoredPlan, new: GenManifest) -> GenManifest:
    """The new run's manifest with the stored baseline's endpoint (model, URL and API it answered
    through) in place of the baseline's, and the stored run named."""
    base = plan.manifest.baseline
    endpoints = [GenEndpoint.model_validate(base.model_dump()) if e.name == BASELINE else e for e in new.endpoints]
    info = GenStoredBaseline(run_dir=str(plan.run_dir), started_at=plan.manifest.started_at,
                             finished_at=plan.manifest.finished_at, model=base.model or "", base_url=base.base_url)
    return new.model_copy(update={"endpoints": endpoints, "stored_baseline": info})


async def require_api(api: str, clients: dict[str, EndpointClient], plan: StoredPlan,
                      supports_completions: Callable[[EndpointClient], Awaitable[bool]]) -> None:
    """Candidates are asked through the API the stored baseline was (the same prompts): one line when
    a candidate has no completions API the stored answers came through. ``supports_completions``:
    the run's probe, passed in because the run imports this module."""
    if api != "completions":
        return
    for name, client in clients.items():
        if not await supports_completions(client):
            raise UserError(f"--baseline-run {plan.run_dir}: refused, the stored baseline was asked through "
                            f"completions and {name} ({client.spec.normalised_url()}) has no completions API")


def check_sample(plan: StoredPlan, items: Sequence[GenItem]) -> list[GenItem]:
    """The seeded sample of stored items the live baseline is asked again."""
    return random.Random(plan.manifest.seed + CHECK_SEED_OFFSET).sample(list(items), min(plan.check, len(items)))


async def drift_check(plan: StoredPlan, items: Sequence[GenItem], client: EndpointClient, console: Console,
                      generate_one: Generate, *, allow_code: bool) -> tuple[GenBaselineCheck, list[GenRecord]]:
    """The live baseline re-asked `check_sample`; UserError (one line) unless every answer is the stored
    text. ``generate_one``: the run's request for one item (`servecmp.gen.run.generate_one`)."""
    from servecmp.endpoints import EndpointError

    url = client.spec.normalised_url()
    sample = check_sample(plan, items)
    stored = {r.item_id: r for r in baseline_records(plan.run_dir, plan.manifest) if r.sample == 0}
    # Asked as the stored baseline was: its API, greedy (no seed), max tokens and stop sequences.
    endpoint = plan.manifest.baseline.model_copy(update={"seed": None})
    console.print(f"baseline check: asking {len(sample)} stored items again of {url}", highlight=False, markup=False)

    async def one(item: GenItem) -> list[GenRecord]:
        async with client.slot():
            return await generate_one(client, None, plan.manifest, endpoint, item, allow_code=allow_code)

    try:
        fresh = [r for rs in await asyncio.gather(*(one(it) for it in sample)) for r in rs]
    except EndpointError as exc:
        raise UserError(f"--baseline {url}: the drift check failed: {exc}") from None
    changed = sum(1 for r in fresh if r.text != stored[r.item_id].text)
    check = GenBaselineCheck(url=url, items=len(sample), changed=changed, reproduced=changed == 0)
    if not check.reproduced:
        raise UserError(f"--baseline {url} no longer reproduces the stored baseline {plan.run_dir}: {changed} of "
                        f"{len(sample)} re-asked greedy answers differ from the stored text; a changed server is not "
                        "the baseline any more: make a new profile with --baseline-only")
    return check, fresh


def write_check(run_dir: Path, fresh: Sequence[GenRecord]) -> None:
    """The drift check's records, kept in the run (<run>/baseline_check/records.jsonl)."""
    if not fresh:
        return
    (run_dir / CHECK_DIR).mkdir(exist_ok=True)
    with JsonlAppender(run_dir / CHECK_DIR / RECORDS, sync_every=1000) as out:
        for r in fresh:
            out.append(r)


def join(run_dir: Path, manifest: GenManifest, items: Sequence[GenItem]) -> int:
    """Copy the stored baseline's records and teacher-forcing rows of this run's items into the run,
    those not there yet (a resume copies nothing twice, and reads the stored run only when something
    is missing). Returns how many records were copied."""
    assert manifest.stored_baseline is not None
    wanted = {it.item_id for it in items}
    have = {(r.item_id, r.sample) for r in load_records(run_dir, manifest.samples) if r.endpoint == BASELINE}
    rows = forcing_index(run_dir)
    forcing = manifest.teacher_forcing and manifest.greedy
    need_records = len(have) < len(wanted) * manifest.samples
    need_rows = forcing and any(i not in rows for i in wanted)
    if not need_records and not need_rows:
        return 0
    src = Path(manifest.stored_baseline.run_dir)
    stored = read_stored(src)
    n = 0
    if need_records:
        with JsonlAppender(run_dir / RECORDS, sync_every=1000) as out:
            for r in baseline_records(src, stored):
                if r.item_id in wanted and (r.item_id, r.sample) not in have:
                    out.append(r)
                    have.add((r.item_id, r.sample))
                    n += 1
    if need_rows:
        # Row by row: the file holds the top-k of every answer token, too large to load at once.
        with JsonlAppender(run_dir / BASELINE_FORCING, sync_every=1000) as out:
            for obj in iter_jsonl(src / BASELINE_FORCING):
                item_id = str(obj.get("item_id"))
                if item_id in wanted and item_id not in rows:
                    out.append(obj)
                    rows.offsets[item_id] = -1  # copied: not read through this index again
    return n


def stored_line(info: GenStoredBaseline, joined: int) -> str:
    return (f"baseline: stored run {info.run_dir} ({info.model} at {info.base_url}, "
            f"{age(info.finished_at or info.started_at)}); {joined} stored records joined")


def profile_line(run_dir: Path) -> str:
    return (f"baseline profile: {run_dir}; compare candidates with it: servecmp gen --baseline-run {run_dir} "
            "--candidate URL")
