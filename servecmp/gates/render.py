"""A verdict in Markdown (a CI job summary) and in the terminal (rich)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.padding import Padding
from rich.text import Text

from servecmp.errors import EXIT_GATE_FAILED, EXIT_OK
from servecmp.gates.decision import GateResult, Verdict, combine
from servecmp.gates.rules import MAX_ITEMS, format_value

#: What `servecmp.gates` re-exports from this module (its public API).
__all__ = ["render_verdict", "verdict_markdown"]

# ---- rendering --------------------------------------------------------------------------------


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
