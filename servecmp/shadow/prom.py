"""Prometheus metrics of `shadow serve` / `shadow collect` (``GET /metrics``), names ``servecmp_shadow_*``.

Nothing is counted twice: the event counters are the run's `Counters` (the ones stored in the
database), and the error counts and histograms live in `Telemetry`, a pair of flat arrays that sit in
shared memory when comparisons run in the mirror process. A custom collector reads both at scrape
time, in a per-app ``CollectorRegistry`` (never the global one, so several apps in one process and
the tests do not clash). The request path pays one bisect and two array increments per request.

Label cardinality is fixed: ``route`` is one of `ROUTES` ("other" for anything else), ``target``
candidate or secondary, ``error`` one of `ERROR_CODES`, ``reason`` one of the drop reasons, and the
model pair (``baseline_model``, ``candidate_model``) is constant for a process.

Every series a process can have exists from the start (at zero), so rates and alerts work before the
first event.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from servecmp.shadow.store import COUNTER_NAMES, ROUTE_KINDS, Counters, PairRecord

PREFIX = "servecmp_shadow"
#: Route label values: the mirrored paths, then "other" (what `Counters.by_route` calls "other").
KIND_ROUTE = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
ROUTES = (*(KIND_ROUTE[k] for k in ROUTE_KINDS), "other")
TARGETS = ("candidate", "secondary")
ERROR_CODES = ("timeout", "connect", "dropped", "transport", "garbage", "too_large", "http_4xx", "http_5xx",
               "other")

#: name -> (help, buckets, labels beyond the model pair). Buckets are upper bounds ("le").
HISTOGRAMS: dict[str, tuple[str, tuple[float, ...], tuple[str, ...]]] = {
    "added_latency_seconds": (
        "Time the proxy spends on a request outside waiting for the primary (before sending it, and "
        "between the primary's last body byte, or headers when streamed, and handing the response on)",
        (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
        ("route",),
    ),
    "edit_distance": (
        "Normalised token edit distance between the primary's answer and the target's, per request",
        (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0),
        ("route", "target"),
    ),
    "kl_nats": (
        "Teacher-forced KL per token (top-k lower bound, nats), the request's mean over answer positions",
        (0.0, 0.0001, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0),
        ("route", "target"),
    ),
    "top1_agreement": (
        "Teacher-forced top-1 agreement: share of answer positions with the same most likely token",
        (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 1.0),
        ("route", "target"),
    ),
}
#: PairRecord field measured by each divergence histogram.
MEASURE_FIELD = {"edit_distance": "edit_distance", "kl_nats": "kl_mean", "top1_agreement": "top1_agree"}

_HELP = {
    "requests": "Requests on the mirrored paths",
    "sampled_out": "Requests not mirrored because of the sampling rate",
    "mirrored": "Requests compared (once per request, whatever the number of targets)",
    "recorded": "Pair rows committed to the shadow database (counted after the commit)",
    "client_disconnected": "Clients that left before the primary finished (not compared)",
    "primary_unreachable": "Requests the primary could not be reached for (the client got 502/504)",
    "primary_dropped": "Primary responses that broke after they had started",
    "mirror_failures": "Comparisons that raised (logged without payload)",
}


def _series(labels: tuple[str, ...]) -> list[tuple[str, ...]]:
    if labels == ("route",):
        return [(r,) for r in ROUTES]
    return [(r, t) for r in ROUTES for t in TARGETS]


@dataclass(frozen=True)
class _Layout:
    """Where each histogram series and error count sits in the two flat arrays."""

    hist_int: dict[str, int]  # histogram -> first int slot (series x (buckets + 1, the +Inf))
    hist_float: dict[str, int]  # histogram -> first float slot (one sum per series)
    errors: int  # first int slot of the (target x error code) block
    n_int: int
    n_float: int


def _layout() -> _Layout:
    i = f = 0
    hist_int, hist_float = {}, {}
    for name, (_, buckets, labels) in HISTOGRAMS.items():
        n = len(_series(labels))
        hist_int[name], hist_float[name] = i, f
        i += n * (len(buckets) + 1)
        f += n
    return _Layout(hist_int, hist_float, i, i + len(TARGETS) * len(ERROR_CODES), f)


LAYOUT = _layout()


def error_bucket(code: str) -> str:
    """A record's ``other_error`` as one of `ERROR_CODES` (HTTP statuses by class)."""
    if code in ERROR_CODES:
        return code
    if code.startswith("http_") and code[5:6] in ("4", "5"):
        return f"http_{code[5]}xx"
    return "other"


class Telemetry:
    """Histogram buckets, sums and error counts in two flat arrays (``ints``: int64, ``floats``:
    double), either lists or ``multiprocessing`` RawArrays shared with the mirror process. Each slot
    has one writing process (latency: the proxy; divergence and errors: whoever compares)."""

    def __init__(self, ints: Any | None = None, floats: Any | None = None) -> None:
        self.ints: Any = ints if ints is not None else [0] * LAYOUT.n_int
        self.floats: Any = floats if floats is not None else [0.0] * LAYOUT.n_float

    @classmethod
    def shared(cls, ctx: Any) -> Telemetry:
        return cls(ctx.RawArray("q", LAYOUT.n_int), ctx.RawArray("d", LAYOUT.n_float))

    def observe(self, name: str, value: float, series: int) -> None:
        buckets = HISTOGRAMS[name][1]
        width = len(buckets) + 1
        # Non-cumulative counts; the collector accumulates at scrape time. bisect_left: a value equal
        # to a bound belongs to that bound's bucket ("le").
        self.ints[LAYOUT.hist_int[name] + series * width + bisect.bisect_left(buckets, value)] += 1
        self.floats[LAYOUT.hist_float[name] + series] += value

    def observe_latency(self, seconds: float, kind: str | None) -> None:
        self.observe("added_latency_seconds", seconds, _route_index(kind))

    def observe_records(self, records: Sequence[PairRecord]) -> None:
        """The divergence measures and errors of one comparison's records."""
        for rec in records:
            if rec.target not in TARGETS:
                continue
            t = TARGETS.index(rec.target)
            if rec.other_error is not None:
                self.ints[LAYOUT.errors + t * len(ERROR_CODES) + ERROR_CODES.index(error_bucket(rec.other_error))] += 1
            series = _route_index(rec.endpoint) * len(TARGETS) + t
            for name, fld in MEASURE_FIELD.items():
                value = getattr(rec, fld)
                if value is not None:
                    self.observe(name, float(value), series)

    def errors(self, target: str) -> dict[str, int]:
        t = TARGETS.index(target)
        base = LAYOUT.errors + t * len(ERROR_CODES)
        return {code: int(self.ints[base + j]) for j, code in enumerate(ERROR_CODES)}

    def histogram(self, name: str) -> list[tuple[tuple[str, ...], list[int], float]]:
        """Per series: (label values, cumulative counts per bucket then +Inf, sum)."""
        _, buckets, labels = HISTOGRAMS[name]
        width = len(buckets) + 1
        out = []
        for s, values in enumerate(_series(labels)):
            base = LAYOUT.hist_int[name] + s * width
            raw = [int(self.ints[base + j]) for j in range(width)]
            cumulative = [sum(raw[: j + 1]) for j in range(width)]
            out.append((values, cumulative, float(self.floats[LAYOUT.hist_float[name] + s])))
        return out


def _route_index(kind: str | None) -> int:
    return ROUTE_KINDS.index(kind) if kind in ROUTE_KINDS else len(ROUTE_KINDS)


class ShadowCollector:
    """A prometheus_client collector reading `Counters` and `Telemetry` at scrape time."""

    def __init__(self, counters: Counters, telemetry: Telemetry, *, baseline_model: str, candidate_model: str,
                 run_id: str, mode: str, limits: dict[str, float] | None = None) -> None:
        self.limits = limits or {}
        self.counters = counters
        self.telemetry = telemetry
        self.pair = {"baseline_model": baseline_model, "candidate_model": candidate_model}
        self.run = {"run_id": run_id, "mode": mode}

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
            InfoMetricFamily,
        )

        pair_names, pair_values = list(self.pair), list(self.pair.values())
        info = InfoMetricFamily(f"{PREFIX}_run", "The run this process records (its run_id in the database)",
                                labels=pair_names)
        info.add_metric(pair_values, self.run)
        yield info
        if self.limits:
            limit = GaugeMetricFamily(f"{PREFIX}_limit", "The server's configured bounds (bytes, counts, seconds)",
                                      labels=[*pair_names, "limit"])
            for name, value in self.limits.items():
                limit.add_metric([*pair_values, name], value)
            yield limit

        by_route = self.counters.by_route()
        dropped = CounterMetricFamily(f"{PREFIX}_dropped", "Requests or records not compared or not stored, by "
                                      "reason", labels=[*pair_names, "route", "reason"])
        for name in COUNTER_NAMES:
            per = by_route[name]
            if name.startswith("dropped_"):
                for kind, value in per.items():
                    dropped.add_metric([*pair_values, KIND_ROUTE.get(kind, "other"), name[len("dropped_"):]], value)
                continue
            family = CounterMetricFamily(f"{PREFIX}_{name}", _HELP[name], labels=[*pair_names, "route"])
            for kind, value in per.items():
                family.add_metric([*pair_values, KIND_ROUTE.get(kind, "other")], value)
            yield family
        yield dropped

        for target in TARGETS:
            errors = CounterMetricFamily(f"{PREFIX}_{target}_errors", f"Mirrored requests the {target} failed, by "
                                         "error", labels=[*pair_names, "error"])
            for code, value in self.telemetry.errors(target).items():
                errors.add_metric([*pair_values, code], value)
            yield errors

        for name, (help_text, buckets, labels) in HISTOGRAMS.items():
            hist = HistogramMetricFamily(f"{PREFIX}_{name}", help_text, labels=[*pair_names, *labels])
            for values, cumulative, total in self.telemetry.histogram(name):
                bounds = [*(_le(b) for b in buckets), "+Inf"]
                hist.add_metric([*pair_values, *values], list(zip(bounds, cumulative, strict=True)), total)
            yield hist


def _le(bound: float) -> str:
    from prometheus_client.utils import floatToGoString

    return str(floatToGoString(bound))


def build_registry(collector: ShadowCollector) -> Any:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def exposition(registry: Any) -> tuple[bytes, str]:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return generate_latest(registry), CONTENT_TYPE_LATEST
