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

The commands reach these pages through the finish step (`servecmp.finish`: each run kind's adapter
renders its result; `servecmp.finish.run_html(path, gates)` renders any stored run); `write_html(file, text)` writes a
page (UserError, one line, when the file cannot be written) and `check_writable(file)` lets a command
refuse a bad ``--html`` before a long run. Renderers compute nothing: they show what the kind's
result holds. Every text from a run is escaped.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from servecmp.errors import UserError

__all__ = ["check_writable", "render_correlate", "render_mcq", "render_mtbench", "render_shadow", "write_html"]


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
