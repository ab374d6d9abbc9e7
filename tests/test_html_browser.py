"""The HTML report in a real browser: headless Chromium renders it (screenshot), its scripts run
(the item filter writes its count into the DOM) and the title and verdict are in the rendered DOM.

Chromium comes from scripts/setup_system.sh in CI; there (CI=true) a missing browser fails the test,
locally it skips.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from servecmp.finish import run_html
from servecmp.html import write_html
from tests._browser import chromium, dump_dom, print_pdf, screenshot
from tests.test_html_page import parse
from tests.test_mcq_multi import SOFT, WRONG, P, make_run


def need_chromium() -> None:
    if chromium() is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("chromium is not installed (scripts/setup_system.sh installs it); CI must not skip this")
        pytest.skip("chromium is not installed")


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(the page, its run directory's name)."""
    tmp = tmp_path_factory.mktemp("browser")
    # Item 0 flips correct→wrong, item 2 changes its answer's weight only.
    run = make_run(tmp, {"baseline": [P, P, P, P], "candidate": [WRONG, P, SOFT, P]})
    out = tmp / "report.html"
    write_html(out, run_html(run, []))
    return out, run.name


def test_chromium_renders_the_report(made: tuple[Path, str], tmp_path: Path) -> None:
    need_chromium()
    page = made[0]
    png = tmp_path / "shot.png"
    screenshot(page, png, width=1280, height=900)
    from PIL import Image

    with Image.open(png) as im:
        assert im.size == (1280, 900)
        # A rendered page, not a blank or error screen: many colours (text, plots, the verdict box).
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 50


def test_the_rendered_dom_has_the_title_verdict_and_ran_its_scripts(made: tuple[Path, str]) -> None:
    need_chromium()
    page, run_name = made
    dom = dump_dom(page)
    doc = parse(dom)
    assert doc.title == f"servecmp mcq — jsonl:/x.jsonl — {run_name}"
    assert "Verdict: No gates given: nothing decided" in doc.text
    # The filter script ran: it wrote how many items it shows (one flipped item, q0).
    assert re.search(r'<span class="count muted">1 shown</span>', dom)
    assert [a["data-item"] for tag, a in doc.elements if tag == "details" and "data-item" in a] == ["q0"]


def test_the_report_prints(made: tuple[Path, str], tmp_path: Path) -> None:
    need_chromium()
    pdf = tmp_path / "report.pdf"
    print_pdf(made[0], pdf)
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF")
    # Several pages: the print stylesheet lets tables and plots flow instead of clipping them.
    assert len(re.findall(rb"/Type\s*/Page[^s]", data)) >= 2
