"""Gate rules: the gateable metrics (`METRICS`), expressions and their parsing, the [gate] table."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from statistics import NormalDist
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from servecmp.errors import UserError

#: What `servecmp.gates` re-exports from this module (its public API).
__all__ = [
    "CONFIDENCE", "KINDS", "MAX_ITEMS", "METRICS", "Gate", "GateConfig", "GateStatus", "Kind", "Method", "MetricInfo",
    "Op", "OverallStatus", "Unit", "format_threshold", "format_value", "gates_for", "gates_from_table",
    "metric_names", "parse_gate", "parse_gates",
]

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
