"""The shadow summary: what a shadow database says about the candidate (`servecmp shadow report`,
`servecmp report DB`), typed and versioned; `servecmp.shadow.render` prints it.

For each measure: the candidate's rate or mean with a 95% interval, the same for the secondary (the
baseline's second replica: the noise floor, how much the baseline disagrees with itself), and the
candidate's excess over the floor with a paired test on the requests both answered. Rates use
Wilson intervals and the exact McNemar test; means use bootstrap intervals and the Wilcoxon
signed-rank test (paired tests, because both endpoints answered the same requests). A difference is
called significant only when its test gives p < 0.05; each line is tested on its own (no correction
for the number of lines). Without a secondary there is no floor and no test.

`summarise` is pure (rows in, a `ShadowSummary` out); `load` reads the database; `load_summary` is
both; `parse_summary` reads a ``--json`` dump back (an unknown layout: one line, exit 2).
``--json`` is ``ShadowSummary.model_dump(mode="json")``, whose layout is (undefined numbers, e.g. a
rate over no requests, are ``null``, never NaN)::

    schema              "servecmp.shadow_summary/3"   (before: "servecmp.shadow_summary" + version;
                             read as "/<version>")
    version             3   (2: counters gained recorded and dropped_db_error; 3: the measures
                             kl_tight_mean, kl_cb_mean, js_mean and teacher_forced_tokens. A version 2
                             summary still validates, with teacher_forced_tokens null)
    database            the file or URL read, password redacted (null when summarised from rows)
    settings            {confidence, alpha, n_boot, worst_n}
    runs                [{run_id, started_at, mode, baseline_url, candidate_url, secondary_url,
                          hash_only, sample_rate, settings}]   (baseline = the primary)
    counters            {requests, sampled_out, mirrored, dropped_*, ...}   summed over runs
    compared_requests   requests the candidate was compared on
    has_secondary       whether there is a noise floor
    first, last         ISO times of the first and last comparison
    candidate_errors    {error code: count}; teacher_forced_errors likewise
    measures            [{kind: "rate", key, label, candidate: Rate, secondary: Rate | null,
                          excess: RateExcess | null}
                         {kind: "mean", ..., candidate: Mean, secondary, excess: MeanExcess | null}
                         {kind: "max", ..., candidate: {max, n}, secondary, excess: null}]
    worst               [{time, request_id, endpoint, stream, first_diff, edit_distance, length_ratio,
                          kl_mean, top1_agree, prompt}]   by edit distance, then KL
    hourly              [{hour, requests, candidate_errors: Rate, candidate_mismatch: Rate,
                          secondary_mismatch: Rate | null, candidate_edit_distance: {mean, n},
                          candidate_kl_mean: {mean, n}}]
    teacher_forced_tokens  null (no per-token values stored: a database from before layout 3, or no
                          teacher-forced request) or {kld_source, dp_token, candidate: TokenBlock | null,
                          secondary: TokenBlock | null}

    TokenBlock  {n, n_requests, skipped_requests, kld_mean: {value, error}, kld_percentiles: {max,
                 p99_9, p99, p95, p90, median, p10, p5, p1, p0_1, min}, dp_mean, dp_percentiles (as
                 kld's plus p75, p25), dp_rms, same_top_count, same_top}: llama.cpp's
                 ``perplexity --kl-divergence`` statistics over every teacher-forced token of the
                 target's requests, pooled as llama.cpp pools tokens (`servecmp.metrics.kl_report`);
                 Δp as fractions, errors one standard error (not 95% intervals)

    Rate        {count, n, rate, low, high}                 Wilson interval
    Mean        {mean, low, high, n}                        percentile bootstrap interval
    RateExcess  {n, diff, low, high, only_candidate, only_secondary, p_value, test: "exact McNemar",
                 significant}                               candidate − floor, paired
    MeanExcess  {n, diff, low, high, p_value, test: "Wilcoxon signed-rank", significant}
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from servecmp.errors import UserError
from servecmp.metrics.kl_report import KlReport, kl_report
from servecmp.metrics.stats import (
    DEFAULT_CONFIDENCE,
    bootstrap_mean_ci,
    mcnemar_exact,
    paired_bootstrap_diff_ci,
    wilcoxon_paired,
    wilson_ci,
)
from servecmp.shadow.measures import TokenStats
from servecmp.shadow.store import COUNTER_NAMES, load_all, redact_target

#: Bumped whenever the layout changes (readers refuse fields they do not know).
VERSION: Final = 3
SCHEMA: Final = "servecmp.shadow_summary/3"
#: Layouts `ShadowSummary` validates (a version 2 summary has no version 3 fields).
READABLE_VERSIONS: Final = (2, 3)
#: The report's defaults, here only (`shadow report`, `servecmp report DB`, the HTML page): the
#: worst requests shown, and the bootstrap resamples behind each mean's interval.
DEFAULT_WORST: Final = 10
DEFAULT_N_BOOT: Final = 2000
ALPHA = 0.05
Row = dict[str, Any]
Indicator = Callable[[Row], bool | None]


def _error(r: Row) -> bool | None:
    return None if r["primary_error"] is not None else r["other_error"] is not None


def _mismatch(r: Row) -> bool | None:
    return None if r["exact_match"] is None else not r["exact_match"]


def _status_differs(r: Row) -> bool | None:
    return r["other_status"] != r["primary_status"]


#: (key, label, indicator): share of rows where the indicator is true, among rows where it is defined.
RATES: list[tuple[str, str, Indicator]] = [
    ("error", "Errors (when the primary answered)", _error),
    ("status_differs", "Status differs from the primary's", _status_differs),
    ("mismatch", "Answer differs (exact text)", _mismatch),
]

#: (column, label, paired test?): per-request values averaged over the rows that have them.
MEANS: list[tuple[str, str, bool]] = [
    ("edit_distance", "Edit distance (tokens, normalised)", True),
    ("first_diff", "First differing token (differing answers)", False),
    ("length_ratio", "Length ratio (tokens, other/primary)", True),
    ("latency_ratio", "Latency ratio (other/primary)", True),
    ("kl_mean", "KL per token, teacher-forced (nats, top-k bound)", True),
    ("top1_agree", "Top-1 agreement, teacher-forced", True),
    ("dp_mean", "Δp of the chosen token, teacher-forced", True),
    # Database layout 3: absent from older databases' rows, and then not listed (see `summarise`).
    ("kl_tight_mean", "KL(primary ‖ other) per token, teacher-forced (nats, top-k estimate)", True),
    ("kl_cb_mean", "KL(other ‖ primary) per token, teacher-forced (nats, top-k estimate)", True),
    ("js_mean", "Jensen-Shannon per token, teacher-forced (nats, top-k estimate)", True),
]
#: Columns of database layout 3; a measure on one is listed only when the rows have the column.
LAYOUT_3_COLUMNS = frozenset({"kl_tight_mean", "kl_cb_mean", "js_mean"})

#: (column, label): the largest value seen.
MAXES: list[tuple[str, str]] = [
    ("kl_max", "Largest per-token KL"),
    ("dp_max_abs", "Largest |Δp| of a chosen token"),
]


# ---- the summary's types -----------------------------------------------------------------------


class _Model(BaseModel):
    # Reading a summary back (e.g. a stored --json) should fail loudly on a field it does not know.
    model_config = ConfigDict(extra="forbid")


class Rate(_Model):
    """A share with its Wilson interval; ``rate``/``low``/``high`` are null when ``n`` is 0."""

    count: int
    n: int
    rate: float | None
    low: float | None
    high: float | None


class Mean(_Model):
    """A mean with its percentile bootstrap interval; null values when ``n`` is 0."""

    mean: float | None
    low: float | None
    high: float | None
    n: int


class Largest(_Model):
    max: float | None
    n: int


class PlainMean(_Model):
    """A mean without an interval (per-hour rows: a bootstrap per hour would cost more than it tells)."""

    mean: float | None
    n: int


class RateExcess(_Model):
    """Candidate − floor on the requests both answered, with the exact McNemar test."""

    n: int
    diff: float | None
    low: float | None
    high: float | None
    #: Discordant pairs: only the candidate's indicator is true / only the secondary's.
    only_candidate: int
    only_secondary: int
    p_value: float | None
    test: Literal["exact McNemar"] = "exact McNemar"
    significant: bool


class MeanExcess(_Model):
    """Mean paired difference candidate − floor, with the Wilcoxon signed-rank test."""

    n: int
    diff: float | None
    low: float | None
    high: float | None
    p_value: float | None
    test: Literal["Wilcoxon signed-rank"] = "Wilcoxon signed-rank"
    significant: bool


class RateMeasure(_Model):
    kind: Literal["rate"] = "rate"
    key: str
    label: str
    candidate: Rate
    secondary: Rate | None
    excess: RateExcess | None


class MeanMeasure(_Model):
    kind: Literal["mean"] = "mean"
    key: str
    label: str
    candidate: Mean
    secondary: Mean | None
    #: None also for a measure defined on different subsets of requests per endpoint (no pairing).
    excess: MeanExcess | None


class MaxMeasure(_Model):
    kind: Literal["max"] = "max"
    key: str
    label: str
    candidate: Largest
    secondary: Largest | None
    excess: None = None


Measure = Annotated[RateMeasure | MeanMeasure | MaxMeasure, Field(discriminator="kind")]


class WorstRequest(_Model):
    time: str
    request_id: str
    endpoint: str
    stream: bool
    first_diff: int | None
    edit_distance: float | None
    length_ratio: float | None
    kl_mean: float | None
    top1_agree: float | None
    #: The prompt's start, or ``sha256:<prefix>`` for a database recorded with --hash-only.
    prompt: str


class HourRow(_Model):
    hour: str
    #: Requests compared with the candidate in this hour.
    requests: int
    candidate_errors: Rate
    candidate_mismatch: Rate
    secondary_mismatch: Rate | None
    candidate_edit_distance: PlainMean
    candidate_kl_mean: PlainMean


@dataclass(frozen=True)
class TokenBlock(KlReport):
    """llama.cpp's KL-divergence statistics over one target's teacher-forced tokens, pooled across
    requests: the metrics' `KlReport` (its n is the tokens pooled) and the requests they came from.
    Δp values are fractions; errors are one standard error."""

    n_requests: int = 0
    #: Requests whose stored per-token values could not be read (another layout): left out.
    skipped_requests: int = 0


#: What `TeacherForcedTokens`' KLD and Δp are.
KLD_SOURCE = "KL(primary ‖ other) per token, tight top-k estimate (nats)"
DP_TOKEN = "p_other − p_primary of the primary's answer token (both read from the top-k lists)"


class TeacherForcedTokens(_Model):
    """llama.cpp's block per target: the candidate's, and the secondary's (the noise floor: what
    the same statistics look like between two copies of the baseline)."""

    kld_source: str = KLD_SOURCE
    dp_token: str = DP_TOKEN
    candidate: TokenBlock | None
    secondary: TokenBlock | None


class RunSummary(_Model):
    """One `shadow serve` or `shadow replay` run recorded in the database."""

    run_id: str
    started_at: str
    mode: str
    #: The primary's URL.
    baseline_url: str | None
    candidate_url: str | None
    secondary_url: str | None
    hash_only: bool
    sample_rate: float
    #: The run's non-secret settings as stored (the `[shadow]` section and model names; never keys).
    settings: dict[str, Any]


class ShadowCounters(_Model):
    """Event counts summed over runs (see `servecmp.shadow.store.COUNTER_NAMES` for their meaning)."""

    requests: int = 0
    sampled_out: int = 0
    mirrored: int = 0
    recorded: int = 0
    dropped_queue_full: int = 0
    dropped_writer_full: int = 0
    dropped_db_full: int = 0
    dropped_db_error: int = 0
    dropped_too_large: int = 0
    dropped_shutdown: int = 0
    client_disconnected: int = 0
    primary_unreachable: int = 0
    primary_dropped: int = 0
    mirror_failures: int = 0


class ReportSettings(_Model):
    confidence: float = DEFAULT_CONFIDENCE
    #: A paired test is called significant when p < alpha (each measure on its own).
    alpha: float = ALPHA
    n_boot: int
    worst_n: int


class ShadowSummary(_Model):
    """Everything `shadow report` prints, typed and versioned (see the module docstring's layout)."""

    # "schema" is a (deprecated) BaseModel attribute, hence the alias; dumps use the alias anyway.
    model_config = ConfigDict(extra="forbid", serialize_by_alias=True, validate_by_name=True,
                              validate_by_alias=True)

    schema_: Literal["servecmp.shadow_summary/2", "servecmp.shadow_summary/3"] = Field(default=SCHEMA,
                                                                                       alias="schema")
    version: Literal[2, 3] = VERSION

    @model_validator(mode="before")
    @classmethod
    def _versioned_schema(cls, data: Any) -> Any:
        # Before the schema id carried its version, it was "servecmp.shadow_summary" + version.
        if isinstance(data, dict) and data.get("schema") == "servecmp.shadow_summary":
            data = {**data, "schema": f"servecmp.shadow_summary/{data.get('version', VERSION)}"}
        return data
    database: str | None = None
    settings: ReportSettings
    runs: list[RunSummary]
    counters: ShadowCounters
    compared_requests: int
    has_secondary: bool
    first: str | None
    last: str | None
    candidate_errors: dict[str, int]
    teacher_forced_errors: dict[str, int]
    measures: list[Measure]
    worst: list[WorstRequest]
    hourly: list[HourRow]
    #: Version 3; None when no per-token values are stored (older database, or no teacher forcing).
    teacher_forced_tokens: TeacherForcedTokens | None = None

    def measure(self, key: str) -> RateMeasure | MeanMeasure | MaxMeasure:
        for m in self.measures:
            if m.key == key:
                return m
        raise KeyError(key)


# ---- computing it ------------------------------------------------------------------------------


def _clean(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _rate(rows: Sequence[Row], ind: Indicator) -> Rate:
    vals = [v for v in (ind(r) for r in rows) if v is not None]
    p = wilson_ci(sum(vals), len(vals))
    return Rate(count=p.count, n=p.n, rate=p.rate, low=p.low, high=p.high)


def _mean(rows: Sequence[Row], col: str, n_boot: int) -> Mean:
    vals = [float(v) for v in (r.get(col) for r in rows) if v is not None and math.isfinite(float(v))]
    est = bootstrap_mean_ci(vals, n_boot=n_boot)
    return Mean(mean=est.point, low=est.low, high=est.high, n=est.n)


def _largest(rows: Sequence[Row], col: str) -> Largest:
    vals = [float(r[col]) for r in rows if r[col] is not None]
    return Largest(max=max(vals) if vals else None, n=len(vals))


def _paired(
    cand: dict[str, Row], sec: dict[str, Row], value: Callable[[Row], float | bool | None]
) -> tuple[list[float], list[float]]:
    a: list[float] = []
    b: list[float] = []
    for rid, c in cand.items():
        s = sec.get(rid)
        if s is None:
            continue
        vc, vs = value(c), value(s)
        if vc is None or vs is None:
            continue
        a.append(float(vs))
        b.append(float(vc))
    return a, b


def _paired_rate(cand: dict[str, Row], sec: dict[str, Row], ind: Indicator, n_boot: int) -> RateExcess:
    floor, candidate = _paired(cand, sec, ind)
    b = sum(1 for f, c in zip(floor, candidate, strict=True) if c and not f)  # only the candidate fails
    c_ = sum(1 for f, c in zip(floor, candidate, strict=True) if f and not c)  # only the secondary fails
    diff = paired_bootstrap_diff_ci(floor, candidate, n_boot=n_boot)
    p = mcnemar_exact(b, c_) if floor else None
    return RateExcess(
        n=len(floor), diff=diff.point, low=diff.low, high=diff.high, only_candidate=b, only_secondary=c_,
        p_value=p, significant=p is not None and p < ALPHA,
    )


def _paired_mean(cand: dict[str, Row], sec: dict[str, Row], col: str, n_boot: int) -> MeanExcess:
    floor, candidate = _paired(cand, sec, lambda r: _clean(r.get(col)))
    diff = paired_bootstrap_diff_ci(floor, candidate, n_boot=n_boot)
    test = wilcoxon_paired(floor, candidate) if floor else None
    p = test.pvalue if test is not None else None
    return MeanExcess(
        n=len(floor), diff=diff.point, low=diff.low, high=diff.high, p_value=p,
        significant=p is not None and p < ALPHA,
    )


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _hour(ts: float) -> str:
    return datetime.fromtimestamp(ts - ts % 3600, UTC).strftime("%Y-%m-%d %H:00Z")


def _plain_mean(vals: Sequence[float | None]) -> PlainMean:
    xs = [float(v) for v in vals if v is not None]
    return PlainMean(mean=sum(xs) / len(xs) if xs else None, n=len(xs))


def _snippet(r: Row, width: int = 60) -> str:
    if r.get("prompt"):
        text = " ".join(str(r["prompt"]).split())
        return text if len(text) <= width else text[: width - 1] + "…"
    return f"sha256:{str(r['prompt_sha256'])[:12]}"


def token_block(rows: Sequence[Row]) -> TokenBlock | None:
    """llama.cpp's statistics over every teacher-forced token of ``rows`` (one target's), pooled as
    llama.cpp pools the tokens of its text; None when no row has per-token values."""
    parts: list[TokenStats] = []
    skipped = 0
    for r in rows:
        blob = r.get("tf_token_stats")
        if blob is None:
            continue
        try:
            parts.append(TokenStats.unpack(blob))
        except ValueError:
            skipped += 1
    if not parts:
        return None
    rep = kl_report(np.concatenate([t.kl for t in parts]), np.concatenate([t.p_primary for t in parts]),
                    np.concatenate([t.p_other for t in parts]), np.concatenate([t.same_top for t in parts]))
    return TokenBlock(**{f.name: getattr(rep, f.name) for f in dataclasses.fields(rep)}, n_requests=len(parts),
                      skipped_requests=skipped)


def _run(r: Row) -> RunSummary:
    settings = r.get("settings")
    if isinstance(settings, str):
        try:
            settings = json.loads(settings)
        except ValueError:
            settings = None
    return RunSummary(
        run_id=str(r["run_id"]), started_at=_iso(float(r["started_at"])), mode=str(r["mode"]),
        baseline_url=r.get("primary_url"), candidate_url=r.get("candidate_url"),
        secondary_url=r.get("secondary_url"), hash_only=bool(r["hash_only"]),
        sample_rate=float(r["sample_rate"]), settings=settings if isinstance(settings, dict) else {},
    )


def summarise(
    rows: Sequence[Row],
    *,
    counters: dict[str, int] | None = None,
    runs: Sequence[Row] = (),
    worst_n: int = DEFAULT_WORST,
    n_boot: int = DEFAULT_N_BOOT,
) -> ShadowSummary:
    """The report as a typed summary. ``rows`` are `PairRecord` columns (one dict per row), ``runs``
    rows of the database's ``runs`` table; means and paired differences get percentile bootstrap
    intervals from ``n_boot`` resamples (seeded: the same database gives the same numbers)."""
    by_target: dict[str, dict[str, Row]] = defaultdict(dict)
    for r in rows:
        by_target[r["target"]][r["request_id"]] = r
    cand, sec = by_target.get("candidate", {}), by_target.get("secondary", {})
    has_floor = bool(sec)
    cand_rows, sec_rows = list(cand.values()), list(sec.values())

    measures: list[RateMeasure | MeanMeasure | MaxMeasure] = []
    for key, label, ind in RATES:
        measures.append(RateMeasure(
            key=key, label=label, candidate=_rate(cand_rows, ind),
            secondary=_rate(sec_rows, ind) if has_floor else None,
            excess=_paired_rate(cand, sec, ind, n_boot) if has_floor else None,
        ))
    for col, label, tested in MEANS:
        if col in LAYOUT_3_COLUMNS and rows and not any(col in r for r in rows):
            continue  # a database from before layout 3: not measured, rather than "n = 0"
        measures.append(MeanMeasure(
            key=col, label=label, candidate=_mean(cand_rows, col, n_boot),
            secondary=_mean(sec_rows, col, n_boot) if has_floor else None,
            excess=_paired_mean(cand, sec, col, n_boot) if has_floor and tested else None,
        ))
    for col, label in MAXES:
        measures.append(MaxMeasure(
            key=col, label=label, candidate=_largest(cand_rows, col),
            secondary=_largest(sec_rows, col) if has_floor else None,
        ))

    ranked = sorted(
        (r for r in cand_rows if r["edit_distance"] is not None),
        key=lambda r: (-float(r["edit_distance"]), -float(r["kl_mean"] if r["kl_mean"] is not None else -1)),
    )
    worst = [
        WorstRequest(
            time=_iso(r["ts"]), request_id=r["request_id"], endpoint=r["endpoint"], stream=bool(r["stream"]),
            first_diff=r["first_diff"], edit_distance=r["edit_distance"], length_ratio=r["length_ratio"],
            kl_mean=r["kl_mean"], top1_agree=r["top1_agree"], prompt=_snippet(r),
        )
        for r in ranked[:worst_n]
    ]

    hours: dict[str, dict[str, list[Row]]] = defaultdict(lambda: {"candidate": [], "secondary": []})
    for r in rows:
        if r["target"] in ("candidate", "secondary"):
            hours[_hour(r["ts"])][r["target"]].append(r)
    hourly = [
        HourRow(
            hour=h,
            requests=len(g["candidate"]),
            candidate_errors=_rate(g["candidate"], _error),
            candidate_mismatch=_rate(g["candidate"], _mismatch),
            secondary_mismatch=_rate(g["secondary"], _mismatch) if has_floor else None,
            candidate_edit_distance=_plain_mean([r["edit_distance"] for r in g["candidate"]]),
            candidate_kl_mean=_plain_mean([r["kl_mean"] for r in g["candidate"]]),
        )
        for h, g in sorted(hours.items())
    ]

    tf_errors: dict[str, int] = defaultdict(int)
    other_errors: dict[str, int] = defaultdict(int)
    for r in cand_rows:
        if r["tf_error"]:
            tf_errors[r["tf_error"]] += 1
        if r["other_error"]:
            other_errors[r["other_error"]] += 1
    times = [float(r["ts"]) for r in rows]
    known = counters or {}
    blocks = (token_block(cand_rows), token_block(sec_rows) if has_floor else None)
    tokens = (TeacherForcedTokens(candidate=blocks[0], secondary=blocks[1])
              if blocks[0] is not None or blocks[1] is not None else None)
    return ShadowSummary(
        settings=ReportSettings(n_boot=n_boot, worst_n=worst_n),
        runs=[_run(r) for r in runs],
        # Counters a newer servecmp may have added are not this version's to report.
        counters=ShadowCounters(**{name: int(known.get(name, 0)) for name in COUNTER_NAMES}),
        compared_requests=len(cand),
        has_secondary=has_floor,
        first=_iso(min(times)) if times else None,
        last=_iso(max(times)) if times else None,
        candidate_errors=dict(sorted(other_errors.items())),
        teacher_forced_errors=dict(sorted(tf_errors.items())),
        measures=measures,
        worst=worst,
        hourly=hourly,
        teacher_forced_tokens=tokens,
    )


def load(db: Path | str) -> tuple[list[Row], dict[str, int], list[Row]]:
    """(pair rows, counters summed over runs, runs) from a shadow database: an SQLite file or a
    ``postgresql://`` URL."""
    return load_all(db)


def load_summary(db: Path | str, *, worst_n: int = DEFAULT_WORST, n_boot: int = DEFAULT_N_BOOT) -> ShadowSummary:
    """The summary of a shadow database (what `shadow report` and `servecmp report DB` print)."""
    rows, counters, runs = load(db)
    summary = summarise(rows, counters=counters, runs=runs, worst_n=worst_n, n_boot=n_boot)
    summary.database = redact_target(db)
    return summary


def parse_summary(data: Any, source: str = "the summary") -> ShadowSummary:
    """A shadow summary read back (``--json``'s dump, parsed): validated; a layout this servecmp does
    not know (a newer one, or not a shadow summary) is one line (UserError, exit 2)."""
    if not isinstance(data, dict):
        raise UserError(f"{source} is not a shadow summary (not a JSON object)")
    schema = str(data.get("schema", ""))
    name, _, version = schema.partition("/")
    if name != "servecmp.shadow_summary":
        raise UserError(f"{source} is not a shadow summary (schema {schema or 'missing'})")
    known = {f"servecmp.shadow_summary/{v}" for v in READABLE_VERSIONS}
    if version and schema not in known:
        raise UserError(f"{source} is a shadow summary of layout {schema}, which this servecmp does not read "
                        f"(it reads {', '.join(sorted(known))}); upgrade servecmp")
    try:
        return ShadowSummary.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise UserError(f"{source} is not a valid shadow summary ({where}: {first['msg']})") from None
