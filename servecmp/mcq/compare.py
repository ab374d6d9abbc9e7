"""Several candidates against one baseline, and the noise floor: records → `McqComparison`.

One run directory holds the baseline's records (scored once per item), every candidate's, the
secondary's (a replica of the baseline, `--secondary`) and, with `--noise-floor N`, a second answer
of N seeded items from the baseline and every candidate (records with ``repeat == 1``; the metrics
of the main comparison read only ``repeat == 0``).

`McqComparison` (schema "servecmp.mcq_comparison/1") holds:

- ``candidates``: per candidate its name, endpoint and full `McqSummary` against the baseline, and
  with a floor its `FloorExcessModel` (``flips_excess``/``kl_excess`` with the paired tests);
- ``leaderboard``: one row per candidate (Δacc, flips c→w/w→c, answer changes, option and top-k KL,
  with intervals; the excesses when measured), fewest flips first;
- ``correlations``: with 3 or more candidates, Spearman and Pearson across candidates of (flips,
  option KL), (answer changes, option KL) and (flips, |Δacc|) with exact permutation p-values up to
  8 candidates (`servecmp.metrics.stats.correlation`); ``scatter_png`` the flips-vs-KL plot;
- ``floor``: every self-comparison (baseline vs secondary; each endpoint vs itself asked again) as a
  full `McqSummary`, whether it reproduced itself (same answers and option KL at most
  `REPRODUCIBLE_KL`; ``exact`` when bit-identical), and which endpoints did not.

Files: ``comparison.json`` always holds the comparison; ``summary.json`` holds the `McqSummary` of
a one-candidate run (the layout every earlier reader knows) and the comparison of a run of several.
`load_comparison` reads either kind of run; `load_summary` stays the one-candidate reader.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from servecmp.errors import UserError
from servecmp.mcq.records import ITEM_ERRORS, RECORDS, McqRecord
from servecmp.mcq.summary import (
    Correlation,
    Estimate,
    ItemErrors,
    McqSummary,
    Proportion,
    RunEndpoint,
    RunInfo,
    summary_from_records,
    write_summary,
)
from servecmp.metrics.floor import FloorExcess
from servecmp.records import EndpointRole
from servecmp.runstore import SUMMARY, check_schema, iter_jsonl, load_records, read_json, validate_as, write_json_atomic

COMPARISON = "comparison.json"
SCATTER = "leaderboard.png"
COMPARISON_SCHEMA: Literal["servecmp.mcq_comparison/1"] = "servecmp.mcq_comparison/1"
#: A self-comparison whose largest option KL is at most this (nats) still counts as reproducible:
#: the same fp32 server answering the same prompt in another batch moves logprobs in their last bits
#: (measured on the embedded pair: KL ~3e-15), while a server that really answers differently shows
#: KL many orders above it (the W8A8 CPU server asked again: ~1e-3).
REPRODUCIBLE_KL = 1e-9
#: Cross-candidate correlations need at least this many candidates.
MIN_CANDIDATES = 3
#: (x, y) leaderboard columns whose correlation across candidates the comparison gives.
CORRELATED: tuple[tuple[str, str], ...] = (
    ("flip_rate", "option_kl"),
    ("answer_change_rate", "option_kl"),
    ("flip_rate", "abs_delta_acc"),
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class FloorExcessModel(FloorExcess):
    """A candidate against its noise floor on the same items: the metrics' `FloorExcess`
    (``flips_excess``/``kl_excess`` with their paired tests) and the self-comparisons it combines,
    e.g. ["baseline vs secondary", "baseline vs itself"]."""

    sources: list[str] = field(default_factory=list)


class SelfCheck(_Model):
    """An endpoint against itself: the baseline vs the secondary, or an endpoint vs its own second
    answer (--noise-floor). ``summary`` reads "baseline" as the first answer, "candidate" as the
    second."""

    endpoint: str
    method: Literal["secondary", "repeat"]
    summary: McqSummary
    #: No flip, no answer change and every option KL at most `REPRODUCIBLE_KL` (float rounding).
    reproducible: bool
    #: No answer change and every option KL exactly 0 (bit-identical option distributions).
    exact: bool = False
    #: Largest per-item option KL (nats): how far from exact it is.
    max_option_kl: float | None


class NoiseFloor(_Model):
    secondary: RunEndpoint | None = None
    #: --noise-floor N: items asked again on every endpoint.
    repeat_items: int | None = None
    checks: list[SelfCheck]
    #: Endpoints whose self-comparison showed a flip, an answer change or an option KL above
    #: `REPRODUCIBLE_KL`.
    not_reproducible: list[str]


class CandidateResult(_Model):
    name: str
    endpoint: RunEndpoint
    summary: McqSummary
    floor: FloorExcessModel | None = None


class LeaderboardRow(_Model):
    rank: int
    name: str
    model: str
    n_items: int
    delta_acc: Estimate
    flips: Proportion
    correct_to_wrong: int
    wrong_to_correct: int
    answer_changes: Proportion
    option_kl: Estimate
    topk_kl: Estimate | None
    flips_excess: Estimate | None = None
    kl_excess: Estimate | None = None
    within_floor: bool | None = None


class CrossCorrelation(_Model):
    x: str
    y: str
    correlation: Correlation
    note: str | None = None


class McqComparison(_Model):
    """Every candidate of a run against the one baseline (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", serialize_by_alias=True, validate_by_name=True,
                              validate_by_alias=True)

    schema_: Literal["servecmp.mcq_comparison/1"] = Field(default=COMPARISON_SCHEMA, alias="schema")
    version: Literal[1] = 1
    run_dir: str | None = None
    task: str
    source: str
    n_items_planned: int | None = None
    complete: bool = True
    baseline: RunEndpoint
    candidates: list[CandidateResult]
    leaderboard: list[LeaderboardRow]
    correlations: list[CrossCorrelation] = Field(default_factory=list)
    scatter_png: str | None = None
    floor: NoiseFloor | None = None

    def candidate(self, name: str) -> CandidateResult:
        for c in self.candidates:
            if c.name == name:
                return c
        raise KeyError(name)


# --- building ------------------------------------------------------------------------------------


def leaderboard(candidates: Sequence[CandidateResult]) -> list[LeaderboardRow]:
    """One row per candidate, fewest flips first (then fewest answer changes, then name)."""
    rows = []
    for c in candidates:
        s = c.summary
        rows.append(LeaderboardRow(
            rank=0, name=c.name, model=c.endpoint.model, n_items=s.n_items, delta_acc=s.accuracy.diff,
            flips=s.flips.rate, correct_to_wrong=s.flips.correct_to_wrong,
            wrong_to_correct=s.flips.wrong_to_correct, answer_changes=s.answer_changes,
            option_kl=s.option_kl.mean_ci, topk_kl=s.topk_kl.kl_hat.mean_ci if s.topk_kl is not None else None,
            flips_excess=c.floor.flips_excess if c.floor else None,
            kl_excess=c.floor.kl_excess if c.floor else None,
            within_floor=c.floor.within_floor if c.floor else None,
        ))
    rows.sort(key=lambda r: (r.flips.rate if r.flips.rate is not None else 2.0,
                             r.answer_changes.rate if r.answer_changes.rate is not None else 2.0, r.name))
    return [r.model_copy(update={"rank": i + 1}) for i, r in enumerate(rows)]


def _column(row: LeaderboardRow, name: str) -> float | None:
    if name == "flip_rate":
        return row.flips.rate
    if name == "answer_change_rate":
        return row.answer_changes.rate
    if name == "option_kl":
        return row.option_kl.point
    if name == "abs_delta_acc":
        return None if row.delta_acc.point is None else abs(row.delta_acc.point)
    raise KeyError(name)


def cross_correlations(rows: Sequence[LeaderboardRow]) -> list[CrossCorrelation]:
    """Spearman and Pearson across candidates for each `CORRELATED` pair (none below 3 candidates)."""

    from servecmp.metrics.stats import correlation

    if len(rows) < MIN_CANDIDATES:
        return []
    out = []
    for x, y in CORRELATED:
        pts = [(_column(r, x), _column(r, y)) for r in rows]
        xs = [a for a, b in pts if a is not None and b is not None]
        ys = [b for a, b in pts if a is not None and b is not None]
        result = correlation(xs, ys)
        note = None
        if len(xs) < MIN_CANDIDATES:
            note = f"{len(xs)} candidate(s) with both numbers, need {MIN_CANDIDATES}"
        elif result.spearman_r is None:
            note = "undefined: one of the two is constant across candidates"
        out.append(CrossCorrelation(x=x, y=y, correlation=result,
                                    note=note))
    return out


def write_scatter(rows: Sequence[LeaderboardRow], path: Path) -> bool:
    """Flips vs option KL, one labelled point per candidate (servecmp.correlate's plot)."""
    from servecmp.correlate import scatter

    pts = [(r.name, 100 * r.flips.rate, r.option_kl.point) for r in rows
           if r.flips.rate is not None and r.option_kl.point is not None]
    return scatter(pts, path, xlabel="flips (% of MCQ items)", ylabel="mean option KL (nats)",
                   title="Flips vs KL per candidate (one baseline)")


def _item_errors(run_dir: Path, records: Sequence[McqRecord]) -> dict[str, ItemErrors]:
    """Items an endpoint (by name) refused that no later attempt answered."""
    answered = {(r.item_id, r.endpoint) for r in records}
    items: dict[str, set[str]] = {}
    example: dict[str, str] = {}
    for e in iter_jsonl(run_dir / ITEM_ERRORS):
        if (e["item_id"], e["endpoint"]) in answered or e.get("repeat", 0):
            continue
        items.setdefault(e["endpoint"], set()).add(e["item_id"])
        example.setdefault(e["endpoint"], e["error"])
    return {name: ItemErrors(count=len(ids), example=example[name]) for name, ids in items.items()}


def _self_check(endpoint: str, method: Literal["secondary", "repeat"], first: list[McqRecord],
                second: list[McqRecord], run: RunInfo, seed: int) -> SelfCheck:
    s = summary_from_records(first, second, run, seed=seed)
    max_kl = s.option_kl.max
    same_answers = s.flips.flips == 0 and s.answer_changes.count == 0
    reproducible = same_answers and (max_kl or 0.0) <= REPRODUCIBLE_KL
    exact = same_answers and (max_kl or 0.0) == 0.0
    return SelfCheck(endpoint=endpoint, method=method, summary=s, reproducible=reproducible, exact=exact,
                     max_option_kl=max_kl)


def _floor_excess(main: dict[str, list[McqRecord]], rep: dict[str, list[McqRecord]], name: str,
                  has_secondary: bool, has_repeat: bool, seed: int) -> FloorExcessModel | None:
    from servecmp.mcq.from_records import record_differences
    from servecmp.metrics.floor import ItemDifferences, combine_floors, excess_over_floor

    cand = record_differences(main["baseline"], main.get(name, []))
    floors: list[tuple[str, dict[str, tuple[bool, bool, float]]]] = []
    if has_secondary:
        floors.append(("baseline vs secondary", record_differences(main["baseline"], main.get("secondary", []))))
    if has_repeat:
        floors.append(("baseline vs itself", record_differences(main["baseline"], rep.get("baseline", []))))
        floors.append((f"{name} vs itself", record_differences(main.get(name, []), rep.get(name, []))))
    if not floors:
        return None
    ids = [i for i in cand if all(i in f for _, f in floors)]
    parts = [ItemDifferences(flipped=np.array([f[i][0] for i in ids], dtype=bool),
                             changed=np.array([f[i][1] for i in ids], dtype=bool),
                             kl=np.array([f[i][2] for i in ids], dtype=np.float64)) for _, f in floors]
    floor = combine_floors(parts)
    ex = excess_over_floor(np.array([cand[i][0] for i in ids], dtype=bool), floor.flipped,
                           np.array([cand[i][2] for i in ids], dtype=np.float64), floor.kl, seed=seed)
    from servecmp.metrics.summary import jsonable

    return TypeAdapter(FloorExcessModel).validate_python({**jsonable(ex), "sources": [s for s, _ in floors]})


def compare_run(run_dir: Path) -> McqComparison:
    """Recompute every comparison of a run directory from its records, write comparison.json,
    summary.json and the scatter plot (see the module docstring; the run's own last step) and return
    the comparison. UserError when some candidate has no item answered by both it and the baseline yet."""
    comparison = read_comparison(run_dir)
    save_comparison(run_dir, comparison)
    return comparison


def save_comparison(run_dir: Path, comparison: McqComparison) -> None:
    if len(comparison.leaderboard) >= MIN_CANDIDATES and write_scatter(comparison.leaderboard, run_dir / SCATTER):
        comparison.scatter_png = str(run_dir / SCATTER)
    write_json_atomic(run_dir / COMPARISON, comparison.model_dump(mode="json"))
    if len(comparison.candidates) == 1:
        write_summary(run_dir, comparison.candidates[0].summary)
    else:
        write_json_atomic(run_dir / SUMMARY, comparison.model_dump(mode="json"))


def read_comparison(run_dir: Path) -> McqComparison:
    """`compare_run` without writing anything: what reports use (a run directory is read-only to them)."""
    from servecmp.mcq.settings import read_manifest

    manifest = read_manifest(run_dir)
    records = load_records(run_dir / RECORDS, McqRecord)
    main: dict[str, list[McqRecord]] = {}
    rep: dict[str, list[McqRecord]] = {}
    for r in records:
        (rep if r.repeat else main).setdefault(r.endpoint, []).append(r)
    errors = _item_errors(run_dir, records)
    base_spec = manifest.endpoint("baseline")
    base_ep = RunEndpoint(url=base_spec.base_url, model=base_spec.model or "")
    planned, complete = manifest.n_items, manifest.finished_at is not None

    def run_info(a: tuple[str, RunEndpoint, list[McqRecord]], b: tuple[str, RunEndpoint, list[McqRecord]],
                 *, repeat: bool = False) -> RunInfo:
        """RunInfo of the comparison of `a` (as "baseline") with `b` (as "candidate")."""
        requests: dict[EndpointRole, float] = {}
        errs: dict[EndpointRole, ItemErrors] = {}
        apis: dict[EndpointRole, list[str]] = {}
        sides: tuple[tuple[EndpointRole, tuple[str, RunEndpoint, list[McqRecord]]], ...] = (
            ("baseline", a), ("candidate", b))
        for role, (name, _, rs) in sides:
            if rs:
                requests[role] = sum(r.n_requests for r in rs) / len(rs)
                apis[role] = sorted({r.api for r in rs})
            if name in errors and not (repeat and role == "candidate"):
                errs[role] = errors[name]
        return RunInfo(run_dir=str(run_dir), task=manifest.task, source=manifest.source_description,
                       n_items_planned=planned, complete=complete, endpoints={"baseline": a[1], "candidate": b[1]},
                       requests_per_item=requests, item_errors=errs, apis=apis)

    if len(manifest.candidates) == 1 and not (main.get("baseline") and main.get(manifest.candidates[0].name or "")):
        raise UserError(f"{run_dir}: no item has been answered by both endpoints yet")
    if not main.get("baseline"):
        raise UserError(f"{run_dir}: no item has been answered by the baseline yet")
    candidates: list[CandidateResult] = []
    has_secondary = manifest.secondary is not None and bool(main.get("secondary"))
    has_repeat = bool(manifest.noise_floor) and bool(rep)
    for c in manifest.candidates:
        name = c.name or "candidate"
        if not main.get(name):
            raise UserError(f"{run_dir}: no item has been answered by both the baseline and {name} yet")
        ep = RunEndpoint(url=c.base_url, model=c.model or "")
        info = run_info(("baseline", base_ep, main["baseline"]), (name, ep, main[name]))
        summary = summary_from_records(main["baseline"], main[name], info, seed=manifest.seed)
        floor = _floor_excess(main, rep, name, has_secondary, has_repeat, manifest.seed)
        candidates.append(CandidateResult(name=name, endpoint=ep, summary=summary, floor=floor))

    noise: NoiseFloor | None = None
    if manifest.secondary is not None or manifest.noise_floor:
        checks: list[SelfCheck] = []
        sec_ep = None
        if manifest.secondary is not None:
            sec_ep = RunEndpoint(url=manifest.secondary.base_url, model=manifest.secondary.model)
            if has_secondary:
                info = run_info(("baseline", base_ep, main["baseline"]), ("secondary", sec_ep, main["secondary"]))
                checks.append(_self_check("baseline", "secondary", main["baseline"], main["secondary"], info,
                                          manifest.seed))
        if has_repeat:
            eps = {"baseline": base_ep, **{c.name: c.endpoint for c in candidates}}
            for name, ep in eps.items():
                if main.get(name) and rep.get(name):
                    info = run_info((name, ep, main[name]), (name, ep, rep[name]), repeat=True)
                    checks.append(_self_check(name, "repeat", main[name], rep[name], info, manifest.seed))
        bad = []
        for ch in checks:
            if not ch.reproducible and ch.endpoint not in bad:
                bad.append(ch.endpoint)
        noise = NoiseFloor(secondary=sec_ep, repeat_items=manifest.noise_floor, checks=checks, not_reproducible=bad)

    rows = leaderboard(candidates)
    comparison = McqComparison(
        run_dir=str(run_dir), task=manifest.task, source=manifest.source_description, n_items_planned=planned,
        complete=complete, baseline=base_ep, candidates=candidates, leaderboard=rows,
        correlations=cross_correlations(rows), floor=noise,
    )
    if len(rows) >= MIN_CANDIDATES and (run_dir / SCATTER).is_file():
        comparison.scatter_png = str(run_dir / SCATTER)
    return comparison


def comparison_from_summary(summary: McqSummary) -> McqComparison:
    """A one-candidate summary as a comparison with one entry (no floor)."""
    run = summary.run
    cand = run.endpoints.get("candidate") or RunEndpoint(url="", model="")
    entry = CandidateResult(name="candidate", endpoint=cand, summary=summary)
    return McqComparison(run_dir=run.run_dir, task=run.task, source=run.source, n_items_planned=run.n_items_planned,
                         complete=run.complete, baseline=run.endpoints.get("baseline") or RunEndpoint(url="", model=""),
                         candidates=[entry], leaderboard=leaderboard([entry]))


def _validate(raw: Any, file: Path) -> McqComparison:
    check_schema(raw, file, (COMPARISON_SCHEMA,))
    return validate_as(McqComparison, raw, file, "a valid MCQ comparison")


def load_comparison(path: Path) -> McqComparison:
    """The stored comparison of a run directory (comparison.json), or of a summary file; a
    one-candidate run without comparison.json (an earlier servecmp) reads as one entry."""
    from servecmp.mcq.summary import load_summary

    if path.is_dir() and (path / COMPARISON).is_file():
        return _validate(read_json(path / COMPARISON), path / COMPARISON)
    file = path / SUMMARY if path.is_dir() else path
    raw: Any = read_json(file)
    if isinstance(raw, dict) and str(raw.get("schema", "")).startswith("servecmp.mcq_comparison/"):
        return _validate(raw, file)
    return comparison_from_summary(load_summary(file))
