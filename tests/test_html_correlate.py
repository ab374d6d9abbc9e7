"""`servecmp correlate ... --html`: the per-candidate table and the correlations equal the --json
report's, with the flips-vs-ΔMT-Bench and flips-vs-KL scatter plots inline (test_correlate's four
synthetic candidates)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from servecmp._cli.main import build_app
from tests.test_correlate import CANDIDATES, all_runs
from tests.test_html_page import assert_self_contained, parse


def test_correlate_page(tmp_path: Path) -> None:
    runs = [str(p) for p in all_runs(tmp_path, list(CANDIDATES))]
    out = tmp_path / "corr.html"
    res = CliRunner().invoke(build_app(), ["correlate", *runs, "--plot", str(tmp_path / "p.png"), "--json",
                                           "--html", str(out)])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    html = out.read_text(encoding="utf-8")
    assert_self_contained(html)
    doc = parse(html)
    m = doc.metrics
    assert doc.title == "servecmp correlate — candidates against one baseline"
    for row in report["candidates"]:
        model = row["candidate"]["model"]
        for key in ("flip_rate", "kl", "delta_mtbench", "delta_accuracy"):
            assert float(m[f"{model}:{key}"][0]) == row[key]
    for c in report["correlations"]:
        assert float(m[f"corr.{c['x']}.{c['y']}.spearman"][0]) == c["spearman_r"]
    assert "Flips vs ΔMT-Bench, one point per candidate." in doc.text
    assert "Flips vs KL, one point per candidate." in doc.text
    assert html.count("<svg") == 2
    bad = CliRunner().invoke(build_app(), ["correlate", *runs, "--html", str(tmp_path / "none" / "x.html")])
    assert bad.exit_code != 0 and "does not exist" in str(bad.exception)
