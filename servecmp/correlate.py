"""`servecmp correlate`: do flips and KL predict the MT-Bench drop across several candidates?

Input: run directories of one baseline against several candidates (e.g. int8, int4, fp8, pruned):
MCQ runs (manifest kind "mcq", summary.json from servecmp.metrics), MT-Bench runs (kind
"mtbench", summary.json from servecmp.mtbench.report) and gen runs (kind "gen", summary.json
"servecmp.gen_summary/1": each candidate's flip rate and accuracy difference under the primary
extraction, and its mean teacher-forced KL).

A multi-candidate MCQ run (`servecmp mcq --candidate A --candidate B ...`) gives one row per
candidate (`read_runs`); a single-candidate run gives one.

Pairing rule: runs belong to the same candidate when their manifests name the same candidate
endpoint, i.e. the same model name and the same normalised URL (`.../v1`). Each candidate may
have at most one MCQ run and one MT-Bench run; a candidate with only one of them keeps its row
and is left out of the correlations that need the missing numbers. Runs whose baselines differ
are compared anyway, with a warning, because a baseline served at another port is still the
baseline; a differing baseline model name is reported too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from servecmp.endpoints import normalise_url
from servecmp.errors import UserError
from servecmp.metrics.stats import Correlation, correlation
from servecmp.records import EndpointRole, RunManifest
from servecmp.runstore import MANIFEST, SUMMARY, manifest_kind, read_json, read_model

KlSource = Literal["option", "topk"]
MIN_CANDIDATES = 3

#: (x, y) metric pairs whose correlation the report gives, by row attribute.
CORRELATED_PAIRS: tuple[tuple[str, str], ...] = (
    ("flip_rate", "kl"),
    ("flip_rate", "delta_mtbench"),
    ("delta_accuracy", "delta_mtbench"),
)
#: Added when a gen run is among the inputs: do MCQ flips predict generated-answer flips, and those
#: the MT-Bench drop?
GEN_PAIRS: tuple[tuple[str, str], ...] = (("flip_rate", "gen_flip_rate"), ("gen_flip_rate", "delta_mtbench"))
LABELS = {
    "flip_rate": "flips",
    "kl": "KL",
    "delta_mtbench": "ΔMT-Bench",
    "delta_accuracy": "Δaccuracy",
    "gen_flip_rate": "gen flips",
}


@dataclass(frozen=True)
class Endpoint:
    model: str
    url: str

    def __str__(self) -> str:
        return f"{self.model} @ {self.url}"


@dataclass(frozen=True)
class McqFacts:
    delta_accuracy: float | None
    flip_rate: float | None
    flips: int | None
    n_items: int | None
    kl: float | None


@dataclass(frozen=True)
class GenFacts:
    flip_rate: float | None
    delta_accuracy: float | None
    tf_kl: float | None
    n_items: int | None


@dataclass(frozen=True)
class RunFacts:
    run_dir: Path
    kind: Literal["mcq", "mtbench", "gen"]
    task: str
    baseline: Endpoint
    candidate: Endpoint
    mcq: McqFacts | None = None
    delta_mtbench: float | None = None
    mtbench_n: int | None = None
    gen: GenFacts | None = None


@dataclass
class CandidateRow:
    candidate: Endpoint
    mcq_run: Path | None = None
    mtbench_run: Path | None = None
    task: str | None = None
    delta_accuracy: float | None = None
    flip_rate: float | None = None
    flips: int | None = None
    n_items: int | None = None
    kl: float | None = None
    delta_mtbench: float | None = None
    mtbench_n: int | None = None
    gen_run: Path | None = None
    gen_flip_rate: float | None = None
    gen_delta_accuracy: float | None = None
    gen_tf_kl: float | None = None
    gen_n: int | None = None


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, Mapping) or k not in d:
            return None
        d = d[k]
    return d


def mcq_facts_from_summary(summary: Mapping[str, Any], kl: KlSource = "option") -> McqFacts:
    """The adapter: the only place that knows the keys of an MCQ summary.json
    (layout documented in `servecmp.metrics`, schema "servecmp.mcq_summary/1")."""
    kl_value = (
        _get(summary, "option_kl", "mean") if kl == "option" else _get(summary, "topk_kl", "kl_hat", "mean")
    )
    return McqFacts(
        delta_accuracy=_get(summary, "accuracy", "diff", "point"),
        flip_rate=_get(summary, "flips", "rate", "rate"),
        flips=_get(summary, "flips", "flips"),
        n_items=_get(summary, "n_items"),
        kl=kl_value,
    )


def _endpoints(manifest: RunManifest, run_dir: Path) -> tuple[Endpoint, Endpoint]:
    roles = {e.role: e for e in manifest.endpoints}
    if "baseline" not in roles or "candidate" not in roles:
        raise UserError(f"{run_dir}: the manifest does not name a baseline and a candidate endpoint")

    def endpoint(role: EndpointRole) -> Endpoint:
        e = roles[role]
        return Endpoint(model=e.model, url=normalise_url(e.base_url))

    return endpoint("baseline"), endpoint("candidate")


def read_run(run_dir: Path, kl: KlSource = "option") -> RunFacts:
    kind = manifest_kind(run_dir)
    if kind not in ("mcq", "mtbench"):
        raise UserError(f"{run_dir}: run kind {kind!r} is neither an MCQ run nor an MT-Bench run")
    manifest = read_model(run_dir / MANIFEST, RunManifest)
    if not (run_dir / SUMMARY).is_file():
        raise UserError(f"{run_dir}: no {SUMMARY} yet (finish the run, or resume it, first)")
    summary = read_json(run_dir / SUMMARY)
    if not isinstance(summary, dict):
        raise UserError(f"{run_dir / SUMMARY} is not a JSON object")
    baseline, candidate = _endpoints(manifest, run_dir)
    if manifest.kind == "mcq":
        schema = str(summary.get("schema", ""))
        if not schema.startswith("servecmp.mcq_summary/"):
            raise UserError(f"{run_dir / SUMMARY}: not an MCQ summary (schema {schema!r})")
        facts = mcq_facts_from_summary(summary, kl)
        if kl == "topk" and facts.kl is None:
            raise UserError(f"{run_dir}: no top-k KL in this MCQ run (use --kl option)")
        return RunFacts(run_dir, "mcq", manifest.task, baseline, candidate, mcq=facts)
    return RunFacts(run_dir, "mtbench", manifest.task, baseline, candidate, **_mtbench_facts(summary))


def _mtbench_facts(summary: Mapping[str, Any]) -> dict[str, Any]:
    """What correlate reads of an MT-Bench summary (`servecmp.mtbench.report.MtBenchSummary`)."""
    return {"delta_mtbench": _get(summary, "delta", "point"), "mtbench_n": _get(summary, "delta", "n")}


def _endpoint(d: Mapping[str, Any]) -> Endpoint:
    """An endpoint as a comparison summary stores it ({"model", "url"})."""
    return Endpoint(model=str(d.get("model", "")), url=normalise_url(str(d.get("url", ""))))


def _comparison_runs(
    run_dir: Path,
    summary: Mapping[str, Any],
    kind: Literal["mcq", "mtbench"],
    facts: Callable[[Mapping[str, Any]], dict[str, Any]],
) -> list[RunFacts]:
    """One `RunFacts` per candidate of a multi-candidate run: its summary.json holds the baseline and
    ``candidates: [{name, endpoint, summary}]`` ("servecmp.mcq_comparison/1",
    "servecmp.mtbench_comparison/1"); ``facts`` reads what a candidate's entry adds."""
    manifest = read_model(run_dir / MANIFEST, RunManifest)
    baseline = _endpoint(summary.get("baseline") or {})
    out = [
        RunFacts(run_dir, kind, manifest.task, baseline, _endpoint(c.get("endpoint") or {}), **facts(c))
        for c in summary.get("candidates") or []
    ]
    if not out:
        what = "an MCQ" if kind == "mcq" else "an MT-Bench"
        raise UserError(f"{run_dir / SUMMARY}: {what} comparison without candidates")
    return out


def _gen_runs(run_dir: Path) -> list[RunFacts]:
    """One `RunFacts` per candidate of a gen run (summary.json "servecmp.gen_summary/1", read as JSON:
    this adapter is the only place here that knows its keys)."""
    if not (run_dir / SUMMARY).is_file():
        raise UserError(f"{run_dir}: no {SUMMARY} yet (finish the run, or resume it, first)")
    summary = read_json(run_dir / SUMMARY)
    if not isinstance(summary, dict) or summary.get("schema") != "servecmp.gen_summary/1":
        raise UserError(f"{run_dir / SUMMARY}: not a gen summary this servecmp reads")
    base: dict[str, Any] = next((e for e in summary.get("endpoints") or [] if e.get("role") == "baseline"), {})
    task = str(_get(summary, "run", "task") or "")
    out = []
    for c in summary.get("candidates") or []:
        primary = (c.get("correctness") or [{}])[0]
        out.append(RunFacts(run_dir, "gen", task, _endpoint(base), _endpoint(c), gen=GenFacts(
            flip_rate=_get(primary, "flips", "rate", "rate"), delta_accuracy=_get(primary, "delta_acc", "point"),
            tf_kl=_get(c, "teacher_forcing", "kl_mean", "mean"), n_items=c.get("n"))))
    if not out:
        raise UserError(f"{run_dir / SUMMARY}: a gen run without candidates")
    return out


def read_runs(run_dir: Path, kl: KlSource = "option") -> list[RunFacts]:
    """Every candidate of a run directory: one `RunFacts` for a single-candidate run (`read_run`),
    one per candidate for a multi-candidate MCQ run (summary.json holding a
    "servecmp.mcq_comparison/1", each candidate's full MCQ summary inside) or MT-Bench run
    ("servecmp.mtbench_comparison/1", each candidate's MtBenchSummary inside)."""
    if manifest_kind(run_dir) == "gen":
        return _gen_runs(run_dir)
    summary = read_json(run_dir / SUMMARY) if (run_dir / SUMMARY).is_file() else None
    if isinstance(summary, dict) and str(summary.get("schema", "")).startswith("servecmp.mtbench_comparison/"):
        return _comparison_runs(run_dir, summary, "mtbench", lambda c: _mtbench_facts(c.get("summary") or {}))
    if not (isinstance(summary, dict) and str(summary.get("schema", "")).startswith("servecmp.mcq_comparison/")):
        return [read_run(run_dir, kl)]

    def mcq_facts(c: Mapping[str, Any]) -> dict[str, Any]:
        facts = mcq_facts_from_summary(c.get("summary") or {}, kl)
        if kl == "topk" and facts.kl is None:
            raise UserError(f"{run_dir}: no top-k KL for candidate {c.get('name')} (use --kl option)")
        return {"mcq": facts}

    return _comparison_runs(run_dir, summary, "mcq", mcq_facts)


def pair_runs(runs: Sequence[RunFacts]) -> tuple[list[CandidateRow], list[str]]:
    """One row per candidate endpoint (first-seen order) and warnings about the baselines."""
    rows: dict[Endpoint, CandidateRow] = {}
    for r in runs:
        row = rows.setdefault(r.candidate, CandidateRow(candidate=r.candidate))
        if r.kind == "mcq":
            if row.mcq_run is not None:
                raise UserError(
                    f"two MCQ runs for candidate {r.candidate}: {row.mcq_run} and {r.run_dir}; pass one"
                )
            assert r.mcq is not None
            row.mcq_run, row.task = r.run_dir, r.task
            row.delta_accuracy, row.flip_rate, row.flips = r.mcq.delta_accuracy, r.mcq.flip_rate, r.mcq.flips
            row.n_items, row.kl = r.mcq.n_items, r.mcq.kl
        elif r.kind == "gen":
            if row.gen_run is not None:
                raise UserError(f"two gen runs for candidate {r.candidate}: {row.gen_run} and {r.run_dir}; pass one")
            assert r.gen is not None
            row.gen_run, row.gen_flip_rate, row.gen_delta_accuracy = r.run_dir, r.gen.flip_rate, r.gen.delta_accuracy
            row.gen_tf_kl, row.gen_n = r.gen.tf_kl, r.gen.n_items
        else:
            if row.mtbench_run is not None:
                raise UserError(
                    f"two MT-Bench runs for candidate {r.candidate}: {row.mtbench_run} and {r.run_dir}; "
                    "pass one"
                )
            row.mtbench_run, row.delta_mtbench, row.mtbench_n = r.run_dir, r.delta_mtbench, r.mtbench_n
    warnings = []
    baselines = {r.baseline for r in runs}
    if len({b.model for b in baselines}) > 1:
        warnings.append(
            "the runs have different baseline models: " + ", ".join(sorted({str(b) for b in baselines}))
        )
    elif len(baselines) > 1:
        warnings.append(
            "the baseline was reached at different URLs: " + ", ".join(sorted(b.url for b in baselines))
        )
    tasks = {r.task for r in runs if r.kind == "mcq"}
    if len(tasks) > 1:
        warnings.append(
            f"the MCQ runs are on different tasks ({', '.join(sorted(tasks))}); their flips differ in kind"
        )
    return list(rows.values()), warnings


@dataclass(frozen=True)
class CorrelationRow:
    x: str
    y: str
    result: Correlation
    #: Why no number, when there is none.
    note: str | None


def correlations(rows: Sequence[CandidateRow]) -> list[CorrelationRow]:
    out = []
    pairs = CORRELATED_PAIRS + (GEN_PAIRS if any(r.gen_run is not None for r in rows) else ())
    for x, y in pairs:
        pts = [(getattr(r, x), getattr(r, y)) for r in rows]
        pts = [(a, b) for a, b in pts if a is not None and b is not None]
        result = correlation([a for a, _ in pts], [b for _, b in pts])
        note = None
        if len(pts) < MIN_CANDIDATES:
            note = f"cannot be computed: {len(pts)} candidate(s) with both numbers, need {MIN_CANDIDATES}"
        elif result.spearman_r is None:
            note = "undefined: one of the two is constant across candidates"
        out.append(CorrelationRow(x=x, y=y, result=result, note=note))
    return out


def report_dict(rows: Sequence[CandidateRow], corr: Sequence[CorrelationRow], warnings: Sequence[str],
                plot: Path | None, kl: KlSource) -> dict[str, Any]:  # fmt: skip
    def row_dict(r: CandidateRow) -> dict[str, Any]:
        d = dataclasses.asdict(r)
        d["candidate"] = {"model": r.candidate.model, "url": r.candidate.url}
        for key in ("mcq_run", "mtbench_run", "gen_run"):
            d[key] = str(d[key]) if d[key] is not None else None
        return d

    return {
        "kl_source": kl,
        "candidates": [row_dict(r) for r in rows],
        "correlations": [{"x": c.x, "y": c.y, **dataclasses.asdict(c.result), "note": c.note} for c in corr],
        "warnings": list(warnings),
        "plot": str(plot) if plot is not None else None,
    }


def scatter_plot(rows: Sequence[CandidateRow], path: Path) -> bool:
    """Flips vs ΔMT-Bench, one labelled point per candidate. False when no candidate has both."""
    pts = [(r.candidate.model, 100 * (r.flip_rate or 0.0), r.delta_mtbench or 0.0)
           for r in rows if r.flip_rate is not None and r.delta_mtbench is not None]
    return scatter(pts, path, xlabel="flips (% of MCQ items)", ylabel="ΔMT-Bench (candidate − baseline)",
                   title="Flips vs MT-Bench change per candidate", hline=0.0)


def scatter(points: Sequence[tuple[str, float, float]], path: Path, *, xlabel: str, ylabel: str, title: str,
            hline: float | None = None) -> bool:
    """A labelled scatter PNG, one (label, x, y) point per candidate (matplotlib, Agg). False when
    there is no point. Shared by correlate and the multi-candidate MCQ leaderboard."""
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    xs = [x for _, x, _ in points]
    ys = [y for _, _, y in points]
    ax.scatter(xs, ys)
    for label, x, y in points:
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    if hline is not None:
        ax.axhline(hline, color="grey", linewidth=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True
