"""The page shell shared by every report kind: layout, CSS, the inline sort/filter script, escaping
and number formatting.

Everything a page needs is in the one file: no CDN script, font or image, so a report opens offline
and from a mail attachment. Every text that comes from a run (model names, URLs, questions, answers,
judge explanations) goes through `esc` (html.escape with quotes); the builders below never insert
raw text.
"""

from __future__ import annotations

import html
import math
import platform
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from servecmp import __version__

#: Folded text longer than this many characters goes into a <details> block.
FOLD_CHARS = 600

CSS = """
:root { --fg:#1b1f23; --muted:#5a636e; --line:#d6dae0; --bg:#fff; --head:#f3f5f8;
  --pass:#137333; --fail:#b3261e; --undecided:#9a6700; --cand:#d95f02; --base:#1b6ca8; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
  color: var(--fg); background: var(--bg); margin: 0; }
main { max-width: 1180px; margin: 0 auto; padding: 16px 20px 48px; }
h1 { font-size: 22px; margin: 8px 0 4px; }
h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
h3 { font-size: 15px; margin: 18px 0 6px; }
p, li { max-width: 100ch; }
.muted, caption, .note { color: var(--muted); }
code, pre, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12.5px; }
pre { white-space: pre-wrap; word-break: break-word; background: #f7f8fa; border: 1px solid var(--line);
  padding: 8px; margin: 4px 0; max-height: 32em; overflow: auto; }
table { border-collapse: collapse; margin: 6px 0 12px; font-variant-numeric: tabular-nums; }
caption { caption-side: top; text-align: left; padding: 2px 0 4px; font-size: 13px; }
th, td { border: 1px solid var(--line); padding: 3px 8px; vertical-align: top; }
th { background: var(--head); text-align: left; font-weight: 600; }
td.num, th.num { text-align: right; white-space: nowrap; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th::after { content: " \\2195"; color: #9aa3ad; font-size: 11px; }
table.sortable th.asc::after { content: " \\2191"; color: var(--fg); }
table.sortable th.desc::after { content: " \\2193"; color: var(--fg); }
.wide { overflow-x: auto; max-width: 100%; }
.verdict { border: 2px solid var(--line); border-radius: 6px; padding: 10px 14px; margin: 12px 0; }
.verdict.pass { border-color: var(--pass); } .verdict.fail { border-color: var(--fail); }
.verdict.inconclusive, .verdict.nogates { border-color: var(--undecided); }
.verdict .line { font-size: 17px; font-weight: 700; }
.cards { display: flex; flex-wrap: wrap; gap: 8px; margin: 8px 0; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 4px 10px; background: #fafbfc; }
.card .label { font-size: 12px; color: var(--muted); } .card .value { font-size: 15px; font-weight: 600; }
.verdict table { margin-bottom: 4px; }
.status-pass { color: var(--pass); font-weight: 600; } .status-fail { color: var(--fail); font-weight: 600; }
.status-inconclusive, .status-unavailable { color: var(--undecided); font-weight: 600; }
.figs { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
.figs > .wide { flex: 0 1 520px; } /* a table beside a plot: its caption wraps instead of widening it */
.figs > figure { flex: 1 1 460px; max-width: 600px; }
figure { margin: 6px 0; } figure svg { max-width: 100%; height: auto; }
figcaption { color: var(--muted); font-size: 12.5px; max-width: 640px; }
details { margin: 2px 0; } details > summary { cursor: pointer; }
.item { border-top: 1px solid var(--line); padding: 2px 0; }
.item > summary { list-style-position: inside; }
.tag { display: inline-block; padding: 0 6px; border-radius: 8px; font-size: 12px; background: #eef1f5; }
.tag.c2w { background: #fde2e0; } .tag.w2c { background: #dff3e4; } .tag.chg { background: #fff1c2; }
.side { display: grid; grid-template-columns: 1fr 1fr; gap: 10px; }
.side > div { min-width: 0; }
.filters { display: flex; flex-wrap: wrap; gap: 10px; align-items: center; margin: 6px 0;
  position: sticky; top: 0; background: var(--bg); padding: 6px 0; z-index: 1; }
.filters input[type=search] { width: 22em; }
nav.toc { font-size: 13px; } nav.toc a { margin-right: 10px; }
.gold { font-weight: 700; }
dl.settings { display: grid; grid-template-columns: max-content 1fr max-content 1fr; gap: 2px 14px;
  margin: 6px 0; font-size: 13px; }
@media (max-width: 1000px) { dl.settings { grid-template-columns: max-content 1fr; } }
dl.settings dt { color: var(--muted); } dl.settings dd { margin: 0; overflow-wrap: anywhere; }
@media (max-width: 800px) { .side { grid-template-columns: 1fr; } }
@media print {
  .filters, nav.toc { display: none; }
  main { max-width: none; padding: 0; }
  h2 { break-after: avoid; } table, figure { break-inside: avoid; }
  pre { max-height: none; overflow: visible; }
  a { color: inherit; text-decoration: none; }
}
"""

#: Sorting for every table.sortable (click a header; cells sort by data-v when present, else by
#: their text, numbers numerically) and the item filter (text search + kind + group selects).
SCRIPT = """
(function () {
  function key(cell) {
    var v = cell.getAttribute('data-v');
    if (v === null) v = cell.textContent.trim();
    var x = parseFloat(v);
    return (v !== '' && !isNaN(x) && isFinite(v.replace('%', ''))) ? x : v.toLowerCase();
  }
  document.querySelectorAll('table.sortable').forEach(function (table) {
    table.querySelectorAll('thead th').forEach(function (th, col) {
      th.addEventListener('click', function () {
        var asc = !th.classList.contains('asc');
        table.querySelectorAll('thead th').forEach(function (h) { h.classList.remove('asc', 'desc'); });
        th.classList.add(asc ? 'asc' : 'desc');
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = key(a.cells[col]), y = key(b.cells[col]);
          if (typeof x !== typeof y) { x = String(x); y = String(y); }
          return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
  document.querySelectorAll('.filters[data-for]').forEach(function (bar) {
    var list = document.getElementById(bar.getAttribute('data-for'));
    var inputs = bar.querySelectorAll('input, select');
    var count = bar.querySelector('.count');
    function apply() {
      var text = '', sel = {};
      inputs.forEach(function (el) {
        if (el.type === 'search') text = el.value.toLowerCase();
        else if (el.tagName === 'SELECT') sel[el.name] = el.value;
      });
      var shown = 0;
      list.querySelectorAll('[data-kind]').forEach(function (it) {
        var ok = (!text || it.textContent.toLowerCase().indexOf(text) >= 0);
        for (var k in sel) { if (sel[k] && it.getAttribute('data-' + k).split(' ').indexOf(sel[k]) < 0) ok = false; }
        it.style.display = ok ? '' : 'none';
        if (ok) shown++;
      });
      if (count) count.textContent = shown + ' shown';
    }
    inputs.forEach(function (el) { el.addEventListener('input', apply); el.addEventListener('change', apply); });
    apply();
  });
})();
"""


def esc(text: object) -> str:
    """Any text from a run, safe in an element or a quoted attribute."""
    return html.escape(str(text), quote=True)


def finite(x: float | None) -> bool:
    return x is not None and isinstance(x, int | float) and math.isfinite(x)


def pct(x: float | None, digits: int = 1, signed: bool = False) -> str:
    if not finite(x):
        return "–"
    assert x is not None
    return f"{100 * x:{'+' if signed else ''}.{digits}f}%"


def num(x: float | None, digits: int = 4, signed: bool = False) -> str:
    if not finite(x):
        return "–"
    return f"{x:{'+' if signed else ''}.{digits}f}"


def sci(x: float | None, digits: int = 3, signed: bool = False) -> str:
    """Small quantities (KL, p-values) without losing them to rounding."""
    if not finite(x):
        return "–"
    assert x is not None
    if x == 0 or 1e-3 <= abs(x) < 1e4:
        return num(x, digits + 1, signed)
    return f"{x:{'+' if signed else ''}.{digits - 1}e}"


def pval(p: float | None) -> str:
    if not finite(p):
        return "–"
    assert p is not None
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def interval(low: float | None, high: float | None, fmt: str = "pct", digits: int = 1, signed: bool = False) -> str:
    f = pct if fmt == "pct" else (sci if fmt == "sci" else num)
    if not finite(low) or not finite(high):
        return ""
    return f"[{f(low, digits, signed)}, {f(high, digits, signed)}]"


@dataclass
class Cell:
    """A table cell: its text, the raw value it shows (data-v: sorting, and tests read it back), and
    an optional machine name (data-metric) of the summary field it comes from."""

    text: str
    value: float | int | str | None = None
    metric: str | None = None
    numeric: bool = True
    raw_html: bool = False

    def render(self, tag: str = "td") -> str:
        attrs = ""
        if self.value is not None and (not isinstance(self.value, float) or math.isfinite(self.value)):
            attrs += f' data-v="{esc(repr(self.value) if isinstance(self.value, float) else self.value)}"'
        if self.metric:
            attrs += f' data-metric="{esc(self.metric)}"'
        if self.numeric:
            attrs += ' class="num"'
        body = self.text if self.raw_html else esc(self.text)
        return f"<{tag}{attrs}>{body}</{tag}>"


CellLike = Cell | str | int | float | None


def _cell(c: Any) -> Cell:
    if isinstance(c, Cell):
        return c
    if c is None:
        return Cell("–", numeric=False)
    if isinstance(c, bool):
        return Cell("yes" if c else "no", numeric=False)
    if isinstance(c, int):
        return Cell(f"{c:,}", c)
    if isinstance(c, float):
        return Cell(num(c), c)
    return Cell(c, numeric=False)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, caption: str | None = None,
          sortable: bool = True, table_id: str | None = None, numeric_cols: Sequence[int] | None = None) -> str:
    """An HTML table; `numeric_cols` right-aligns those header cells (cells decide for themselves)."""
    numeric = set(numeric_cols or ())
    cls = ' class="sortable"' if sortable else ""
    tid = f' id="{esc(table_id)}"' if table_id else ""
    out = [f"<div class=\"wide\"><table{cls}{tid}>"]
    if caption:
        out.append(f"<caption>{esc(caption)}</caption>")
    num_attr = ' class="num"'
    out.append("<thead><tr>" + "".join(
        f"<th{num_attr if i in numeric else ''}>{esc(h)}</th>" for i, h in enumerate(headers)) + "</tr></thead>")
    out.append("<tbody>")
    for row in rows:
        out.append("<tr>" + "".join(_cell(c).render() for c in row) + "</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def fold(text: str, *, label: str = "show", limit: int = FOLD_CHARS, pre: bool = True) -> str:
    """A long text folded into <details> (short ones shown as they are)."""
    body = f"<pre>{esc(text)}</pre>" if pre else f"<p>{esc(text)}</p>"
    if len(text) <= limit:
        return body
    first = " ".join(text[:160].split())
    return f"<details><summary>{esc(label)} ({len(text):,} characters): {esc(first)}…</summary>{body}</details>"


def settings_list(pairs: Iterable[tuple[str, object]]) -> str:
    items = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in pairs if v is not None and v != "")
    return f"<dl class=\"settings\">{items}</dl>"


def versions() -> list[tuple[str, object]]:
    """The versions of what rendered the page (the run's own servecmp version is in its settings)."""
    return [("rendered by", f"servecmp {__version__}, Python {platform.python_version()}"),
            ("rendered at", datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"))]


@dataclass
class Page:
    """Sections in order; `render` wraps them in the document."""

    title: str
    subtitle: str = ""
    sections: list[tuple[str, str, str]] = field(default_factory=list)  # (id, heading, body html)
    head_html: str = ""

    def add(self, sid: str, heading: str, body: str) -> None:
        self.sections.append((sid, heading, body))

    def render(self) -> str:
        toc = " ".join(f'<a href="#{esc(s)}">{esc(h)}</a>' for s, h, _ in self.sections if h)
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            # No external resource may load, even by mistake: the page itself forbids it.
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
            "style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">",
            f"<title>{esc(self.title)}</title>",
            f"<style>{CSS}</style></head><body><main>",
            f"<h1>{esc(self.title)}</h1>",
        ]
        if self.subtitle:
            parts.append(f"<p class=\"muted\">{esc(self.subtitle)}</p>")
        parts.append(self.head_html)
        if toc:
            parts.append(f"<nav class=\"toc\">{toc}</nav>")
        for sid, heading, body in self.sections:
            parts.append(f"<section id=\"{esc(sid)}\">")
            if heading:
                parts.append(f"<h2>{esc(heading)}</h2>")
            parts.append(body)
            parts.append("</section>")
        parts.append(f"</main><script>{SCRIPT}</script></body></html>")
        return "\n".join(parts)
