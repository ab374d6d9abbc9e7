"""What a gate is decided on: `MetricEstimate` (an interval and its n), Wilson bounds, items to decide."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from servecmp.gates.rules import _Z, MAX_ITEMS, Method

#: What `servecmp.gates` re-exports from this module (its public API).
__all__ = ["MetricEstimate", "gate_status", "items_to_decide", "wilson_bounds"]

# ---- estimates and the decision ---------------------------------------------------------------


class MetricEstimate(BaseModel):
    """A metric's point estimate, its 95% interval and the number of observations behind it.

    ``method`` says how the interval was made: "wilson" (a proportion; ``point`` in [0, 1]) or
    "bootstrap" (a percentile bootstrap of a mean or a difference). ``low``/``high`` are both None
    or both set with low <= high; ``point`` is None only when nothing was observed.
    """

    model_config = ConfigDict(frozen=True)

    point: float | None
    low: float | None = None
    high: float | None = None
    n: int = Field(ge=0)
    method: Method = "bootstrap"

    @model_validator(mode="after")
    def _check(self) -> MetricEstimate:
        for name in ("point", "low", "high"):
            v = getattr(self, name)
            if v is not None and not math.isfinite(v):
                raise ValueError(f"{name} must be finite, got {v}")
        if (self.low is None) != (self.high is None):
            raise ValueError("low and high must both be set or both be None")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"low ({self.low}) is above high ({self.high})")
        if self.method == "wilson" and self.point is not None and not 0 <= self.point <= 1:
            raise ValueError(f"a Wilson estimate's point must be a proportion, got {self.point}")
        return self

    @property
    def has_interval(self) -> bool:
        return self.low is not None and self.high is not None

    @classmethod
    def wilson(cls, p: Any) -> MetricEstimate:
        """From a `servecmp.metrics.stats.Proportion` or its dict (rate, low, high, n)."""
        d = _as_dict(p)
        return cls(point=d.get("rate"), low=d.get("low"), high=d.get("high"), n=d.get("n") or 0, method="wilson")

    @classmethod
    def bootstrap(cls, e: Any) -> MetricEstimate:
        """From a `servecmp.metrics.stats.Estimate` or a dict with point (or mean/diff), low, high, n."""
        d = _as_dict(e)
        point = next((d[k] for k in ("point", "mean", "diff") if k in d), None)
        return cls(point=point, low=d.get("low"), high=d.get("high"), n=d.get("n") or 0, method="bootstrap")


def _as_dict(obj: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, Mapping):
        return dict(obj)
    raise TypeError(f"expected a dataclass or a mapping, got {type(obj).__name__}")


def wilson_bounds(p: float, n: float, *, z: float = _Z) -> tuple[float, float]:
    """The Wilson score interval (no continuity correction) at observed rate ``p`` over ``n`` items;
    equals `servecmp.metrics.stats.wilson_ci` (k, n) at p = k/n, but ``p`` need not be k/n."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    z2 = z * z
    denom = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(max(p * (1 - p), 0.0) / n + z2 / (4 * n * n)) / denom
    low = 0.0 if p <= 0 else max(0.0, center - half)  # exact ends at p = 0 and 1, as scipy gives
    high = 1.0 if p >= 1 else min(1.0, center + half)
    return low, high


def items_to_decide(op: str, threshold: float, est: MetricEstimate) -> int | None:
    """Items in total that would decide an inconclusive gate if the observed value (and, for a
    bootstrap interval, its spread) held; None when the point equals the threshold, when nothing
    was observed, or beyond `MAX_ITEMS`. See the module docstring for both methods."""
    if est.point is None or est.n == 0 or est.point == threshold:
        return None
    if est.method == "anytime":
        # A confidence sequence does not shrink as sqrt(n); no forecast is offered for it.
        return None
    if est.method == "wilson":
        return _wilson_items(op, threshold, est.point, est.n)
    if est.low is None or est.high is None:
        return None
    d = abs(est.point - threshold)
    hw = est.high - est.point if threshold > est.point else est.point - est.low
    if hw < d:  # the observed interval already decides: nothing more needed
        return est.n
    ratio = est.n * (hw / d) ** 2
    if ratio >= MAX_ITEMS:
        return None
    n = math.floor(ratio) + 1
    # Guard against rounding in the closed form: make n the smallest with hw*sqrt(n_obs/n) < d.
    while hw * math.sqrt(est.n / n) >= d:
        n += 1
    while n > 1 and hw * math.sqrt(est.n / (n - 1)) < d:
        n -= 1
    return n


def _wilson_items(op: str, threshold: float, p: float, n_obs: int) -> int | None:
    def decided(n: int) -> bool:
        return gate_status(op, threshold, *wilson_bounds(p, n)) != "inconclusive"

    lo, hi = 0, 1  # invariant: lo undecided (0 stands for "no items"), hi the candidate answer
    while not decided(hi):
        lo = hi
        hi *= 2
        if hi > MAX_ITEMS:
            return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if decided(mid):
            hi = mid
        else:
            lo = mid
    return max(hi, n_obs + 1)


def gate_status(op: str, threshold: float, low: float, high: float) -> Literal["pass", "fail", "inconclusive"]:
    """Decide one gate from a closed interval [low, high] (rules in the module docstring)."""
    if op == "<=":
        if high <= threshold:
            return "pass"
        return "fail" if low > threshold else "inconclusive"
    if op == ">=":
        if low >= threshold:
            return "pass"
        return "fail" if high < threshold else "inconclusive"
    raise ValueError(f"unknown operator {op!r}")
