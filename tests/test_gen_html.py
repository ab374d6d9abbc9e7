"""The gen HTML page: every flipped and changed item side by side with the first divergence marked
and a per-token KL strip, escaped, filterable; identical items left out."""

from __future__ import annotations

import json
import re
from pathlib import Path

from servecmp.gen.rundir import load_texts
from servecmp.gen.summary import load_result
from servecmp.html.gen import render_gen
from tests.gen_stub import GenStub, GenStubState
from tests.test_gen_run import BASE, CAND, run_gen
from tests.test_mcq_cli import only_run_dir


def test_page_lists_changed_items_side_by_side(tmp_path: Path) -> None:
    task = tmp_path / "task.jsonl"
    rows = [{"id": "a", "prompt": "Q1 6*7?", "reference": "42"}, {"id": "b", "prompt": "Q2 2+2?", "reference": "4"},
            {"id": "x<script>", "prompt": "Q3 1+1?", "reference": "2"},
            {"id": "d", "prompt": "Q4 3*3?", "reference": "9"}]
    task.write_text("".join(json.dumps(r) + "\n" for r in rows))
    html = tmp_path / "gen.html"
    with (GenStub(GenStubState(model="base", answers=dict(BASE))) as b,
          GenStub(GenStubState(model="cand", answers=dict(CAND))) as c):
        code, _, _ = run_gen("--baseline", b.url, "--candidate", c.url, "--task", f"jsonl:{task}", "--top-k", "5",
                             "--runs-dir", str(tmp_path / "runs"), "--html", str(html))
    assert code == 0
    page = html.read_text()
    kinds = dict(re.findall(r'data-kind="([^"]+)" data-item="([^"]+)"', page))
    # a is identical (left out); b flips correct→wrong, the third wrong→correct, d changed without a flip.
    assert {v: k for k, v in kinds.items()} == {"b": "c2w flip", "x&lt;script&gt;": "w2c flip", "d": "chg"}
    assert "x<script>" not in page
    # b: "It is 4" vs "It is 5": the texts part at character 6, marked on both sides.
    assert '<pre>It is <mark class="div" title="first divergence">4</mark></pre>' in page
    assert '<pre>It is <mark class="div" title="first divergence">5</mark></pre>' in page
    # The KL strip: one cell per token of the baseline's answer ("It is 4": 7 tokens), the 7th outlined.
    item_b = page.split('data-item="b"', 1)[1].split("</details>", 1)[0]
    cells = re.findall(r'<span title="token (\d+): KL', item_b)
    assert cells == [str(i) for i in range(7)]
    assert "outline:2px" in item_b.split('title="token 6:', 1)[1].split("</span>", 1)[0]
    # The same page from the stored run (servecmp report --html reads the run directory).
    run_dir = only_run_dir(tmp_path / "runs")
    again = render_gen(load_result(run_dir), texts=load_texts(run_dir))
    assert re.findall(r'data-item="([^"]+)"', again) == re.findall(r'data-item="([^"]+)"', page)


def test_report_html_and_gates_on_a_stored_run(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from servecmp._cli.main import build_app

    task = tmp_path / "task.jsonl"
    task.write_text(json.dumps({"id": "b", "prompt": "Q2 2+2?", "reference": "4"}) + "\n")
    with (GenStub(GenStubState(model="base", answers=dict(BASE))) as b,
          GenStub(GenStubState(model="cand", answers=dict(CAND))) as c):
        run_gen("--baseline", b.url, "--candidate", c.url, "--task", f"jsonl:{task}", "--no-teacher-forcing",
                "--runs-dir", str(tmp_path / "runs"))
    run_dir = only_run_dir(tmp_path / "runs")
    html, md = tmp_path / "r.html", tmp_path / "s.md"
    res = CliRunner().invoke(build_app(), ["report", str(run_dir), "--html", str(html), "--gate", "c2w<=0.1",
                                           "--summary-md", str(md)])
    # One item, flipped correct→wrong: c2w 1/1, Wilson [20.7%, 100%] lies above 10%: FAIL, exit 1.
    assert isinstance(res.exception, SystemExit) and res.exception.code == 1
    assert 'data-item="b"' in html.read_text() and "c2w" in md.read_text()
