"""One self-contained HTML file per run and per comparison.

The page opens offline and from an attachment: CSS and the small sort/filter script are inline, the
plots are inline SVG (matplotlib, Agg), no font, image or script is fetched from any host (a
Content-Security-Policy meta tag forbids it too). It starts with the verdict
(`servecmp.verdicts.verdict_for`; with no gates it says nothing was decided), then the run's
settings (endpoints, models, task, sizes, versions; key variable *names* only, never a value), then
the kind's tables and plots:

- MCQ (`render_mcq`): accuracy / flips / KL / margin tables, answer-change rate by top margin with
  Wilson intervals (the paper's Figure 3), top-margin histograms when correct vs wrong (Table 1),
  KL histograms (options; next token with the unresolved mass), flips per subject and category, and
  a filterable list of every flipped and changed item with its question, options, gold and both
  endpoints' option probabilities. Several candidates: the leaderboard, flips-vs-KL scatter,
  correlations and the noise floor, then each candidate's sections.
- MT-Bench (`render_mtbench`): per-category scores (FastChat's radar), per-question and
  per-category Δ with intervals, the largest drops with both answers and the judge's explanations
  side by side, judge parse failures; several candidates: the leaderboard first.
- Shadow (`render_shadow`): measures against the noise floor, rates per hour with intervals, the
  worst-diverging requests with both answers (hashes for a --hash-only database).
- Correlate (`render_correlate`): the per-candidate table, correlations, flips-vs-ΔMT-Bench and
  flips-vs-KL scatter plots.

Entry points for the commands: `run_html(path, gates)` renders any stored run (kind detected as
`servecmp report` does) and `write_html(file, text)` writes a page (UserError, one line, when the
file cannot be written); `check_writable(file)` lets a command refuse a bad ``--html`` before a
long run. Every text from a run is escaped.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from servecmp.errors import UserError

if TYPE_CHECKING:
    from servecmp.gates import Gate, Verdict

__all__ = ["check_writable", "mcq_html", "mcq_verdicts", "mtbench_html", "mtbench_verdicts", "render_correlate",
           "render_mcq", "render_mtbench", "render_shadow", "run_html", "shadow_html", "write_html"]


def check_writable(path: Path) -> None:
    """UserError (one line) unless ``path`` can be created or replaced: its directory exists and is
    writable, and it is not a directory."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UserError(f"--html {path}: is a directory")
    if not parent.is_dir():
        raise UserError(f"--html {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UserError(f"--html {path}: not writable")


def write_html(path: Path, text: str) -> None:
    """Write the page (atomically: a reader never sees half a file). UserError when it cannot."""
    path = Path(path)
    check_writable(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(f"--html {path}: cannot write: {exc.strerror or exc}") from exc


def render_mcq(*args: Any, **kwargs: Any) -> str:
    from servecmp.html.mcq import render_mcq as impl

    return impl(*args, **kwargs)


def render_mtbench(*args: Any, **kwargs: Any) -> str:
    from servecmp.html.mtbench import render_mtbench as impl

    return impl(*args, **kwargs)


def render_shadow(*args: Any, **kwargs: Any) -> str:
    from servecmp.html.shadow import render_shadow as impl

    return impl(*args, **kwargs)


def render_correlate(*args: Any, **kwargs: Any) -> str:
    from servecmp.html.correlate import render_correlate as impl

    return impl(*args, **kwargs)


def mcq_verdicts(comparison: Any, gates: Sequence[Gate]) -> list[Verdict]:
    """Every candidate's verdict, labelled and with the floor's excesses as `servecmp mcq` decides them."""
    from servecmp.gates import MetricEstimate
    from servecmp.verdicts import verdict_for

    out = []
    several = len(comparison.candidates) > 1
    for c in comparison.candidates:
        extra = {}
        if c.floor is not None and c.floor.n:
            extra = {"flips_excess": MetricEstimate.bootstrap(c.floor.flips_excess.model_dump()),
                     "kl_excess": MetricEstimate.bootstrap(c.floor.kl_excess.model_dump())}
        label = c.name if several else (c.endpoint.model or c.name)
        out.append(verdict_for("mcq", c.summary, gates, extra=extra, candidate=label))
    return out


def mtbench_verdicts(result: Any, gates: Sequence[Gate]) -> list[Verdict]:
    from servecmp.mtbench.report import MtBenchComparison
    from servecmp.verdicts import verdict_for

    if isinstance(result, MtBenchComparison):
        return [verdict_for("mtbench", c.summary, gates, candidate=c.name) for c in result.candidates]
    return [verdict_for("mtbench", result, gates, candidate=result.candidate_model)]


def mcq_html(file: Path, comparison: Any, gates: Sequence[Gate], *, verdicts: Sequence[Verdict] | None = None,
             run_dir: Path | None = None, records: Sequence[Any] | None = None,
             texts: Mapping[str, tuple[str, list[str]]] | None = None) -> None:
    """Write an MCQ run's page (``run_dir``: the comparison's own when not given; ``records`` and
    ``texts`` for a comparison without one, e.g. of lm-eval logs). ``verdicts``: the command's, when
    it decided any; otherwise decided here (no gates: the notes only)."""
    if run_dir is None and comparison.run_dir:
        run_dir = Path(comparison.run_dir)
    v = list(verdicts) if verdicts is not None else mcq_verdicts(comparison, gates)
    write_html(file, render_mcq(comparison, run_dir=run_dir, verdicts=v, records=records, texts=texts))


def mtbench_html(file: Path, result: Any, gates: Sequence[Gate], *, run_dir: Path | None) -> None:
    write_html(file, render_mtbench(result, run_dir=run_dir, verdicts=mtbench_verdicts(result, gates)))


def shadow_html(file: Path, summary: Any, db: str | Path | None, gates: Sequence[Gate]) -> None:
    from servecmp.verdicts import verdict_for

    write_html(file, render_shadow(summary, db=db, verdicts=[verdict_for("shadow", summary, gates)]))


def run_html(path: Path, gates: Sequence[Gate] = (), *, kind: str | None = None, show: int | None = None,
             verdicts: Sequence[Verdict] | None = None) -> str:
    """The page of any stored run: an MCQ or MT-Bench run directory or a shadow database (``kind``
    as `servecmp._cli.report.run_kind` detects it; given here to avoid detecting twice)."""
    path = Path(path)
    if kind is None:
        kind = _kind(path)
    if kind == "mcq":
        from servecmp.mcq.compare import compare_run

        cmp = compare_run(path)
        return render_mcq(cmp, run_dir=path, verdicts=mcq_verdicts(cmp, gates) if verdicts is None else verdicts)
    if kind == "mtbench":
        from servecmp.mtbench.run import DEFAULT_SHOW, load_result

        result = load_result(path, show=DEFAULT_SHOW if show is None else show)
        return render_mtbench(result, run_dir=path,
                              verdicts=mtbench_verdicts(result, gates) if verdicts is None else verdicts)
    if kind == "shadow":
        from servecmp.shadow.summary import DEFAULT_WORST, load_summary
        from servecmp.verdicts import verdict_for

        summary = load_summary(path, worst_n=DEFAULT_WORST if show is None else show)
        v = [verdict_for("shadow", summary, gates)] if verdicts is None else verdicts
        return render_shadow(summary, db=path, verdicts=v)
    raise UserError(f"{path}: cannot render a report of kind {kind!r}")


def _kind(path: Path) -> str:
    if path.is_file():
        with path.open("rb") as fh:
            if fh.read(16) == b"SQLite format 3\x00":
                return "shadow"
        raise UserError(f"{path} is neither a run directory nor a shadow database")
    if not path.is_dir():
        raise UserError(f"{path} not found")
    from servecmp.runstore import manifest_kind

    return str(manifest_kind(path))
