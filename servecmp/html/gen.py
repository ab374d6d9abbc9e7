"""The HTML page of a `servecmp gen` run: the verdict, the run's settings, per-endpoint accuracy,
each candidate's comparison, and every flipped and changed item side by side (question, gold, both
answers with the first divergence marked, the extracted answers, a per-token KL strip along the
baseline's answer), filterable by kind and text.

Texts come from the run directory (items.jsonl, records.jsonl), read by the gen adapter
(`servecmp.gen.rundir.load_texts`) before rendering; without them (the `--from-lm-eval` comparison has
no run directory) only the summary's rows are shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from servecmp.html._page import Cell, Page, esc, fold, interval, num, pct, settings_list, table, versions
from servecmp.html._verdict import verdict_html

if TYPE_CHECKING:
    from servecmp.gates import Verdict
    from servecmp.gen.rundir import GenTexts
    from servecmp.gen.summary import Comparison, GenSummary, ItemRow

STRIP_CSS = """
.kl { display: flex; flex-wrap: wrap; gap: 0; margin: 4px 0; font-family: ui-monospace, monospace; font-size: 12px; }
.kl span { padding: 1px 0; white-space: pre; }
mark.div { background: #ffd54f; outline: 1px solid #b58900; }
"""


def _marked(text: str, pos: int | None) -> str:
    """The answer with its first differing character marked (the character where the two texts part,
    whatever unit the summary counts divergence in)."""
    if pos is None:
        return f"<pre>{esc(text)}</pre>"
    return (f"<pre>{esc(text[:pos])}<mark class=\"div\" title=\"first divergence\">"
            f"{esc(text[pos:pos + 1] or '∎')}</mark>{esc(text[pos + 1:])}</pre>")


def _strip(kl: list[float] | None, div: int | None) -> str:
    if not kl:
        return ""
    top = max(kl) or 1.0
    cells = []
    for i, v in enumerate(kl):
        shade = min(1.0, v / top)
        mark = " outline:2px solid #b58900;" if div is not None and i == div else ""
        label = "&nbsp;"
        cells.append(f"<span title=\"token {i}: KL {v:.4g}\" style=\"background: rgba(179,38,30,{shade:.2f});"
                     f"min-width:6px;{mark}\">{label}</span>")
    return ("<div class=\"muted\">per-token KL(baseline ‖ candidate) along the baseline's answer (darker = larger; "
            "outlined: the first divergence)</div><div class=\"kl\">" + "".join(cells) + "</div>")


def _item_html(c: Comparison, r: ItemRow, items: dict[str, dict[str, Any]],
               recs: dict[tuple[str, str], dict[str, Any]], unit: str) -> str:
    kind = r.flip or ("chg" if not r.identical else "same")
    label = {"c2w": "correct→wrong", "w2c": "wrong→correct", "chg": "changed"}[kind]
    item = items.get(r.item_id, {})
    rb, rc = recs.get(("baseline", r.item_id)), recs.get((c.name, r.item_id))
    head = (f"<span class=\"tag {kind}\">{label}</span> <span class=\"mono\">{esc(r.item_id)}</span> — gold "
            f"<b>{esc(item.get('gold', '?'))}</b>, baseline {esc(r.base_answer)} → {esc(c.name)} {esc(r.cand_answer)}"
            + ("" if r.first_divergence is None else f"; parts at {r.first_divergence}")
            + ("" if r.tf_kl_max is None else f"; KL max {r.tf_kl_max:.3g} at {r.tf_kl_max_pos}"))
    body = ""
    if item:
        body += fold(str(item.get("question", "")), label="question")
    if rb is not None and rc is not None:
        from servecmp.metrics.gen import first_divergence

        tb, tc = str(rb.get("text", "")), str(rc.get("text", ""))
        at = first_divergence(tb, tc)
        body += ("<div class=\"side\"><div><h3>baseline</h3>"
                 + _marked(tb, at)
                 + f"<p>extracted: {esc(r.base_answer)} ({'correct' if r.base_correct else 'wrong'})</p></div>"
                 + f"<div><h3>{esc(c.name)}</h3>"
                 + _marked(tc, at)
                 + f"<p>extracted: {esc(r.cand_answer)} ({'correct' if r.cand_correct else 'wrong'})</p></div></div>")
        body += _strip(r.tf_kl, r.first_divergence if unit == "tokens" else None)
    return (f"<details class=\"item\" data-kind=\"{kind}{' flip' if r.flip else ''}\" data-item=\"{esc(r.item_id)}\">"
            f"<summary>{head}</summary>{body}</details>")


def _comparison(c: Comparison, s: GenSummary, items: dict[str, dict[str, Any]],
                recs: dict[tuple[str, str], dict[str, Any]]) -> str:
    rows: list[list[Any]] = []
    for k in c.correctness:
        f = k.flips
        rows.append([f"flips ({k.extraction})", Cell(pct(f.rate.rate), f.rate.rate, metric="flips"),
                     interval(f.rate.low, f.rate.high), f"c→w {f.correct_to_wrong}, w→c {f.wrong_to_correct}, "
                     f"McNemar p={num(f.mcnemar_p, 3)}"])
        d = k.delta_acc
        rows.append([f"Δ accuracy ({k.extraction})", Cell(pct(d.point, signed=True), d.point, metric="delta_acc"),
                     interval(d.low, d.high, signed=True), f"n={d.n}"])
    if c.identical is not None:
        rows.append(["identical output", Cell(pct(c.identical.rate), c.identical.rate, metric="identical"),
                     interval(c.identical.low, c.identical.high), f"{c.identical.count}/{c.identical.n}"])
    if c.first_divergence is not None and c.first_divergence.n:
        fd = c.first_divergence
        rows.append([f"first divergence ({s.run.divergence_unit})", Cell(num(fd.median, 1), fd.median),
                     "", f"median; mean {num(fd.mean, 1)}, n={fd.n}"])
    lr = c.length_ratio
    rows.append(["length ratio", Cell(num(lr.point, 3), lr.point, metric="length_ratio"),
                 interval(lr.low, lr.high, fmt="num", digits=3), f"n={lr.n}"])
    tf = c.teacher_forcing
    if tf is not None and tf.kl_mean is not None:
        m = tf.kl_mean
        rows.append(["teacher-forced KL per token", Cell(num(m.mean), m.mean, metric="tf_kl"),
                     interval(m.mean_ci.low, m.mean_ci.high, fmt="num", digits=4), f"n={m.n}"])
    elif tf is not None:
        rows.append(["teacher-forced KL", "unavailable", "", tf.unavailable or ""])
    shown = [r for r in c.items if r.flip or not r.identical]
    order = {"c2w": 0, "w2c": 1}
    shown.sort(key=lambda r: (order.get(r.flip or "", 2), r.first_divergence if r.first_divergence is not None else 0))
    list_id = f"{c.name}-items".replace(" ", "_")
    bar = (f'<div class="filters" data-for="{esc(list_id)}"><input type="search" placeholder="filter: words, id" '
           f'aria-label="filter items"><select name="kind" aria-label="kind"><option value="">flips and changes'
           f'</option><option value="flip">flips only</option><option value="c2w">correct→wrong</option>'
           f'<option value="w2c">wrong→correct</option><option value="chg">changed, no flip</option></select>'
           f'<span class="count muted"></span></div>')
    items_html = "".join(_item_html(c, r, items, recs, s.run.divergence_unit) for r in shown)
    return (table(["measure", "value", "95% interval", "detail"], rows, sortable=False)
            + f"<p class=\"muted\">{len(shown):,} items flipped or changed of {c.n:,}.</p>"
            + bar + f"<div id=\"{esc(list_id)}\">{items_html}</div>")


def render_gen(summary: GenSummary, *, texts: GenTexts | None = None, verdicts: Sequence[Verdict] | None = None
               ) -> str:
    s = summary
    page = Page(title=f"servecmp gen: {s.run.task}", subtitle=f"{s.run.n_items} of {s.run.n_items_planned} items",
                head_html=f"<style>{STRIP_CSS}</style>")
    page.add("verdict", "", verdict_html(list(verdicts or []), kind="gen", reading=s.notes))
    page.add("settings", "Run", settings_list([
        ("task", s.run.task), ("source", s.run.source), ("api", s.run.api), ("max tokens", s.run.max_tokens),
        ("samples", s.run.samples), ("temperature", s.run.temperature),
        ("extractions", ", ".join(s.run.extractions)), ("divergence unit", s.run.divergence_unit),
        *((f"{e.name}", f"{e.model} at {e.url}") for e in s.endpoints),
        *((("stored baseline", f"run {b.run_dir}, made {b.finished_at or b.started_at}"),)
          if (b := s.run.stored_baseline) is not None else ()), *versions()]))
    rows = []
    for e in s.endpoints:
        rows.append([e.name, e.model, *(Cell(pct(a.rate), a.rate) for a in e.accuracy),
                     Cell(pct(e.no_answer.rate), e.no_answer.rate), Cell(pct(e.truncated.rate), e.truncated.rate),
                     e.mean_completion_tokens])
    page.add("endpoints", "Endpoints", table(
        ["endpoint", "model", *(f"accuracy ({x})" for x in s.run.extractions), "no answer", "truncated",
         "mean tokens"], rows))
    items, recs = (texts.items, texts.records) if texts is not None else ({}, {})
    for c in [*s.candidates, *s.floors]:
        page.add(f"cmp-{c.name}", f"{c.name} vs baseline", _comparison(c, s, items, recs))
    return page.render()
