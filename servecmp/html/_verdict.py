"""The verdict block at the top of every page (`servecmp.verdicts` / `servecmp.gates`).

The numbers are the verdict's own (`verdict_json`), formatted as the terminal block formats them;
with no gates the block says that nothing was decided rather than printing a "PASS".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from servecmp.html._page import Cell, esc, table

if TYPE_CHECKING:
    from servecmp.gates import Verdict


#: An example gate per run kind, for the line that says none was given.
EXAMPLE_GATE = {"mcq": "flips<=5%", "mtbench": "delta_mtbench>=-0.25", "shadow": "answer_differs<=5%"}


def _overall(verdicts: Sequence[Verdict], kind: str) -> tuple[str, str]:
    """(css class, one line) over every candidate."""
    from servecmp.gates import combine
    from servecmp.verdicts import verdict_json

    if not any(v.gates for v in verdicts):
        example = EXAMPLE_GATE.get(kind, "METRIC<=VALUE")
        return "nogates", f"No gates given: nothing decided (add --gate '{example}' ... to decide)"
    if len(verdicts) == 1:
        return verdicts[0].status, verdicts[0].summary
    data = verdict_json(list(verdicts))
    code = combine(verdicts)
    failed = sum(v.status == "fail" for v in verdicts)
    undecided = sum(v.status == "inconclusive" for v in verdicts)
    return str(data["status"]), (f"{str(data['status']).upper()} (exit {code}): {len(verdicts)} candidates, "
                                 f"{failed} failed, {undecided} undecided")


def verdict_html(verdicts: Sequence[Verdict], *, kind: str, reading: Sequence[str] = (),
                 headline: Sequence[tuple[str, str]] = ()) -> str:
    """The block: the overall line, ``headline`` (the run's key numbers as (label, value) cards),
    per candidate its gates (estimate [95% interval], n, status, items to decide), the verdict's
    notes, then ``reading`` (plain sentences about the run)."""
    from servecmp.gates import format_value

    cls, line = _overall(verdicts, kind) if verdicts else ("nogates", "No verdict")
    out = [f'<div class="verdict {esc(cls)}" id="verdict"><div class="line" data-verdict="{esc(cls)}">'
           f"Verdict: {esc(line)}</div>"]
    if headline:
        out.append('<div class="cards">' + "".join(
            f'<div class="card"><div class="label">{esc(k)}</div><div class="value">{esc(v)}</div></div>'
            for k, v in headline) + "</div>")
    for v in verdicts:
        if v.gates:
            rows = []
            for r in v.gates:
                info = r.info
                est = format_value(r.estimate, info) if r.estimate is not None else "–"
                if r.low is not None and r.high is not None:
                    est += f" [{format_value(r.low, info)}, {format_value(r.high, info)}]"
                items = ("never" if r.never else "–" if r.items_to_decide is None else f"{r.items_to_decide:,}")
                rows.append([Cell(r.metric, numeric=False), Cell(r.rule, numeric=False),
                             Cell(est, r.estimate, metric=f"gate.{r.metric}"), r.n,
                             Cell(f'<span class="status-{esc(r.status)}">{esc(r.status.upper())}</span>',
                                  r.status, numeric=False, raw_html=True),
                             Cell(items, r.items_to_decide), Cell(r.reason, numeric=False)])
            head = f"{v.candidate}: {v.summary}" if v.candidate else v.summary
            out.append(table(["metric", "rule", "estimate [95% interval]", "n", "status", "items to decide", "why"],
                             rows, caption=head, sortable=False, numeric_cols=(2, 3, 5)))
        for note in v.notes:
            who = f"{v.candidate}: " if v.candidate and len(verdicts) > 1 else ""
            out.append(f'<p class="note">{esc(who + note)}</p>')
    for sentence in reading:
        out.append(f"<p>{esc(sentence)}</p>")
    out.append("</div>")
    return "".join(out)
