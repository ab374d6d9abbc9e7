"""Verdicts and CI gates: may the candidate replace its baseline, by rules the user wrote down?

Pure decision layer: expressions in, estimates in, a `Verdict` (pydantic) out, plus its Markdown and
terminal renderings. No I/O, no knowledge of run directories or summary layouts; the commands turn
their summaries into `MetricEstimate`s and call this module.

Typical use::

    gates = gates_for("mcq", cli=["flips<=5%", "kl<=0.01"], table=config_gate_table)
    verdict = decide(gates, {"flips": MetricEstimate.wilson(summary_flips_rate),
                             "kl": MetricEstimate.bootstrap(summary_option_kl_mean_ci)},
                     candidate="w4a16")
    render_verdict(console, verdict)
    Path(summary_md).write_text(verdict_markdown(verdict, "servecmp mcq gates"))
    raise SystemExit(verdict.exit_code)          # or combine(verdicts) over several candidates

API
---
``METRICS: dict[str, MetricInfo]``
    Every gateable metric: run kind ("mcq", "mtbench", "shadow"), unit ("fraction", "nats",
    "points"), one-line description, the range a threshold must lie in, and the reason shown when a
    run does not measure it. ``MetricInfo.rate`` is True for fraction metrics (shares and
    differences of shares): they are shown as percentages and their VALUE may end in ``%``.
``metric_names(kind) -> list[str]``
``parse_gate(expr, kind) -> Gate`` and ``parse_gates(exprs, kind) -> list[Gate]``
``GateConfig`` / ``gates_from_table(table, kind, origin=...) -> list[Gate]``
``gates_for(kind, cli=(), table=None, origin=...) -> list[Gate]``
``MetricEstimate(point, low, high, n, method)`` with ``MetricEstimate.wilson(proportion)`` and
    ``MetricEstimate.bootstrap(estimate)`` (accept the `servecmp.metrics.stats` dataclasses or their
    JSON dicts).
``gate_status(op, threshold, low, high) -> "pass" | "fail" | "inconclusive"``
``items_to_decide(op, threshold, estimate) -> int | None`` and ``wilson_bounds(p, n) -> (low, high)``
``decide(gates, estimates, *, candidate=None, missing=None, notes=()) -> Verdict``
``combine(verdicts) -> int`` (exit code over several candidates)
``verdict_markdown(verdicts, title) -> str`` and ``render_verdict(console, verdict) -> None``
``format_value(x, info)`` / ``format_threshold(t, info)``: numbers in a metric's display unit
``at_chance(acc_low, acc_high, n_options) -> bool``, ``chance_sentence(n_options) -> str`` and
    ``chance_note(acc_low, acc_high, n_options) -> str | None``

Expressions
-----------
``METRIC<=VALUE`` or ``METRIC>=VALUE``; spaces are allowed around the parts, the metric name is
case-insensitive. VALUE is a finite decimal number (``0.05``, ``-0.2``, ``1e-3``); on fraction
metrics it may end in ``%``, meaning VALUE/100 (``flips<=5%`` is ``flips<=0.05``). ``%`` on a nats
or points metric is an error, and so is a threshold outside the metric's range (``flips<=5`` would
be 500%: write ``5%`` or ``0.05``). Every bad expression raises `servecmp.errors.UserError` with one
line saying what is wrong and listing the metric names valid for the run kind.

The ``[gate]`` table of servecmp.toml
-------------------------------------
One key per run kind, each a list of expressions (a single string is accepted too)::

    [gate]
    mcq = ["flips<=5%", "kl<=0.01", "delta_acc>=-1%"]
    mtbench = ["delta_mtbench>=-0.25"]
    shadow = ["answer_differs<=2%"]

Keyed by run kind, not by metric, so that one metric can carry two rules (a band such as
``delta_acc>=-1%`` and ``delta_acc<=1%``) and the file uses the very syntax of ``--gate``.
`GateConfig` is that table as a pydantic section (unknown keys are errors), ready to become
``Config.gate``. `gates_for` applies the project's precedence: ``--gate`` flags given on the command
line replace the file's gates for that kind; otherwise the file's apply.

Decision
--------
Each gate compares the metric's 95% interval [low, high] (the one the report prints: Wilson for
rates, percentile bootstrap for means and differences) with the threshold t, as a closed interval:

- ``<=``: PASS when high <= t (every value in the interval satisfies the rule); FAIL when low > t
  (none does); otherwise INCONCLUSIVE. So high == t passes and low == t does not fail.
- ``>=``: PASS when low >= t; FAIL when high < t; otherwise INCONCLUSIVE. So low == t passes and
  high == t does not fail.

Comparisons are exact float comparisons. A point estimate alone never decides: an estimate without
an interval is INCONCLUSIVE ("no interval"), and one over zero items is INCONCLUSIVE ("no items").
A gate whose metric the run did not measure at all (no `MetricEstimate` for it, e.g. ``topk_kl``
when the endpoints returned no top-k logprobs, ``flips_excess`` without a noise floor) is
UNAVAILABLE, with the reason from ``missing`` or the registry's default. UNAVAILABLE is not an
error: it counts as inconclusive for the exit code, so a gate that cannot be evaluated never passes,
and a config shared by several candidates does not break on the one whose endpoint lacks top-k.

Verdict and exit codes (`servecmp.errors`): EXIT_OK (0) when every gate passes (also when there are
no gates), EXIT_GATE_FAILED (1) when any gate fails, EXIT_INCONCLUSIVE (4) when none fails but one
is inconclusive or unavailable. `combine` applies the same rule across candidates: 0 only when all
pass, 1 if any fails, else 4.

Items to decide
---------------
For an INCONCLUSIVE gate with an interval, an estimate of how many items IN TOTAL (in the unit of
``n``: items, games, requests) would decide it if the observed value and spread held:

- Wilson (``method="wilson"``): the smallest n at which the Wilson 95% interval at the observed rate
  p̂ (the continuous formula, p̂ need not be k/n) decides the gate under the rules above, i.e. lies
  entirely on p̂'s side of the threshold. Found by doubling then binary search over n (the Wilson
  bounds at a fixed p̂ tighten monotonically towards p̂ as n grows). At least ``n + 1``. Since the
  Wilson interval is {p : |p̂ − p| <= z·sqrt(p(1 − p)/n)}, a bound reaches t exactly at
  n* = z²·t(1 − t)/(p̂ − t)², so the answer is ceil(n*) for a PASS-side gate (the bound may touch
  t) and floor(n*) + 1 for a FAIL-side one; the tests check the search against this.
- Bootstrap (``method="bootstrap"``): the half-width on the threshold's side (hw = high − point if
  the threshold is above the point, point − low if below) shrinks as sqrt(n_obs / n); the answer is
  the smallest n with hw · sqrt(n_obs / n) < |point − threshold|, i.e. floor(n_obs · (hw/d)²) + 1.

When the point equals the threshold no number of items decides: ``items_to_decide`` is None and the
reason says "never: estimate equals threshold". Beyond `MAX_ITEMS` the answer is None as well.

Chance level
------------
`at_chance` is True when the baseline's accuracy interval contains 1/n_options (inclusive);
`chance_note` gives the sentence the report prints then ("the baseline's accuracy interval contains
chance (25.0% for 4 options): flips there mostly measure noise among guesses"). Pass it to `decide`
as a note to carry it into the verdict's renderings.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from statistics import NormalDist
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from rich.console import Console
from rich.padding import Padding
from rich.text import Text

from servecmp.errors import EXIT_GATE_FAILED, EXIT_INCONCLUSIVE, EXIT_OK, UserError

Kind = Literal["mcq", "mtbench", "shadow", "gen"]
Op = Literal["<=", ">="]
Unit = Literal["fraction", "nats", "points", "ratio"]
Method = Literal["wilson", "bootstrap", "anytime"]
GateStatus = Literal["pass", "fail", "inconclusive", "unavailable"]
OverallStatus = Literal["pass", "fail", "inconclusive"]

KINDS: tuple[str, ...] = ("mcq", "mtbench", "shadow", "gen")
#: Confidence of every interval a gate reads, and of the Wilson intervals `items_to_decide` solves.
CONFIDENCE = 0.95
_Z = NormalDist().inv_cdf(0.5 + CONFIDENCE / 2)
#: `items_to_decide` gives up (None) beyond this many items.
MAX_ITEMS = 10**12


class MetricInfo(BaseModel):
    """One gateable metric."""

    model_config = ConfigDict(frozen=True)

    kind: Kind
    unit: Unit
    description: str
    #: Other run kinds that measure the same concept under the same name (one flag, one concept).
    also: tuple[Kind, ...] = ()
    #: The range a threshold must lie in (inclusive); None for unbounded.
    min_value: float | None = None
    max_value: float | None = None
    #: Why a run may lack it; shown when a gate names it and the run did not measure it.
    missing: str = "not measured in this run"

    @property
    def kinds(self) -> tuple[Kind, ...]:
        return (self.kind, *self.also)

    @property
    def rate(self) -> bool:
        """A share of items (or a difference of shares): shown as a percentage, VALUE may end in %."""
        return self.unit == "fraction"

    @property
    def signed(self) -> bool:
        """Can be negative (a difference): estimates are printed with a sign."""
        return self.min_value is None or self.min_value < 0


_NO_FLOOR = "no noise floor was measured (a second replica of the baseline)"

METRICS: dict[str, MetricInfo] = {
    # --- mcq
    "flips": MetricInfo(kind="mcq", also=("gen",), unit="fraction", min_value=0, max_value=1,
                        description="flip rate: share of items whose correctness changed (correct↔wrong)"),
    "c2w": MetricInfo(kind="mcq", also=("gen",), unit="fraction", min_value=0, max_value=1,
                      description="share of items the baseline got right and the candidate wrong"),
    "changes": MetricInfo(kind="mcq", unit="fraction", min_value=0, max_value=1,
                          description="answer-change rate: share of items whose chosen option changed"),
    "kl": MetricInfo(kind="mcq", unit="nats", min_value=0,
                     description="mean KL(baseline ‖ candidate) over the answer options"),
    "topk_kl": MetricInfo(kind="mcq", unit="nats", min_value=0,
                          description="mean next-token KL at the answer, a lower bound from top-k logprobs",
                          missing="the endpoints returned no top-k logprobs"),
    "topk_kl_tight": MetricInfo(kind="mcq", unit="nats", min_value=0,
                                description="mean next-token KL at the answer, the tight top-k estimate (not a "
                                            "bound: for a <= rule it does not understate as topk_kl does)",
                                missing="the endpoints returned no top-k logprobs, or the summary predates it"),
    "kl_cb": MetricInfo(kind="mcq", unit="nats", min_value=0,
                        description="mean KL(candidate ‖ baseline) over the answer options",
                        missing="the summary predates both KL directions (version 2)"),
    "js": MetricInfo(kind="mcq", unit="nats", min_value=0,
                     description="mean Jensen-Shannon divergence over the answer options",
                     missing="the summary predates both KL directions (version 2)"),
    "delta_acc": MetricInfo(kind="mcq", also=("gen",), unit="fraction", min_value=-1, max_value=1,
                            description="candidate − baseline accuracy"),
    "flips_excess": MetricInfo(kind="mcq", unit="fraction", min_value=-1, max_value=1,
                               description="candidate's flip rate minus the noise floor's", missing=_NO_FLOOR),
    "kl_excess": MetricInfo(kind="mcq", unit="nats",
                            description="candidate's mean option KL minus the noise floor's", missing=_NO_FLOOR),
    # --- mtbench
    "delta_mtbench": MetricInfo(kind="mtbench", unit="points", min_value=-9, max_value=9,
                                description="candidate − baseline mean MT-Bench score (1–10 scale)",
                                missing="no single-answer grading in this run"),
    "pairwise_loss": MetricInfo(kind="mtbench", unit="fraction", min_value=0, max_value=1,
                                description="share of pairwise games the candidate loses",
                                missing="no pairwise grading in this run"),
    # --- shadow
    "answer_differs": MetricInfo(kind="shadow", unit="fraction", min_value=-1, max_value=1,
                                 description="answer-differs rate, minus the noise floor's when a secondary ran"),
    "tf_kl": MetricInfo(kind="shadow", also=("gen",), unit="nats", min_value=0,
                        description="teacher-forced KL per token (shadow: top-k bound; gen: mean over items of "
                                    "the tight top-k estimate along the baseline's answer)",
                        missing="no teacher-forced scoring in this run"),
    "top1_disagree": MetricInfo(kind="shadow", also=("mcq",), unit="fraction", min_value=0, max_value=1,
                                description="share of positions where the two most likely tokens differ (shadow: "
                                            "teacher-forced tokens; mcq: the answer position, 1 − llama.cpp's "
                                            "Same top p)",
                                missing="no teacher-forced scoring (shadow) or no top-k logprobs (mcq) in this run"),
    # --- gen
    "length_ratio": MetricInfo(kind="gen", unit="ratio", min_value=0,
                               description="mean completion length, candidate / baseline (tokens)"),
    "no_answer": MetricInfo(kind="gen", unit="fraction", min_value=0, max_value=1,
                            description="share of the candidate's generations with no extractable answer"),
    "identical": MetricInfo(kind="gen", unit="fraction", min_value=0, max_value=1,
                            description="share of items whose greedy outputs are identical",
                            missing="a sampled run (identical outputs are measured on greedy runs)"),
}


def metric_names(kind: str) -> list[str]:
    """The metric names a run of ``kind`` can gate on, in registry order. ValueError on a bad kind."""
    if kind not in KINDS:
        raise ValueError(f"unknown run kind {kind!r}; expected one of {', '.join(KINDS)}")
    return [name for name, info in METRICS.items() if kind in info.kinds]


# ---- expressions -------------------------------------------------------------------------------


class Gate(BaseModel):
    """One rule: ``metric op threshold`` for a run of ``kind``. Build it with `parse_gate`."""

    model_config = ConfigDict(frozen=True)

    kind: Kind
    metric: str
    op: Op
    threshold: float

    @property
    def info(self) -> MetricInfo:
        return METRICS[self.metric]

    @property
    def expr(self) -> str:
        """Canonical expression, parseable again: ``flips<=0.05``."""
        return f"{self.metric}{self.op}{self.threshold:.12g}"

    @property
    def rule(self) -> str:
        """The rule for humans, threshold in the metric's display unit: ``<= 5%``, ``<= 0.01 nats``."""
        return f"{self.op} {format_threshold(self.threshold, self.info)}"


_EXPR = re.compile(r"^(?P<metric>[^<>=!≤≥]*)(?P<op>[<>=!≤≥]*)(?P<value>.*)$", re.DOTALL)
_NUMBER = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")
_NON_FINITE = re.compile(r"^[+-]?(?:inf|infinity|nan)$", re.IGNORECASE)


def _valid(kind: str) -> str:
    return f"valid metrics for {kind}: {', '.join(metric_names(kind))}"


def parse_gate(expr: str, kind: str) -> Gate:
    """Parse ``METRIC<=VALUE`` / ``METRIC>=VALUE`` for a run of ``kind`` (see the module docstring).

    UserError (one line naming the problem and the valid metrics) on any bad expression; ValueError
    when ``kind`` itself is not a run kind (a programming error).
    """
    valid = _valid(kind)
    text = str(expr).strip()

    def bad(problem: str) -> UserError:
        return UserError(f"gate {text!r}: {problem}; {valid}")

    if not text:
        raise UserError(f"empty gate expression: expected METRIC<=VALUE or METRIC>=VALUE; {valid}")
    m = _EXPR.match(text)
    if m is None:  # pragma: no cover - the pattern matches any text
        raise bad("expected METRIC<=VALUE or METRIC>=VALUE")
    metric, op, value = m["metric"].strip().lower(), m["op"], m["value"].strip()
    if not op:
        raise bad("no comparison: expected METRIC<=VALUE or METRIC>=VALUE")
    if op not in ("<=", ">="):
        raise bad(f"{op!r} is not a comparison servecmp knows: use <= or >=")
    if not metric:
        raise bad("no metric before the comparison")
    if metric not in METRICS:
        raise bad(f"unknown metric {metric!r}")
    info = METRICS[metric]
    if kind not in info.kinds:
        raise bad(f"{metric} is a metric of {' and '.join(info.kinds)} runs, not of {kind} runs")
    if not value:
        raise bad(f"no value after {op}")
    percent = value.endswith("%")
    number = value[:-1].rstrip() if percent else value
    if _NON_FINITE.match(number):
        raise bad(f"the value {value!r} is not finite")
    if not _NUMBER.match(number):
        raise bad(f"the value {value!r} is not a number")
    threshold = float(number)
    if not math.isfinite(threshold):
        raise bad(f"the value {value!r} is not finite")
    if percent:
        if not info.rate:
            raise bad(f"'%' applies to fraction metrics only; {metric} is in {info.unit}")
        threshold /= 100
    lo, hi = info.min_value, info.max_value
    if (lo is not None and threshold < lo) or (hi is not None and threshold > hi):
        shown = format_threshold(threshold, info)
        span = f"[{format_threshold(lo, info) if lo is not None else '-inf'}, " \
               f"{format_threshold(hi, info) if hi is not None else 'inf'}]"
        as_pct = threshold / 100
        fits_as_pct = (lo is None or as_pct >= lo) and (hi is None or as_pct <= hi)
        hint = f" (write {number}% for a percentage)" if info.rate and not percent and fits_as_pct else ""
        raise bad(f"threshold {shown} is outside {metric}'s range {span}{hint}")
    return Gate(kind=kind, metric=metric, op=op, threshold=threshold)  # type: ignore[arg-type]


def parse_gates(exprs: Iterable[str], kind: str) -> list[Gate]:
    """`parse_gate` over several expressions, in order."""
    return [parse_gate(e, kind) for e in exprs]


class GateConfig(BaseModel):
    """The ``[gate]`` table of servecmp.toml: per run kind, a list of expressions (or one string)."""

    model_config = ConfigDict(extra="forbid")

    mcq: list[str] = Field(default_factory=list)
    mtbench: list[str] = Field(default_factory=list)
    shadow: list[str] = Field(default_factory=list)
    gen: list[str] = Field(default_factory=list)

    @field_validator("mcq", "mtbench", "shadow", "gen", mode="before")
    @classmethod
    def _one_string(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


def gates_from_table(table: Mapping[str, Any] | GateConfig | None, kind: str, *,
                     origin: str = "servecmp.toml") -> list[Gate]:
    """The gates for ``kind`` from a ``[gate]`` table (the parsed TOML mapping or a `GateConfig`).

    UserError (one line, prefixed with ``origin`` and the key) on an unknown key, a value that is
    not a list of strings, or a bad expression. ValueError on a bad ``kind``.
    """
    metric_names(kind)  # validates kind
    if table is None:
        return []
    if isinstance(table, GateConfig):
        cfg = table
    else:
        try:
            cfg = GateConfig.model_validate(dict(table))
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first["loc"])
            if first["type"] == "extra_forbidden":
                raise UserError(f"{origin}: gate.{loc}: unknown run kind; the [gate] table takes "
                                f"{', '.join(KINDS)}") from exc
            raise UserError(f"{origin}: gate.{loc}: {first['msg']} (expected a list of expressions such as "
                            f"\"flips<=5%\")") from exc
    out: list[Gate] = []
    for i, expr in enumerate(getattr(cfg, kind)):
        try:
            out.append(parse_gate(expr, kind))
        except UserError as exc:
            raise UserError(f"{origin}: gate.{kind}[{i}]: {exc}") from exc
    return out


def gates_for(kind: str, cli: Sequence[str] = (), table: Mapping[str, Any] | GateConfig | None = None, *,
              origin: str = "servecmp.toml") -> list[Gate]:
    """The gates a command of ``kind`` applies: the ``--gate`` expressions when any were given (they
    replace the file's, as every CLI flag overrides its file value), else the ``[gate]`` table's."""
    if cli:
        return parse_gates(cli, kind)
    return gates_from_table(table, kind, origin=origin)


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


# ---- rendering --------------------------------------------------------------------------------


def format_value(x: float | None, info: MetricInfo) -> str:
    """An estimate in the metric's display unit: ``6.00%``, ``0.0123``, ``-0.25``; signed metrics
    carry a sign."""
    if x is None:
        return "–"
    sign = "+" if info.signed else ""
    if info.unit == "fraction":
        return f"{100 * x:{sign}.2f}%"
    if info.unit == "nats":
        return f"{x:{sign}.3g}"
    return f"{x:{sign}.2f}"


def format_threshold(t: float, info: MetricInfo) -> str:
    """A threshold as written, in display units: ``5%``, ``0.01 nats``, ``-0.25 points``."""
    if info.unit == "fraction":
        return f"{100 * t:.6g}%"
    return f"{t:.6g} {info.unit}"


def _estimate_text(r: GateResult) -> str:
    if r.estimate is None:
        return "–"
    info = r.info
    text = format_value(r.estimate, info)
    if r.low is not None and r.high is not None:
        text += f" [{format_value(r.low, info)}, {format_value(r.high, info)}]"
    return text


def _items_text(r: GateResult) -> str:
    if r.never:
        return "never"
    return "–" if r.items_to_decide is None else f"{r.items_to_decide:,}"


def _needs_note(r: GateResult) -> bool:
    return r.status == "unavailable" or (r.status == "inconclusive" and r.low is None) or r.never


def verdict_markdown(verdicts: Verdict | Sequence[Verdict], title: str) -> str:
    """Markdown for a CI job summary (``--summary-md FILE``): a heading, per candidate a table (metric,
    rule, estimate [95% interval], n, status, items to decide) with notes, and a bold overall line.
    Several verdicts get one sub-heading each (their ``candidate``) and one combined overall line."""
    vs = [verdicts] if isinstance(verdicts, Verdict) else list(verdicts)
    lines = [f"## {title}", ""]
    for i, v in enumerate(vs):
        if len(vs) > 1:
            lines += [f"### {v.candidate or f'candidate {i + 1}'}", ""]
        if v.gates:
            lines += ["| metric | rule | estimate [95% interval] | n | status | items to decide |",
                      "|---|---|---|---:|---|---:|"]
            for r in v.gates:
                n = "–" if r.n is None else f"{r.n:,}"
                lines.append(f"| `{r.metric}` | {r.rule} | {_estimate_text(r)} | {n} | {r.status.upper()} "
                             f"| {_items_text(r)} |")
            lines.append("")
        else:
            lines += ["No gates.", ""]
        extra = [f"`{r.metric}`: {r.reason}" for r in v.gates if _needs_note(r)] + list(v.notes)
        if extra:
            lines += [f"- {t}" for t in extra] + [""]
        if len(vs) > 1:
            lines += [f"**{v.candidate or f'candidate {i + 1}'}: {v.summary}**", ""]
    if len(vs) == 1:
        lines.append(f"**Overall: {vs[0].summary}**")
    else:
        code = combine(vs)
        word = {EXIT_OK: "PASS", EXIT_GATE_FAILED: "FAIL"}.get(code, "INCONCLUSIVE")
        failed = sum(v.status == "fail" for v in vs)
        undecided = sum(v.status == "inconclusive" for v in vs)
        lines.append(f"**Overall: {word} (exit {code}): {len(vs)} candidates, {failed} failed, "
                     f"{undecided} undecided**")
    return "\n".join(lines) + "\n"


_STYLE = {"pass": "green", "fail": "red", "inconclusive": "yellow", "unavailable": "dim"}


def _follow_up(r: GateResult) -> str | None:
    """The second terminal line of a gate, when there is more to say than its numbers."""
    if r.status == "unavailable" or (r.status == "inconclusive" and (r.low is None or r.estimate is None)):
        return r.reason
    if r.never:
        return "never decided by more items: the estimate equals the threshold"
    if r.status == "inconclusive":
        if r.items_to_decide is None:
            return f"more than {MAX_ITEMS:,} items would be needed to decide"
        return f"about {r.items_to_decide:,} items in total would decide it if the estimate held"
    return None


def render_verdict(console: Console, verdict: Verdict) -> None:
    """A compact block for the terminal: a heading, one line per gate (status, metric and rule,
    estimate [95% interval], n), under an undecided gate an indented line saying why or how many
    items would decide it, the notes, and the overall line. Fits 80 columns for ordinary values."""
    head = "gates (95% intervals)"
    if verdict.candidate:
        head += f" — {verdict.candidate}"
    console.print(Text(head, style="bold"))
    if not verdict.gates:
        console.print(Padding(Text("no gates"), (0, 0, 0, 2), expand=False))
    rules = [f"{r.metric} {r.rule}" for r in verdict.gates]
    ests = [_estimate_text(r) for r in verdict.gates]
    w_rule = max((len(x) for x in rules), default=0)
    w_est = max((len(x) for x in ests), default=0)
    for r, rule, estimate in zip(verdict.gates, rules, ests, strict=True):
        line = Text("  ")
        line.append(f"{r.status.upper():<12}", style=_STYLE[r.status])
        rest = f" {rule:<{w_rule}}  {estimate:<{w_est}}"
        if r.n is not None:
            rest += f"  n={r.n:,}"
        line.append(rest.rstrip())
        console.print(line)
        follow = _follow_up(r)
        if follow:
            console.print(Padding(Text(follow, style="dim"), (0, 0, 0, 15), expand=False))
    for note in verdict.notes:
        console.print(Padding(Text(note, style="yellow"), (0, 0, 0, 2), expand=False))
    console.print(Text(f"verdict: {verdict.summary}", style=f"bold {_STYLE[verdict.status]}"))
