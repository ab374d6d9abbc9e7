"""The decision: a gate's status on its interval, one `Verdict` per candidate, the exit code, chance level."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, Field

from servecmp.errors import EXIT_GATE_FAILED, EXIT_INCONCLUSIVE, EXIT_OK
from servecmp.gates.estimates import MetricEstimate, gate_status, items_to_decide
from servecmp.gates.rules import (
    MAX_ITEMS,
    METRICS,
    Gate,
    GateStatus,
    Method,
    MetricInfo,
    Op,
    OverallStatus,
    Unit,
    format_threshold,
    format_value,
)

#: What `servecmp.gates` re-exports from this module (its public API).
__all__ = ["GateResult", "Verdict", "at_chance", "chance_note", "chance_sentence", "combine", "decide"]


class GateResult(BaseModel):
    """One gate's outcome. ``estimate``/``low``/``high`` are in the metric's unit (fractions, not %)."""

    metric: str
    op: Op
    threshold: float
    unit: Unit
    estimate: float | None
    low: float | None
    high: float | None
    n: int | None
    method: Method | None
    status: GateStatus
    items_to_decide: int | None
    reason: str

    @property
    def info(self) -> MetricInfo:
        return METRICS[self.metric]

    @property
    def rule(self) -> str:
        return f"{self.op} {format_threshold(self.threshold, self.info)}"

    @property
    def never(self) -> bool:
        """Inconclusive whatever the number of items: the estimate sits exactly on the threshold."""
        return self.status == "inconclusive" and self.estimate is not None and self.estimate == self.threshold \
            and self.low is not None


class Verdict(BaseModel):
    """Every gate of one candidate, the overall status and the exit code it implies."""

    candidate: str | None = None
    gates: list[GateResult]
    status: OverallStatus
    exit_code: int
    notes: list[str] = Field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(("pass", "fail", "inconclusive", "unavailable"), 0)
        for g in self.gates:
            out[g.status] += 1
        return out

    @property
    def summary(self) -> str:
        """One line: ``FAIL (exit 1): 1 of 2 gates failed``."""
        c = self.counts
        total = len(self.gates)
        if total == 0:
            detail = "no gates"
        elif self.status == "pass":
            detail = f"all {total} gates passed" if total > 1 else "the gate passed"
        elif self.status == "fail":
            detail = f"{c['fail']} of {total} gates failed"
        else:
            undecided = c["inconclusive"] + c["unavailable"]
            detail = f"{undecided} of {total} gates undecided, none failed"
        return f"{self.status.upper()} (exit {self.exit_code}): {detail}"


def _overall(statuses: Iterable[str]) -> tuple[OverallStatus, int]:
    s = set(statuses)
    if "fail" in s:
        return "fail", EXIT_GATE_FAILED
    if s & {"inconclusive", "unavailable"}:
        return "inconclusive", EXIT_INCONCLUSIVE
    return "pass", EXIT_OK


def decide(gates: Sequence[Gate], estimates: Mapping[str, MetricEstimate | None], *,
           candidate: str | None = None, missing: Mapping[str, str] | None = None,
           notes: Sequence[str] = ()) -> Verdict:
    """Evaluate every gate against ``estimates`` (metric name → estimate; an absent key or None means
    the run did not measure it: UNAVAILABLE, with ``missing[metric]`` or the registry's reason).
    ``candidate`` labels the verdict; ``notes`` (e.g. `chance_note`) are carried into renderings."""
    missing = missing or {}
    results: list[GateResult] = []
    for g in gates:
        info = g.info
        est = estimates.get(g.metric)
        base: dict[str, Any] = {"metric": g.metric, "op": g.op, "threshold": g.threshold, "unit": info.unit}
        if est is None:
            results.append(GateResult(**base, estimate=None, low=None, high=None, n=None, method=None,
                                      status="unavailable", items_to_decide=None,
                                      reason=f"not measured: {missing.get(g.metric, info.missing)}"))
            continue
        base.update(estimate=est.point, low=est.low, high=est.high, n=est.n, method=est.method)
        if est.point is None or est.n == 0:
            results.append(GateResult(**base, status="inconclusive", items_to_decide=None,
                                      reason="no items measured"))
            continue
        if est.low is None or est.high is None:
            results.append(GateResult(**base, status="inconclusive", items_to_decide=None,
                                      reason="no interval: a point estimate alone does not decide"))
            continue
        status = gate_status(g.op, g.threshold, est.low, est.high)
        thr = format_threshold(g.threshold, info)
        interval = f"[{format_value(est.low, info)}, {format_value(est.high, info)}]"
        items = None
        if status == "pass":
            reason = f"95% interval {interval} is entirely {g.op} {thr}"
        elif status == "fail":
            reason = f"95% interval {interval} is entirely {'>' if g.op == '<=' else '<'} {thr}"
        else:
            reason = f"95% interval {interval} contains {thr}"
            items = items_to_decide(g.op, g.threshold, est)
            if est.point == g.threshold:
                reason += "; never: estimate equals threshold"
            elif est.method == "anytime":
                reason += " (anytime-valid interval)"
            elif items is None:
                reason += f"; more than {MAX_ITEMS:,} items would be needed"
            else:
                reason += f"; about {items:,} items in total would decide it if the estimate held"
        results.append(GateResult(**base, status=status, items_to_decide=items, reason=reason))
    status, code = _overall(r.status for r in results)
    return Verdict(candidate=candidate, gates=results, status=status, exit_code=code, notes=list(notes))


def combine(verdicts: Mapping[str, Verdict] | Iterable[Verdict]) -> int:
    """Exit code over several candidates: EXIT_OK only when every verdict passes, EXIT_GATE_FAILED
    when any fails, else EXIT_INCONCLUSIVE. No verdicts at all: EXIT_OK."""
    vs = list(verdicts.values()) if isinstance(verdicts, Mapping) else list(verdicts)
    return _overall(v.status for v in vs)[1]


# ---- chance level -----------------------------------------------------------------------------


def at_chance(acc_low: float | None, acc_high: float | None, n_options: int) -> bool:
    """True when the baseline's accuracy interval [acc_low, acc_high] contains chance, 1/n_options
    (inclusive). False when the interval is unknown. ValueError when n_options < 2."""
    if n_options < 2:
        raise ValueError(f"need at least 2 options, got {n_options}")
    if acc_low is None or acc_high is None:
        return False
    return acc_low <= 1 / n_options <= acc_high


def chance_sentence(n_options: int) -> str:
    return (f"the baseline's accuracy interval contains chance ({100 / n_options:.1f}% for {n_options} options): "
            "flips there mostly measure noise among guesses")


def chance_note(acc_low: float | None, acc_high: float | None, n_options: int) -> str | None:
    """`chance_sentence` when `at_chance`, else None."""
    return chance_sentence(n_options) if at_chance(acc_low, acc_high, n_options) else None
