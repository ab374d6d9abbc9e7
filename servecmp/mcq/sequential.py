"""`servecmp mcq --until-decided`: score items in a seeded random order, batch by batch, and stop
as soon as every candidate's verdict is decided on anytime-valid confidence sequences (a gate FAILs,
or every gate PASSes).

Why a confidence sequence: a run that looks after every batch and stops at the first decided look
would break a fixed-n interval's 95% (tests/test_confseq_sim.py: 70-80% coverage); the betting CS of
`servecmp.metrics.sequential` holds at every look at once. The gate rules do not change
(`servecmp.gates.gate_status` on the interval); only the interval does: wider than the fixed-n one
at the same n, and the price of being allowed to stop early.

The loop (`run_until_decided`):

1. The order: the run's items shuffled with ``Random(seed + ORDER_SEED_OFFSET)``.
2. Each look asks the next ``batch`` items of that order of the baseline (unless it is stored) and
   of every candidate still undecided and within its ``budget`` (requests; a batch is cut to the
   requests left, at one request per item). A decided candidate is asked nothing more.
3. After the batch, every candidate's per-item values over the paired items, in the order asked,
   give a CS per gated metric (`anytime_estimates`); a candidate is decided once its verdict can
   no longer change (`verdict_known`: one gate FAILs, or every gate PASSes). The run stops when
   every candidate is decided or out of items or budget.

Resume repeats nothing: looks are replayed from the records on disk (`run_items` skips every
(item, endpoint) already recorded), and since the CS is a deterministic function of the records in
the order asked, a resumed run takes exactly the decisions the original took. `LOOKS` (looks.json)
records each look; it is rewritten whole after each one.

Which metrics: those with a bounded per-item value (`servecmp.metrics.sequential.BOUNDS` less
top1_disagree, which needs top-k): flips, c2w, changes, delta_acc, kl (clipped at `kl_cap`), js.
Gates on any other metric are refused before the run starts.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel

from servecmp.errors import UserError
from servecmp.gates import METRICS, Gate, MetricEstimate, Verdict, gate_status
from servecmp.mcq.records import ITEM_ERRORS, RECORDS, McqItem, McqRecord
from servecmp.mcq.settings import SequentialPlan
from servecmp.metrics.sequential import BOUNDS, GRID_POINTS, KL_CAP, confidence_sequence
from servecmp.runstore import iter_jsonl, read_json, write_json_atomic

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

    from servecmp.endpoints import EndpointClient
    from servecmp.mcq.asking import RunOutcome
    from servecmp.mcq.compare import McqComparison

#: Seeds the item order apart from --sample's and the noise floor's (same --seed, another stream).
ORDER_SEED_OFFSET = 104729
#: The metrics a sequential run can gate on.
SEQUENTIAL_METRICS = ("flips", "c2w", "changes", "delta_acc", "kl", "js")
#: A kl gate's cap is this many times its threshold (`kl_cap`).
KL_CAP_FACTOR = 10.0
#: Grid of the CS during the run (the report uses the finer `GRID_POINTS`; decisions are the same).
LOOP_GRID = 200
#: <run>/looks.json: every look of a sequential run.
LOOKS = "looks.json"
ANYTIME_NOTE = ("intervals are anytime-valid (betting confidence sequences, Waudby-Smith & Ramdas 2024): valid "
                "when the run stops at a look chosen by the data, and wider than the fixed-n intervals")
STOPPED_AT_FAIL_NOTE = ("a gate failed, so the candidate fails whatever its other gates show; it was not asked "
                        "further, and an INCONCLUSIVE gate is where that gate stood when it stopped")
KL_NOTE = ("per-item KL clipped at 10x the largest kl threshold (at most 1 nat) for its anytime interval: a FAIL holds "
           "for the mean KL; a PASS needs every item seen below the cap and bounds the clipped mean")


def check_gates(gates: Sequence[Gate]) -> None:
    """UserError (one line) unless there are gates and every one reads a sequential metric."""
    if not gates:
        raise UserError("--until-decided stops when every gate is decided: give --gate (or [gate] mcq in "
                        "servecmp.toml)")
    bad = sorted({g.metric for g in gates if g.metric not in SEQUENTIAL_METRICS})
    if bad:
        raise UserError(f"--until-decided cannot decide {', '.join(bad)}: it has anytime-valid intervals only for "
                        f"{', '.join(SEQUENTIAL_METRICS)} (bounded per-item values)")


def item_order(items: Sequence[McqItem], seed: int) -> list[McqItem]:
    """The order a sequential run asks its items in."""
    order = list(items)
    random.Random(seed + ORDER_SEED_OFFSET).shuffle(order)
    return order


# ---- per-item values and anytime estimates ----------------------------------------------------


def per_item_values(base: Sequence[McqRecord], cand: Sequence[McqRecord], order: Sequence[str]
                    ) -> dict[str, np.ndarray]:
    """Each sequential metric's per-item value over the items both answered, in ``order``
    (item ids). The same definitions as the fixed-n summary (`servecmp.metrics.summary`): choices
    recomputed from the option logprobs; KL and JS over the renormalised options; items with a NaN
    divergence (an endpoint answered nothing) left out of kl and js only."""
    from servecmp.mcq.from_records import option_matrix
    from servecmp.metrics import kl as kl_mod
    from servecmp.metrics import mcq

    b_by = {r.item_id: r for r in base if not r.repeat}
    c_by = {r.item_id: r for r in cand if not r.repeat}
    ids = [i for i in order if i in b_by and i in c_by]
    if not ids:
        return {m: np.zeros(0) for m in SEQUENTIAL_METRICS}
    k = max(len(b_by[i].option_logprobs) for i in ids)
    b_lp = option_matrix([b_by[i] for i in ids], k)
    c_lp = option_matrix([c_by[i] for i in ids], k)
    gold = np.array([b_by[i].gold for i in ids], dtype=np.int64)
    bc, cc = mcq.chosen_options(b_lp), mcq.chosen_options(c_lp)
    b_ok, c_ok = mcq.correct(bc, gold), mcq.correct(cc, gold)
    okl = mcq.option_kl(b_lp, c_lp).kl
    js = kl_mod.divergences(b_lp, c_lp, floor=mcq.PROB_FLOOR).js
    return {
        "flips": (b_ok != c_ok).astype(float),
        "c2w": (b_ok & ~c_ok).astype(float),
        "changes": (bc != cc).astype(float),
        "delta_acc": c_ok.astype(float) - b_ok.astype(float),
        "kl": okl[np.isfinite(okl)],
        "js": js[np.isfinite(js)],
    }


def anytime_estimates(values: Mapping[str, np.ndarray], gates: Sequence[Gate] = (), *,
                      grid_points: int = GRID_POINTS) -> dict[str, MetricEstimate]:
    """The anytime-valid 95% interval of every sequential metric (method "anytime"); each gate's
    threshold is put on the CS grid, so its decision is exact."""
    out: dict[str, MetricEstimate] = {}
    for metric in SEQUENTIAL_METRICS:
        x = values.get(metric)
        if x is None or x.size == 0:
            continue
        low, high = BOUNDS[metric]
        thr = tuple(g.threshold for g in gates if g.metric == metric)
        if metric == "kl":
            high = kl_cap(gates)
        cs = confidence_sequence(x, low, high, thresholds=thr, grid_points=grid_points)
        upper = cs.high
        if metric == "kl" and float(np.max(x)) > high:
            # An item above the cap was seen: the capped mean is then below the mean, so its upper
            # end bounds nothing a `kl<=t` gate may pass on (t < cap); a FAIL (lower end) still holds.
            upper = max(upper, high)
        out[metric] = MetricEstimate(point=cs.point, low=cs.low, high=upper, n=cs.n, method="anytime")
    return out


def kl_cap(gates: Sequence[Gate]) -> float:
    """The cap per-item KL is clipped at: `KL_CAP_FACTOR` times the largest kl threshold, at most
    `KL_CAP` (1 nat). Bounded values are what a betting CS needs, and its width scales with the
    range: on the embedded int8 pair (mean option KL 0.016) 228 items give [0.009, 0.047] nats with
    a 1-nat cap and [0.014, 0.024] with 0.25."""
    ts = [g.threshold for g in gates if g.metric == "kl" and g.threshold > 0]
    return min(KL_CAP, KL_CAP_FACTOR * max(ts)) if ts else KL_CAP


def verdict_known(statuses: Sequence[str]) -> bool:
    """Whether a candidate's verdict can no longer change: a gate FAILs (the verdict is FAIL whatever
    the other gates show, and a CS's running intersection never readmits a threshold it excluded,
    so that FAIL stays) or every gate PASSes. Asking on would only narrow the undecided gates of a
    candidate that has already failed."""
    return "fail" in statuses or all(s == "pass" for s in statuses)


def statuses(gates: Sequence[Gate], est: Mapping[str, MetricEstimate]) -> list[str]:
    """Each gate's status on the estimates (gate_status, unchanged); "inconclusive" without one."""
    out = []
    for g in gates:
        e = est.get(g.metric)
        if e is None or e.low is None or e.high is None:
            out.append("inconclusive")
        else:
            out.append(gate_status(g.op, g.threshold, e.low, e.high))
    return out


# ---- the looks --------------------------------------------------------------------------------


class CandidateLook(BaseModel):
    """One candidate at one look."""

    items: int
    statuses: list[str]
    #: "asking", "decided", "budget" (its budget is spent) or "items" (the item set is spent).
    state: Literal["asking", "decided", "budget", "items"]


class Look(BaseModel):
    look: int
    #: Position reached in the item order.
    position: int
    candidates: dict[str, CandidateLook]


class LooksFile(BaseModel):
    """<run>/looks.json."""

    gates: list[str]
    batch: int
    budget: int | None
    n_items: int
    #: The item ids in the order asked.
    order: list[str]
    looks: list[Look]


def _requests(records: Sequence[McqRecord], errors: int) -> int:
    return sum(r.n_requests for r in records) + errors


class _Tail:
    """Records appended to a JSONL file since the last read (a look reads only the new batch)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def read(self) -> list[dict[str, object]]:
        import json

        if not self.path.exists():
            return []
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # a line still being written waits for the next read
        self.offset += end
        return [json.loads(line) for line in data[:end].splitlines() if line.strip()]


async def run_until_decided(items: Sequence[McqItem], clients: dict[str, EndpointClient], run_dir: Path, *,
                            plan: SequentialPlan, seed: int, top_k: int, progress: Progress | None,
                            console: Console, ask_baseline: bool = True) -> RunOutcome:
    """The loop of the module docstring. ``clients`` holds "baseline" (unless ``ask_baseline`` is
    False: a stored baseline whose records are already in the run) and every candidate by name."""
    from servecmp.mcq.asking import RunOutcome, run_items

    gates = plan.parsed()
    order = item_order(items, seed)
    ids = [it.item_id for it in order]
    cands = [name for name in clients if name not in ("baseline", "secondary")]
    recs: dict[str, list[McqRecord]] = {name: [] for name in ("baseline", *cands)}
    errs: dict[str, int] = dict.fromkeys(recs, 0)
    tail, err_tail = _Tail(run_dir / RECORDS), _Tail(run_dir / ITEM_ERRORS)
    state: dict[str, str] = dict.fromkeys(cands, "asking")
    looks: list[Look] = []
    outcome = RunOutcome()

    def take_new() -> None:
        for raw in tail.read():
            r = McqRecord.model_validate(raw)
            if r.endpoint in recs and not r.repeat:
                recs[r.endpoint].append(r)
        for raw in err_tail.read():
            name = str(raw.get("endpoint"))
            if name in errs:
                errs[name] += 1

    take_new()
    pos = 0
    while pos < len(order) and any(s == "asking" for s in state.values()):
        asking = [c for c in cands if state[c] == "asking"]
        cut = {c: _cut(plan, recs[c], errs[c]) for c in asking}
        step = max(cut.values())
        batch = order[pos:pos + step]
        # One run_items call per distinct cut (one call unless budgets differ): endpoints asked
        # together keep their own worker pools, as in a fixed-n run.
        groups: dict[int, dict[str, EndpointClient]] = {}
        if ask_baseline:
            groups[step] = {"baseline": clients["baseline"]}
        for c in asking:
            groups.setdefault(cut[c], {})[c] = clients[c]
        for n, group in sorted(groups.items(), reverse=True):
            _merge(outcome, await run_items(batch[:n], group, run_dir, top_k=top_k, progress=None))
        if outcome.failed:
            return outcome
        pos += len(batch)
        take_new()
        look = Look(look=len(looks) + 1, position=pos, candidates={})
        for c in cands:
            vals = per_item_values(recs["baseline"], recs[c], ids[:pos])
            # Every threshold is on the grid, so a coarser grid decides exactly as the report's does.
            st = statuses(gates, anytime_estimates(vals, gates, grid_points=LOOP_GRID))
            if state[c] == "asking":
                if verdict_known(st):
                    state[c] = "decided"
                elif pos >= len(order):
                    state[c] = "items"
                elif plan.budget is not None and _requests(recs[c], errs[c]) >= plan.budget:
                    state[c] = "budget"
            look.candidates[c] = CandidateLook(items=int(vals["flips"].size), statuses=st,
                                               state=state[c])  # type: ignore[arg-type]
        looks.append(look)
        done = LooksFile(gates=plan.gates, batch=plan.batch, budget=plan.budget, n_items=len(order), order=ids,
                         looks=looks)
        write_json_atomic(run_dir / LOOKS, done.model_dump(mode="json"))
        if progress is None:
            console.print(_look_line(look), highlight=False)
    return outcome


def _cut(plan: SequentialPlan, records: Sequence[McqRecord], errors: int) -> int:
    """Items a candidate is asked at the next look: the batch, or fewer when its budget would not
    cover the batch at the requests per item it has needed so far (at least one item while any
    request is left, so the budget is spent, never exceeded by more than one item's requests)."""
    if plan.budget is None:
        return plan.batch
    left = plan.budget - _requests(records, errors)
    return min(plan.batch, max(1, math.floor(left / _requests_per_item(records))))


def _merge(outcome: RunOutcome, got: RunOutcome) -> None:
    outcome.done += got.done
    outcome.failed.update(got.failed)
    for k, v in got.item_errors.items():
        outcome.item_errors[k] = outcome.item_errors.get(k, 0) + v


def _look_line(look: Look) -> str:
    parts = [f"{name}: {c.items} items, {c.state}" for name, c in look.candidates.items()]
    return f"look {look.look} at item {look.position}: " + "; ".join(parts)


def read_looks(run_dir: Path) -> LooksFile | None:
    path = run_dir / LOOKS
    return LooksFile.model_validate(read_json(path)) if path.exists() else None


# ---- the report -------------------------------------------------------------------------------


class SequentialCandidate(BaseModel):
    name: str
    items: int
    state: str
    requests: int
    #: Anytime-valid and fixed-n estimates of the gated metrics, by metric.
    anytime: dict[str, MetricEstimate]
    fixed: dict[str, MetricEstimate]


class SequentialReport(BaseModel):
    """What a sequential run adds to its report: items used, stop reasons, both kinds of interval,
    and the requests saved against asking every item of every endpoint."""

    n_items: int
    looks: int
    gates: list[str]
    candidates: list[SequentialCandidate]
    requests_used: int
    requests_full: int
    note: str = ANYTIME_NOTE


def sequential_report(run_dir: Path, gates: Sequence[Gate], fixed: Mapping[str, Mapping[str, MetricEstimate]]
                      ) -> SequentialReport | None:
    """The report of a sequential run from its directory (None for a fixed-n run); ``fixed`` is
    each candidate's fixed-n estimates (`servecmp.verdicts.mcq_estimates`), shown beside. A stored
    baseline's records cost this run nothing: only the candidates' requests count as used."""
    from servecmp.mcq.settings import read_manifest

    manifest = read_manifest(run_dir)
    baseline_asked = manifest.stored_baseline is None
    plan = manifest.until_decided
    looks = read_looks(run_dir)
    if plan is None or looks is None:
        return None
    ids = looks.order
    by: dict[str, list[McqRecord]] = {}
    for raw in iter_jsonl(run_dir / RECORDS):
        r = McqRecord.model_validate(raw)
        if not r.repeat:
            by.setdefault(r.endpoint, []).append(r)
    n_err: dict[str, int] = {}
    for raw in iter_jsonl(run_dir / ITEM_ERRORS):
        n_err[str(raw.get("endpoint"))] = n_err.get(str(raw.get("endpoint")), 0) + 1
    use = [*gates, *plan.parsed()]
    out = []
    last = looks.looks[-1] if looks.looks else None
    for c in manifest.candidates:
        name = c.name or "candidate"
        vals = per_item_values(by.get("baseline", []), by.get(name, []), ids)
        metrics = sorted({g.metric for g in use if g.metric in SEQUENTIAL_METRICS}, key=SEQUENTIAL_METRICS.index)
        est = anytime_estimates(vals, use)
        state = last.candidates[name].state if last is not None and name in last.candidates else "asking"
        out.append(SequentialCandidate(
            name=name, items=int(vals["flips"].size), state=state,
            requests=_requests(by.get(name, []), n_err.get(name, 0)),
            anytime={m: est[m] for m in metrics if m in est},
            fixed={m: fixed[name][m] for m in metrics if m in fixed.get(name, {})}))
    used = sum(c.requests for c in out) + (_requests(by.get("baseline", []), n_err.get("baseline", 0))
                                           if baseline_asked else 0)
    # The full fixed-n run of every endpoint, priced at the requests per item each endpoint needed here.
    names = ["baseline", *(c.name for c in out)]
    full = round(manifest.n_items * sum(_requests_per_item(by.get(n, [])) for n in names))
    return SequentialReport(n_items=manifest.n_items, looks=len(looks.looks), gates=plan.gates, candidates=out,
                            requests_used=used, requests_full=full)


def _requests_per_item(records: Sequence[McqRecord]) -> float:
    """Requests one item cost an endpoint on average (a letter item missing options in the top-k
    costs a second, echo, request; continuation tasks one)."""
    return sum(r.n_requests for r in records) / len(records) if records else 1.0


def sequential_verdicts(run_dir: Path, comparison: McqComparison, gates: Sequence[Gate]
                        ) -> tuple[list[Verdict], SequentialReport] | None:
    """Every candidate's verdict on the anytime-valid intervals, and the report block; None for a
    fixed-n run. Metrics without an anytime interval are UNAVAILABLE here: their fixed-n interval
    would not hold at a stopping time chosen by the data."""
    from servecmp.gates import decide
    from servecmp.verdicts import mcq_estimates, notes_for

    fixed = {c.name: mcq_estimates(c.summary)[0] for c in comparison.candidates}
    report = sequential_report(run_dir, gates, fixed)
    if report is None:
        return None
    several = len(comparison.candidates) > 1
    verdicts = []
    for c, seq in zip(comparison.candidates, report.candidates, strict=True):
        est: dict[str, MetricEstimate | None] = dict(seq.anytime)
        why = f"no anytime-valid interval for it: --until-decided decides only {', '.join(SEQUENTIAL_METRICS)}"
        missing = {m: why for m in METRICS if m not in SEQUENTIAL_METRICS}
        notes = [*notes_for("mcq", c.summary), f"stopped after {seq.items:,} of {report.n_items:,} items "
                 f"({seq.state}); " + ANYTIME_NOTE]
        if any(g.metric == "kl" for g in gates):
            notes.append(KL_NOTE)
        st = statuses(gates, seq.anytime)
        if seq.state == "decided" and "fail" in st and "inconclusive" in st:
            notes.append(STOPPED_AT_FAIL_NOTE)
        label = c.name if several else (c.endpoint.model or c.name)
        verdicts.append(decide(gates, est, candidate=label, missing=missing, notes=notes))
    return verdicts, report


def render_sequential(report: SequentialReport, console: Console) -> None:
    """The block the terminal report adds for a sequential run."""
    from rich.markup import escape

    from servecmp.gates import format_value

    saved = report.requests_full - report.requests_used
    share = saved / report.requests_full if report.requests_full else 0.0
    console.print(f"until decided: {report.looks} looks; gates {', '.join(report.gates)}", highlight=False)
    console.print(escape(report.note), highlight=False)
    for c in report.candidates:
        console.print(f"  {escape(c.name)}: {c.items:,} of {report.n_items:,} items used ({c.state}), "
                      f"{c.requests:,} requests", highlight=False)
        for m, a in c.anytime.items():
            info = METRICS[m]
            f = c.fixed.get(m)
            fixed = (f"[{format_value(f.low, info)}, {format_value(f.high, info)}]"
                     if f is not None and f.low is not None else "n/a")
            console.print(f"    {m}: {format_value(a.point, info)}  anytime-valid [{format_value(a.low, info)}, "
                          f"{format_value(a.high, info)}]  fixed-n {fixed}", highlight=False)
    console.print(f"requests: {report.requests_used:,} against {report.requests_full:,} for the full fixed-n run "
                  f"of every endpoint ({saved:,} saved, {share:.0%})", highlight=False)
