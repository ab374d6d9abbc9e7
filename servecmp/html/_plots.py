"""Matplotlib figures as inline SVG (Agg backend, imported lazily).

Text stays text (``svg.fonttype = "none"``: the browser draws it with its own sans-serif, so no font
is embedded or fetched and the SVG is a fraction of the size); the XML prolog, DOCTYPE and RDF
metadata, which name w3.org/purl.org addresses, are stripped, and element ids are salted per figure
so several figures on one page never share one.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from servecmp.html._page import esc

if TYPE_CHECKING:
    from matplotlib.figure import Figure

BASE = "#1b6ca8"
CAND = "#d95f02"
PALETTE = ["#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#1b9e77", "#666666"]

_PROLOG = re.compile(r"^.*?(?=<svg)", re.S)
_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.S)
_COMMENT = re.compile(r"<!--.*?-->\s*", re.S)


def figure(width: float = 6.4, height: float = 3.6) -> tuple[Figure, Any]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    return fig, ax


def svg(fig: Figure, name: str) -> str:
    """The figure as an <svg> element (no prolog), ids salted with ``name``."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": name,
                                "font.family": ["sans-serif"]}):
        fig.tight_layout()
        fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    text = _PROLOG.sub("", text, count=1)
    text = _METADATA.sub("", text)
    text = _COMMENT.sub("", text)
    # Namespace declarations are optional for SVG inside HTML and are the only w3.org addresses left:
    # without them the page's markup names no other host at all.
    text = re.sub(r'\s+xmlns(?::xlink)?="[^"]*"', "", text)
    # Group ids such as "figure_1" and "axes_1" repeat in every figure; clip paths and markers are
    # already salted by svg.hashsalt. Prefix the plain ones so each figure's ids are its own.
    slug = re.sub(r"[^A-Za-z0-9]", "", name) or "fig"
    text = re.sub(r'id="((?:figure|axes|patch|line2d|text|matplotlib\.axis|xtick|ytick|legend|'
                  r'PolyCollection|PathCollection|LineCollection|LineCollection|Line2D|FancyBbox)[^"]*)"',
                  lambda m: f'id="{slug}-{m.group(1)}"', text)
    return text


def embed(fig: Figure, name: str, caption: str) -> str:
    """A <figure> holding the SVG and its caption."""
    return f"<figure>{svg(fig, name)}<figcaption>{esc(caption)}</figcaption></figure>"


def errorbars(ax: Any, xs: Sequence[float], ys: Sequence[float | None], lows: Sequence[float | None],
              highs: Sequence[float | None], **kw: Any) -> None:
    """Points with asymmetric interval bars; points without a value are skipped."""
    pts = [(x, y, lo, hi) for x, y, lo, hi in zip(xs, ys, lows, highs, strict=True)
           if y is not None and lo is not None and hi is not None]
    if not pts:
        return
    x = [p[0] for p in pts]
    y = [p[1] for p in pts]
    yerr = [[max(0.0, p[1] - p[2]) for p in pts], [max(0.0, p[3] - p[1]) for p in pts]]
    ax.errorbar(x, y, yerr=yerr, fmt="o", capsize=3, **kw)
