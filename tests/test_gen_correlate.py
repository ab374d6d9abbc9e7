"""`servecmp correlate` joins gen runs with MCQ and MT-Bench runs per candidate (by model and URL)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from servecmp._cli.main import build_app
from tests.test_correlate import BASE, CANDIDATES, all_runs

#: Per candidate: the gen run's flip rate and mean teacher-forced KL.
GEN = {"int8": (0.05, 0.01), "fp8": (0.08, 0.02), "int4": (0.30, 0.09), "pruned": (0.25, 0.2)}


def gen_run(root: Path, names: list[str]) -> Path:
    """One gen run with every candidate (summary.json as servecmp.gen_summary/1 lays it out)."""
    d = root / "gen-run"
    d.mkdir()
    (d / "manifest.json").write_text(json.dumps({"kind": "gen", "schema": "servecmp.gen_manifest/1"}))
    cands: list[dict[str, Any]] = []
    for name in names:
        flip, kl = GEN[name]
        cands.append({"name": name, "model": name, "url": CANDIDATES[name][0], "n": 200,
                      "correctness": [{"flips": {"rate": {"rate": flip}}, "delta_acc": {"point": -flip / 2}}],
                      "teacher_forcing": {"kl_mean": {"mean": kl}}})
    (d / "summary.json").write_text(json.dumps({
        "schema": "servecmp.gen_summary/1", "run": {"task": "gsm8k"},
        "endpoints": [{"name": "baseline", "role": "baseline", "model": BASE["model"], "url": BASE["base_url"]}],
        "candidates": cands}))
    return d


def test_gen_columns_and_correlations(tmp_path: Path) -> None:
    names = list(CANDIDATES)
    dirs = [*all_runs(tmp_path, names), gen_run(tmp_path, names)]
    res = CliRunner().invoke(build_app(), ["correlate", *map(str, dirs), "--json", "--plot", str(tmp_path / "p.png")])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    rows = {r["candidate"]["model"]: r for r in out["candidates"]}
    assert len(rows) == 4 and rows["int4"]["gen_flip_rate"] == 0.30 and rows["int4"]["gen_tf_kl"] == 0.09
    assert rows["int4"]["flip_rate"] == 0.10 and rows["int4"]["delta_mtbench"] == -0.9
    by = {(c["x"], c["y"]): c for c in out["correlations"]}
    # Ranks: MCQ flips 1 2 3 4, gen flips 1 2 4 3, ΔMT-Bench 4 3 2 1. Spearman 1 − 6Σd²/(n(n²−1)) with
    # n = 4: Σd² = 2 gives 1 − 12/60 = 0.8; against ΔMT-Bench Σd² = 18 gives 1 − 108/60 = −0.8.
    assert by[("flip_rate", "gen_flip_rate")]["spearman_r"] == pytest.approx(0.8)
    assert by[("gen_flip_rate", "delta_mtbench")]["spearman_r"] == pytest.approx(-0.8)
    table = CliRunner().invoke(build_app(), ["correlate", *map(str, dirs), "--plot", str(tmp_path / "p.png")])
    assert "gen flips" in table.stdout and "30.0%" in table.stdout
