"""The HTML page shell (servecmp.html._page / __init__): escaping, self-containment, bad --html paths.

Also the parsing helpers the other test_html_* files use: `parse` reads a page with the stdlib
html.parser into its title, every element's attributes, the `data-metric` cells (the summary field a
number comes from, with its raw value in `data-v` and its text) and the text; `external_refs` lists
every reference to another host a browser could follow.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

from servecmp.errors import UserError
from servecmp.html import check_writable, write_html
from servecmp.html._page import Cell, Page, esc, fold, pct, table

#: Attributes whose value a browser fetches or navigates to.
URL_ATTRS = {"src", "href", "xlink:href", "action", "formaction", "poster", "srcset", "data", "background",
             "manifest", "ping", "codebase", "cite", "longdesc", "usemap"}
EXTERNAL = re.compile(r"^\s*(?:https?:|//|ftp:|ws:|wss:)", re.I)
CSS_URL = re.compile(r"url\(\s*['\"]?([^'\")]*)", re.I)


@dataclass
class Parsed:
    title: str = ""
    elements: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    #: data-metric -> (data-v, "" when the cell has none; text of the element)
    metrics: dict[str, tuple[str, str]] = field(default_factory=dict)
    styles: list[str] = field(default_factory=list)
    scripts: list[str] = field(default_factory=list)
    text: str = ""


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out = Parsed()
        self.stack: list[tuple[str, str | None, str, list[str]]] = []
        self.in_title = False
        self.raw: str | None = None
        self.texts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.out.elements.append((tag, a))
        if tag == "title":
            self.in_title = True
        if tag in ("style", "script"):
            self.raw = tag
            self.raw_text: list[str] = []
        if "data-metric" in a:
            self.stack.append((tag, a["data-metric"], a.get("data-v", ""), []))
        elif self.stack:
            self.stack.append((tag, None, "", []))

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.in_title = False
        if tag in ("style", "script") and self.raw == tag:
            (self.out.styles if tag == "style" else self.out.scripts).append("".join(self.raw_text))
            self.raw = None
        if self.stack and self.stack[-1][0] == tag:
            _, metric, value, texts = self.stack.pop()
            text = "".join(texts)
            if metric is not None:
                self.out.metrics[metric] = (value, " ".join(text.split()))
            if self.stack:
                self.stack[-1][3].append(text)

    def handle_data(self, data: str) -> None:
        if self.raw is not None:
            self.raw_text.append(data)
            return
        if self.in_title:
            self.out.title += data
        self.texts.append(data)
        if self.stack:
            self.stack[-1][3].append(data)


def parse(html: str) -> Parsed:
    p = _Parser()
    p.feed(html)
    p.close()
    p.out.text = " ".join("".join(p.texts).split())
    return p.out


def external_refs(html: str) -> list[str]:
    """Everything in the page that would make a browser contact another host: URL attributes, CSS
    url()/@import (in <style> and style=""), and elements that load by existing (<link>, <iframe>,
    <object>, <embed>, <script src>); text content is inert and is not looked at."""
    doc = parse(html)
    found = []
    for tag, attrs in doc.elements:
        if tag in ("link", "iframe", "object", "embed", "base", "audio", "video", "source", "track"):
            found.append(f"<{tag}>")
        if tag == "meta" and attrs.get("http-equiv", "").lower() == "refresh":
            found.append("<meta refresh>")
        for k, v in attrs.items():
            if k in URL_ATTRS and (EXTERNAL.match(v) or (v and not v.startswith(("#", "data:")))):
                found.append(f"{tag} {k}={v}")
            if k == "style":
                found += [f"style url({u})" for u in CSS_URL.findall(v) if not u.startswith("#")]
    for css in doc.styles:
        found += [f"css url({u})" for u in CSS_URL.findall(css) if not u.startswith(("#", "data:"))]
        if "@import" in css:
            found.append("css @import")
    for js in doc.scripts:
        if re.search(r"https?://|fetch\(|XMLHttpRequest|import\(", js):
            found.append("script network")
    return found


def fpct(x: float | None, signed: bool = False) -> str:
    """The page's percent format, written out again here."""
    return "–" if x is None else f"{100 * x:{'+' if signed else ''}.1f}%"


def assert_self_contained(html: str) -> None:
    assert external_refs(html) == []
    assert html.startswith("<!DOCTYPE html>")
    assert "default-src 'none'" in html  # the CSP meta tag: nothing loads even if a reference slipped in


# ---- the shell itself ------------------------------------------------------------------------------


def test_every_text_is_escaped_and_nothing_external() -> None:
    evil = '<script>alert(1)</script><img src="http://evil.example/x.png"> & "quotes"'
    page = Page(title=evil, subtitle=evil)
    page.add("s", evil, table([evil], [[Cell(evil, 1.5, metric="m"), evil]]) + fold(evil * 20))
    html = page.render()
    doc = parse(html)
    assert doc.title == evil
    assert not any(tag == "img" for tag, _ in doc.elements)
    assert [s for s in doc.scripts if "alert" in s] == []
    assert doc.metrics["m"] == ("1.5", evil)
    assert evil in doc.text  # shown, as text
    assert_self_contained(html)


def test_external_refs_finds_what_a_browser_would_fetch() -> None:
    for bad in ('<img src="https://cdn.example/a.png">', '<script src="//cdn.example/a.js"></script>',
                '<link rel="stylesheet" href="x.css">', '<div style="background:url(http://x/y.png)"></div>',
                '<style>@import "https://fonts.example/f.css";</style>', '<a href="http://example.com">x</a>'):
        assert external_refs(f"<html><body>{bad}</body></html>"), bad
    ok = '<a href="#verdict">v</a><p>see http://example.com (text)</p><svg><use xlink:href="#m1"/></svg>'
    assert external_refs(f"<html><body>{ok}</body></html>") == []


def test_fold_keeps_short_texts_open_and_folds_long_ones() -> None:
    assert "<details>" not in fold("short")
    long = "word " * 200
    assert fold(long).startswith("<details><summary>show (1,000 characters)")
    assert esc("<a>") == "&lt;a&gt;"
    assert pct(0.1234) == "12.3%" and pct(None) == "–" and pct(-0.5, signed=True) == "-50.0%"


def test_check_writable_refuses_bad_paths_with_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"--html .*/absent/x.html: directory .*/absent does not exist"):
        check_writable(tmp_path / "absent" / "x.html")
    with pytest.raises(UserError, match="is a directory"):
        check_writable(tmp_path)
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(UserError, match="not writable"):
            check_writable(locked / "x.html")
    out = tmp_path / "r.html"
    write_html(out, "<!DOCTYPE html><title>t</title>")
    assert out.read_text() == "<!DOCTYPE html><title>t</title>"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left behind


def test_plot_labels_from_a_run_are_escaped_too() -> None:
    from servecmp.html._plots import figure, svg

    fig, ax = figure()
    ax.annotate('<script>alert(1)</script>&', (0.5, 0.5))  # e.g. a candidate's name on a scatter plot
    out = svg(fig, "t")
    assert "<script>" not in out and "&lt;script&gt;" in out
    assert out.startswith("<svg") and "http" not in out  # no prolog, metadata or namespace addresses
