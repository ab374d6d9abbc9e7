"""An MCQ comparison's summary as one typed, versioned model: records → `McqSummary` → summary.json.

`McqSummary` types the result of `servecmp.mcq.from_records.summarize_records` (layout documented in
`servecmp.metrics`), plus a `run` section saying where the records came from. Its leaves are the
metrics' own dataclasses (`Estimate`, `Proportion`, `Distribution`, `Correlation`, `MeanError`,
`GroupRow`), not copies of them; models forbid unknown keys, so the metrics and this model cannot
drift apart silently.

Everything that reads a summary goes through this model: the terminal report
(`servecmp.mcq.render`), `--json` (`McqSummary.model_dump(mode="json")`), `servecmp report`,
and later readers such as correlate and verdict gates. A summary is always recomputable from a run
directory's records (`servecmp.mcq.compare.compare_run`); summary.json is a cache of that, written atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from servecmp.errors import UserError
from servecmp.mcq.records import McqRecord
from servecmp.metrics.kl_report import NextTokenReport
from servecmp.metrics.mcq import Flips, GroupRow
from servecmp.metrics.stats import Correlation, Distribution, Estimate, Proportion
from servecmp.records import EndpointRole
from servecmp.runstore import SUMMARY, check_schema, read_json, validate_as, write_json_atomic

#: Layout identifier and version; `servecmp.metrics.summary` writes the same two values.
#: Version 3 added the reverse KL, Jensen-Shannon, the tight top-k estimate and llama.cpp's block;
#: version 2 files still load (those fields are then None: not measured).
SCHEMA: Literal["servecmp.mcq_summary/3"] = "servecmp.mcq_summary/3"
VERSION: Literal[3] = 3
#: Versions `load_summary` reads.
READABLE_VERSIONS = (2, 3)


class _Model(BaseModel):
    # A key the model does not know means the metrics' layout changed without this model.
    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class OptionKl(Distribution):
    """Per-item KL over the renormalised options, nats: the metrics' `Distribution` plus the floor count."""

    #: Items where the candidate gave an option zero probability and the floor stood in.
    n_floored: int


class SharedTokens(_Model):
    mean: float | None
    min: int | None


class TightTopk(_Model):
    """The tighter top-k estimate (`servecmp.metrics.kl.topk_kl_tight`): not a bound."""

    n: int
    #: KL(baseline ‖ candidate), the headline direction.
    kl_bc: Distribution
    #: KL(candidate ‖ baseline).
    kl_cb: Distribution
    js: Distribution
    #: Items where a token shown by one list only had its other side imputed.
    n_imputed: int
    n_floored: int
    #: Share of the mean KL(b ‖ c) estimate that is the extrapolated tail term.
    tail_share: float | None
    estimator: str


class TopkKl(_Model):
    """The top-k next-token KL lower bound (see `servecmp.metrics.kl`), and from version 3 the
    reverse-KL and JS bounds over the same cells and the tight estimate (None in version 2 files)."""

    n: int
    kl_hat: Distribution
    unresolved_baseline_mass: Distribution
    n_exact: int
    n_floored: int
    shared_tokens: SharedTokens
    estimator: str
    kl_cb_hat: Distribution | None = None
    js_hat: Distribution | None = None
    tight: TightTopk | None = None


class SummarySettings(_Model):
    confidence: float
    n_boot: int
    seed: int
    kl_units: Literal["nats"]
    prob_floor: float
    margin_edges: list[float]


class RoleCounts(_Model):
    baseline: int
    candidate: int


class Accuracy(_Model):
    baseline: Estimate
    candidate: Estimate
    #: candidate − baseline
    diff: Estimate


class AccNorm(_Model):
    """The choice metrics again with lm-eval's length-normalised choices."""

    accuracy: Accuracy
    flips: Flips
    answer_changes: Proportion


class MarginByCorrectness(_Model):
    when_correct: Estimate
    when_wrong: Estimate
    mann_whitney_p: float | None


class MarginBucket(_Model):
    low_edge: float
    high_edge: float
    changes: Proportion


class TopMargin(_Model):
    n: int
    by_baseline_correctness: MarginByCorrectness
    change_by_bucket: list[MarginBucket]
    margin_change_correlation: Correlation


class Pairing(_Model):
    paired: int
    unpaired_baseline: int
    unpaired_candidate: int
    duplicates_baseline: int
    duplicates_candidate: int
    stored_choice_mismatch: RoleCounts


class RunEndpoint(_Model):
    #: The endpoint's base URL (lm-eval import: the sample-log file the answers came from).
    url: str
    model: str


class ItemErrors(_Model):
    """Items an endpoint refused that no later attempt answered: left out of every metric."""

    count: int
    example: str


class RunInfo(_Model):
    """Where the summarised records came from."""

    #: None when the records did not come from a run directory (lm-eval logs).
    run_dir: str | None = None
    task: str
    #: Human description of the items' source, e.g. "vendored MMLU sample (prompts/mmlu_sample)".
    source: str
    #: Items the run set out to score (None: not a servecmp run).
    n_items_planned: int | None = None
    #: False while a run is unfinished (interrupted, or an endpoint failed).
    complete: bool = True
    endpoints: dict[EndpointRole, RunEndpoint] = Field(default_factory=dict)
    #: Mean requests per scored item, per endpoint (1.0 when every option was in the top-k).
    requests_per_item: dict[EndpointRole, float] = Field(default_factory=dict)
    item_errors: dict[EndpointRole, ItemErrors] = Field(default_factory=dict)
    #: The API kinds ("completions", "chat") each endpoint's records were asked through. A chat
    #: template changes the prompt, so a comparison across kinds mixes API and model (`api_mismatch`).
    apis: dict[EndpointRole, list[str]] = Field(default_factory=dict)

    @property
    def api_mismatch(self) -> str | None:
        """One sentence when the endpoints were not all asked through the same API, else None."""
        if len({tuple(v) for v in self.apis.values()}) <= 1:
            return None
        kinds = ", ".join(f"{role} {'+'.join(v)}" for role, v in self.apis.items())
        return (f"the endpoints were asked through different APIs ({kinds}): a chat template changes the "
                "prompt, so this comparison mixes the API with the model")


class McqSummary(_Model):
    """Everything the MCQ report shows. Numbers that are undefined are None, never NaN."""

    model_config = ConfigDict(extra="forbid", serialize_by_alias=True, validate_by_name=True,
                              validate_by_alias=True)

    # `schema` would shadow a BaseModel attribute; the JSON key stays "schema".
    schema_: Literal["servecmp.mcq_summary/2", "servecmp.mcq_summary/3"] = Field(default=SCHEMA, alias="schema")
    version: Literal[2, 3] = VERSION
    settings: SummarySettings
    #: Items both endpoints answered (the ones every metric is computed over).
    n_items: int
    n_options: int
    no_answer: RoleCounts
    accuracy: Accuracy
    flips: Flips
    answer_changes: Proportion
    acc_norm: AccNorm | None
    option_kl: OptionKl
    #: KL(candidate ‖ baseline) and JS over the options (version 3; None when read from version 2).
    option_kl_cb: OptionKl | None = None
    option_js: Distribution | None = None
    topk_kl: TopkKl | None
    #: llama.cpp's block over the next-token distributions (None without top-k, or version 2).
    next_token_report: NextTokenReport | None = None
    top_margin: TopMargin
    #: Rows of the metrics' own type (`servecmp.metrics.mcq.GroupRow`), validated with this model's
    #: rules (unknown keys refused).
    groups: dict[str, list[GroupRow]]
    pairing: Pairing
    tasks: list[str]
    run: RunInfo

    @model_validator(mode="after")
    def _version_fields(self) -> McqSummary:
        # Version 3 always has the option divergences; a version 3 file without them is damaged.
        if self.version == 3 and (self.option_kl_cb is None or self.option_js is None):
            raise ValueError("a servecmp.mcq_summary/3 summary needs option_kl_cb and option_js")
        if f"servecmp.mcq_summary/{self.version}" != self.schema_:
            raise ValueError(f"schema {self.schema_} does not match version {self.version}")
        return self


def summary_from_records(base: Sequence[McqRecord], cand: Sequence[McqRecord], run: RunInfo, *,
                         seed: int = 0) -> McqSummary:
    """Every metric over the items both endpoints answered, as a typed summary."""
    from servecmp.mcq.from_records import summarize_records

    data = summarize_records(base, cand, seed=seed)
    return McqSummary.model_validate({**data, "run": run.model_dump()})


def summarize_lmeval(base_path: Path, cand_path: Path, *, seed: int = 0) -> McqSummary:
    """The same summary from two lm-evaluation-harness `--log_samples` files; no endpoint is called."""
    from servecmp.tasks.lmeval_import import load_lmeval_pair

    base, cand, task = load_lmeval_pair(base_path, cand_path)
    run = RunInfo(task=task, source="lm-eval sample logs",
                  endpoints={"baseline": RunEndpoint(url=str(base_path), model=""),
                             "candidate": RunEndpoint(url=str(cand_path), model="")})
    return summary_from_records(base, cand, run, seed=seed)


def write_summary(run_dir: Path, summary: McqSummary) -> None:
    write_json_atomic(run_dir / SUMMARY, summary.model_dump(mode="json"))


def load_summary(path: Path) -> McqSummary:
    """A stored summary (a run directory's summary.json, or the file itself), as written.

    UserError for a file that is not an MCQ summary of a version this model reads (2 or 3: a
    version 2 file loads with the version 3 fields None); `compare_run` recomputes
    one from the records instead.
    """
    file = path / SUMMARY if path.is_dir() else path
    raw: Any = read_json(file)
    if isinstance(raw, dict) and str(raw.get("schema", "")).startswith("servecmp.mcq_comparison/"):
        raise UserError(f"{file} compares several candidates with one baseline: read it with "
                        "servecmp.mcq.compare.load_comparison")
    if not isinstance(raw, dict) or not str(raw.get("schema", "")).startswith("servecmp.mcq_summary/"):
        raise UserError(f"{file} is not an MCQ summary")
    if raw.get("version") not in READABLE_VERSIONS:
        version = raw.get("version")
        if isinstance(version, int) and version > max(READABLE_VERSIONS):
            check_schema(raw, file, [f"servecmp.mcq_summary/{v}" for v in READABLE_VERSIONS])  # says: newer
        raise UserError(f"{file} is an MCQ summary of layout {raw.get('schema')}, not {SCHEMA}; "
                        f"recompute it from the records with: servecmp report {file.parent}")
    return validate_as(McqSummary, raw, file, "a valid MCQ summary")
