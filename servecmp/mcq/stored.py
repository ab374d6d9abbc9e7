"""Stored baselines: a finished run's baseline records stand in for the baseline endpoint.

`servecmp mcq --baseline-run RUN_DIR --candidate URL ...` asks only the candidates and joins their
records to the stored baseline's (copied into the new run, so the new run directory is still the
whole truth about its results). `servecmp mcq --baseline URL --baseline-only` makes such a profile
without any candidate.

Compatibility (`check_compatible`), refused in one line naming the first difference: the stored
run's item set and prompt rendering (`task_fingerprint`), its prompt format (`prompt_format_hash`),
few-shot count, top-k and the API the baseline was asked through must be what the new run would use.
Task flags not given default to the stored run's (`stored_options`), so ``--baseline-run RUN
--candidate URL`` alone reproduces the stored run's task.

Drift (`--baseline URL` as well): a seeded sample of ``--baseline-check N`` stored items (default
20) is asked of the live baseline before anything else, and the run is refused unless the live
baseline reproduces the stored answers within the noise floor, defined as (`reproduction`):

- no re-asked item changes its chosen option, and
- the largest per-item option KL(stored ‖ live) is at most the tolerance: `REPRODUCIBLE_KL`
  (1e-9 nats, float rounding of one fp32 server asked in another batch, as the noise-floor
  self-check uses), or, when the stored run measured its baseline against itself (--noise-floor),
  the largest option KL that self-check saw, if larger (a baseline that is itself
  nondeterministic cannot be asked to reproduce better than it reproduced itself).

A changed server is not the baseline any more: the candidates would be compared with something
other than what the profile describes.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from servecmp import runstore
from servecmp.errors import UserError
from servecmp.mcq.records import RECORDS, McqItem, McqRecord
from servecmp.mcq.settings import BaselineCheck, StoredBaseline
from servecmp.runstore import JsonlAppender, iter_jsonl

if TYPE_CHECKING:
    from rich.console import Console

    from servecmp.endpoints import EndpointClient
    from servecmp.mcq.settings import McqManifest, McqOptions, McqSettings
    from servecmp.tasks.registry import TaskData

#: Seeds the drift check's sample apart from every other seeded draw of the run.
CHECK_SEED_OFFSET = 7307
DEFAULT_CHECK = 20
#: Where the drift check's records go inside the new run (apart from the main records).
CHECK_DIR = "baseline_check"


def read_stored(run_dir: Path) -> tuple[McqManifest, list[McqRecord]]:
    """The stored run's manifest and its baseline's main-pass records; UserError when it is not an
    MCQ run with baseline records."""
    from servecmp.mcq.settings import read_manifest

    if not (run_dir / "manifest.json").exists():
        raise UserError(f"--baseline-run {run_dir}: not a run directory (no manifest.json)")
    manifest = read_manifest(run_dir)
    base = [McqRecord.model_validate(r) for r in iter_jsonl(run_dir / RECORDS)
            if r.get("endpoint") == "baseline" and not r.get("repeat", 0)]
    if not base:
        raise UserError(f"--baseline-run {run_dir}: the run holds no baseline record")
    return manifest, base


def stored_options(opts: McqOptions, stored: McqManifest) -> McqOptions:
    """The flags of a run on a stored baseline: task flags not given take the stored run's values."""
    filled = {name: getattr(stored, name) for name in
              ("task", "data_dir", "fewshot_file", "limit", "sample", "seed", "top_k", "api")
              if getattr(opts, name) is None}
    if opts.source is None:
        filled["source"] = stored.source
    if opts.fewshot is None:
        filled["fewshot"] = stored.fewshot
    return replace(opts, **filled)


def check_compatible(stored_dir: Path, stored: McqManifest, data: TaskData, *, top_k: int, api: str) -> None:
    """UserError, one line, at the first fingerprint that differs."""
    pre = f"--baseline-run {stored_dir}: refused, the stored baseline"
    # The specific settings first: each also changes the fingerprint, which would hide the cause.
    if stored.fewshot != data.fewshot:
        raise UserError(f"{pre} used {stored.fewshot}-shot prompts, this run {data.fewshot}-shot")
    if stored.top_k != top_k:
        raise UserError(f"{pre} read the top {stored.top_k} logprobs, this run --top-k {top_k}")
    was = stored_api(stored)
    if api not in ("auto", was):
        raise UserError(f"{pre} was asked through {was}, this run --api {api}")
    if stored.prompt_format_hash != data.prompt_format_hash:
        raise UserError(f"{pre} used another prompt format ({stored.prompt_format_hash} vs {data.prompt_format_hash})")
    if stored.task_fingerprint != data.fingerprint:
        raise UserError(f"{pre} was scored on another item set or prompt rendering (task fingerprint "
                        f"{stored.task_fingerprint} vs {data.fingerprint}); run the stored task or make a new profile")


def stored_api(stored: McqManifest) -> str:
    """The API the stored baseline was asked through (completions before the capability probe)."""
    return (stored.endpoint_apis or {}).get("baseline", "completions")


def age(stored: McqManifest, now: datetime | None = None) -> str:
    """How old the stored baseline is, in words: "made 2026-12-01T10:00:00Z, 3 days ago"."""
    return runstore.age(stored.finished_at or stored.started_at, now)


def join_records(stored: Sequence[McqRecord], items: Sequence[McqItem], run_dir: Path) -> int:
    """Copy the stored baseline's records of this run's items into the run (those not there yet,
    so a resume copies nothing twice). Returns how many were copied."""
    wanted = {it.item_id for it in items}
    have = {r["item_id"] for r in iter_jsonl(run_dir / RECORDS) if r.get("endpoint") == "baseline"
            and not r.get("repeat", 0)}
    out = JsonlAppender(run_dir / RECORDS, sync_every=1000)
    n = 0
    try:
        for r in stored:
            if r.item_id in wanted and r.item_id not in have:
                out.append(r.model_dump(mode="json"))
                have.add(r.item_id)
                n += 1
    finally:
        out.close()
    return n


def check_sample(stored: Sequence[McqRecord], items: Sequence[McqItem], n: int, seed: int) -> list[McqItem]:
    """The seeded sample of stored items the live baseline is asked again."""
    have = {r.item_id for r in stored}
    pool = [it for it in items if it.item_id in have]
    return random.Random(seed + CHECK_SEED_OFFSET).sample(pool, min(n, len(pool)))


def tolerance(stored_dir: Path, stored: McqManifest) -> float:
    """`REPRODUCIBLE_KL`, or the stored run's own baseline-vs-itself largest option KL if larger."""
    from servecmp.mcq.compare import REPRODUCIBLE_KL, load_comparison

    tol = REPRODUCIBLE_KL
    if stored.noise_floor and (stored_dir / "comparison.json").exists():
        floor = load_comparison(stored_dir / "comparison.json").floor
        for ch in floor.checks if floor is not None else []:
            if ch.endpoint == "baseline" and ch.max_option_kl is not None:
                tol = max(tol, ch.max_option_kl)
    return tol


def reproduction(stored: Sequence[McqRecord], fresh: Sequence[McqRecord], tol: float) -> BaselineCheck:
    """The drift rule of the module docstring over the items both hold."""
    from servecmp.mcq.from_records import record_differences

    diffs = record_differences(stored, fresh)
    changes = sum(1 for _, changed, _ in diffs.values() if changed)
    kls = [kl for _, _, kl in diffs.values() if kl == kl]  # NaN: an endpoint answered nothing
    max_kl = max(kls) if kls else 0.0
    return BaselineCheck(items=len(diffs), answer_changes=changes, max_option_kl=max_kl, tolerance=tol,
                         reproduced=changes == 0 and max_kl <= tol)


def drift_message(stored_dir: Path, url: str, check: BaselineCheck) -> str:
    return (f"--baseline {url} no longer reproduces the stored baseline {stored_dir}: on {check.items} re-asked "
            f"items {check.answer_changes} answers changed and the largest option KL is {check.max_option_kl:.3g} "
            f"nats (tolerance {check.tolerance:.3g}); a changed server is not the baseline any more: make a new "
            "profile with --baseline-only")


def with_stored_findings(found: dict[str, Any], stored: McqManifest) -> dict[str, Any]:
    """The manifest's probe findings with the stored baseline's own (it was probed when it ran)."""
    if not found:
        return found
    apis = {**found["endpoint_apis"], "baseline": stored_api(stored)}
    caps = dict(found["capabilities"])
    if stored.capabilities and "baseline" in stored.capabilities:
        caps["baseline"] = stored.capabilities["baseline"]
    else:
        caps.pop("baseline", None)
    return {"endpoint_apis": apis, "capabilities": caps}


async def stored_info(settings: McqSettings, stored: tuple[McqManifest, list[McqRecord]], items: Sequence[McqItem],
                      clients: Mapping[str, EndpointClient], console: Console, run_items: Any
                      ) -> tuple[StoredBaseline, list[dict[str, Any]]]:
    """The manifest's record of the stored baseline and the drift check's records; with a live
    baseline in ``clients``, the drift check first (UserError, one line, when it does not reproduce).
    ``run_items``: the run's own item loop (`servecmp.mcq.run.run_items`), passed in because the run
    imports this module."""
    import tempfile

    assert settings.baseline_run is not None
    manifest, records = stored
    base = manifest.endpoint("baseline")
    check = None
    fresh_lines: list[dict[str, Any]] = []
    if "baseline" in clients:
        sample = check_sample(records, items, settings.baseline_check, settings.seed)
        console.print(f"baseline check: asking {len(sample)} stored items again of {base.base_url}", highlight=False)
        with tempfile.TemporaryDirectory() as tmp:
            out = await run_items(sample, {"baseline": clients["baseline"]}, Path(tmp), top_k=settings.top_k)
            if out.failed:
                raise UserError(f"--baseline {settings.baseline.base_url}: the drift check failed: "
                                f"{next(iter(out.failed.values()))}")
            fresh = [McqRecord.model_validate(r) for r in iter_jsonl(Path(tmp) / RECORDS)]
        ids = {it.item_id for it in sample}
        tol = tolerance(settings.baseline_run, manifest)
        check = reproduction([r for r in records if r.item_id in ids], fresh, tol)
        if not check.reproduced:
            raise UserError(drift_message(settings.baseline_run, settings.baseline.base_url, check))
        fresh_lines = [r.model_dump(mode="json") for r in fresh]
    info = StoredBaseline(run_dir=str(settings.baseline_run), started_at=manifest.started_at,
                          finished_at=manifest.finished_at, model=base.model or "", base_url=base.base_url,
                          check=check)
    return info, fresh_lines


def write_check(run_dir: Path, lines: Sequence[dict[str, Any]]) -> None:
    """The drift check's records, kept in the run (<run>/baseline_check/records.jsonl)."""
    if not lines:
        return
    (run_dir / CHECK_DIR).mkdir(exist_ok=True)
    out = JsonlAppender(run_dir / CHECK_DIR / RECORDS, sync_every=1000)
    try:
        for line in lines:
            out.append(line)
    finally:
        out.close()


def stored_line(stored_dir: Path | None, manifest: McqManifest, joined: int) -> str:
    base = manifest.endpoint("baseline")
    return (f"baseline: stored run {stored_dir} ({base.model} at {base.base_url}, {age(manifest)}); "
            f"{joined} stored records joined")
