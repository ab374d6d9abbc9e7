"""`servecmp correlate` on synthetic run directories: pairing, correlations, plot, errors."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from servecmp import correlate as corr
from servecmp._cli.main import build_app
from servecmp.errors import UserError

BASE = {"role": "baseline", "base_url": "http://127.0.0.1:8001/v1", "model": "smollm2-bf16"}
# candidate: (url, Δaccuracy, flip rate, option KL, ΔMT-Bench)
CANDIDATES = {
    "int8": ("http://127.0.0.1:8002", -0.001, 0.02, 0.01, -0.1),
    "fp8": ("http://127.0.0.1:8003/v1", -0.005, 0.04, 0.03, -0.3),
    "int4": ("http://127.0.0.1:8004/v1/", -0.02, 0.10, 0.08, -0.9),
    "pruned": ("http://127.0.0.1:8005/v1", 0.01, 0.20, 0.25, -2.0),
}


def _manifest(kind: str, model: str, url: str, task: str) -> dict[str, Any]:
    return {
        "kind": kind, "servecmp_version": "0.1.0", "task": task, "task_fingerprint": "f",
        "prompt_format_hash": "h", "n_items": 100, "started_at": "2026-01-01T00:00:00+00:00",
        "endpoints": [BASE, {"role": "candidate", "base_url": url, "model": model}],
    }  # fmt: skip


def _run(root: Path, name: str, manifest: dict[str, Any], summary: dict[str, Any]) -> Path:
    d = root / name
    d.mkdir()
    (d / "manifest.json").write_text(json.dumps(manifest))
    (d / "summary.json").write_text(json.dumps(summary))
    return d


def mcq_run(root: Path, model: str, url: str, dacc: float, flip: float, kl: float) -> Path:
    summary = {
        "schema": "servecmp.mcq_summary/1", "n_items": 1000,
        "accuracy": {"diff": {"point": dacc, "low": None, "high": None, "n": 1000}},
        "flips": {"n": 1000, "flips": round(flip * 1000), "rate": {"count": round(flip * 1000), "n": 1000,
                                                                  "rate": flip, "low": 0, "high": 1}},
        "option_kl": {"n": 1000, "mean": kl}, "topk_kl": None,
    }  # fmt: skip
    return _run(root, f"mcq-{model}", _manifest("mcq", model, url, "mmlu"), summary)


def mt_run(root: Path, model: str, url: str, delta: float) -> Path:
    summary = {"kind": "mtbench", "delta": {"point": delta, "low": delta - 0.5, "high": delta + 0.5, "n": 80}}
    return _run(root, f"mt-{model}", _manifest("mtbench", model, url, "mt_bench"), summary)


def all_runs(root: Path, names: list[str]) -> list[Path]:
    dirs = []
    for name in names:
        url, dacc, flip, kl, dmt = CANDIDATES[name]
        dirs += [mcq_run(root, name, url, dacc, flip, kl), mt_run(root, name, url, dmt)]
    return dirs


def _pearson_reference(x: list[float], y: list[float]) -> tuple[float, float]:
    """r, and the exact permutation p by brute force over every pairing of x with y, two-sided as
    scipy defines it for permutation tests: twice the smaller one-sided tail, capped at 1."""
    r = float(np.corrcoef(x, y)[0, 1])
    rs = [float(np.corrcoef(x, list(py))[0, 1]) for py in itertools.permutations(y)]
    low = sum(v <= r + 1e-12 for v in rs) / len(rs)
    high = sum(v >= r - 1e-12 for v in rs) / len(rs)
    return r, min(1.0, 2 * min(low, high))


def test_pairs_by_candidate_and_correlates(tmp_path: Path) -> None:
    runs = [corr.read_run(d) for d in all_runs(tmp_path, list(CANDIDATES))]
    rows, warnings = corr.pair_runs(runs)
    assert warnings == []
    assert [r.candidate.model for r in rows] == list(CANDIDATES)
    int4 = rows[2]
    assert int4.candidate.url == "http://127.0.0.1:8004/v1"  # trailing slash normalised
    assert (int4.delta_accuracy, int4.flip_rate, int4.flips, int4.kl, int4.delta_mtbench) == (
        -0.02, 0.10, 100, 0.08, -0.9,
    )  # fmt: skip
    results = {(c.x, c.y): c for c in corr.correlations(rows)}
    flips_kl = results[("flip_rate", "kl")]
    assert flips_kl.note is None and flips_kl.result.n == 4
    assert flips_kl.result.spearman_r == pytest.approx(1.0)
    assert results[("flip_rate", "delta_mtbench")].result.spearman_r == pytest.approx(-1.0)
    # Ranks: Δacc (3, 2, 1, 4) vs ΔMT (4, 3, 2, 1): Σd² = 12, ρ = 1 - 6·12 / (4·15) = -0.2
    assert results[("delta_accuracy", "delta_mtbench")].result.spearman_r == pytest.approx(-0.2)
    flips = [v[2] for v in CANDIDATES.values()]
    dmt = [v[4] for v in CANDIDATES.values()]
    r, p = _pearson_reference(flips, dmt)
    got = results[("flip_rate", "delta_mtbench")].result
    assert got.pearson_r == pytest.approx(r) and got.pearson_p == pytest.approx(p)


def test_fewer_than_three_candidates_still_gives_the_table(tmp_path: Path) -> None:
    dirs = all_runs(tmp_path, ["int8", "int4"])
    rows, _ = corr.pair_runs([corr.read_run(d) for d in dirs])
    notes = [c.note for c in corr.correlations(rows)]
    assert notes == ["cannot be computed: 2 candidate(s) with both numbers, need 3"] * 3

    app = build_app()
    plot = tmp_path / "plot.png"
    result = CliRunner().invoke(
        app, ["correlate", *map(str, dirs), "--plot", str(plot)], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    assert "int8 @ http://127.0.0.1:8002/v1" in result.stdout
    assert "-0.90" in result.stdout and "10.0% (100/1000)" in result.stdout
    assert "cannot be computed" in result.stdout
    assert "a correlation needs at least 3" in result.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_json_output_and_a_candidate_without_mtbench(tmp_path: Path) -> None:
    dirs = all_runs(tmp_path, ["int8", "fp8", "int4"])
    url, dacc, flip, kl, _ = CANDIDATES["pruned"]
    dirs.append(mcq_run(tmp_path, "pruned", url, dacc, flip, kl))
    app = build_app()
    plot = tmp_path / "p.png"
    result = CliRunner().invoke(app, ["correlate", *map(str, dirs), "--plot", str(plot), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert [c["candidate"]["model"] for c in out["candidates"]] == ["int8", "fp8", "int4", "pruned"]
    assert out["candidates"][3]["delta_mtbench"] is None and out["candidates"][3]["mtbench_run"] is None
    by_pair = {(c["x"], c["y"]): c for c in out["correlations"]}
    assert by_pair[("flip_rate", "kl")]["n"] == 4
    assert by_pair[("flip_rate", "delta_mtbench")]["n"] == 3
    assert by_pair[("flip_rate", "delta_mtbench")]["spearman_r"] == pytest.approx(-1.0)
    assert out["plot"] == str(plot) and plot.exists()


def test_constant_metric_is_reported_as_undefined(tmp_path: Path) -> None:
    dirs = []
    for i, name in enumerate(["a", "b", "c"]):
        dirs += [mcq_run(tmp_path, name, f"http://h:{9000 + i}", -0.01 * i, 0.05, 0.01 * i),
                 mt_run(tmp_path, name, f"http://h:{9000 + i}", -0.5 * i)]  # fmt: skip
    rows, _ = corr.pair_runs([corr.read_run(d) for d in dirs])
    notes = {(c.x, c.y): c.note for c in corr.correlations(rows)}
    assert notes[("flip_rate", "kl")] == "undefined: one of the two is constant across candidates"
    assert notes[("delta_accuracy", "delta_mtbench")] is None


def test_pairing_needs_the_same_url(tmp_path: Path) -> None:
    a = mcq_run(tmp_path, "int8", "http://127.0.0.1:8002", -0.001, 0.02, 0.01)
    b = mt_run(tmp_path, "int8", "http://127.0.0.1:9999", -0.1)
    rows, _ = corr.pair_runs([corr.read_run(a), corr.read_run(b)])
    assert len(rows) == 2
    assert (rows[0].delta_mtbench, rows[1].flip_rate) == (None, None)


def test_two_mcq_runs_of_one_candidate_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    a = mcq_run(tmp_path, "int8", "http://127.0.0.1:8002", -0.001, 0.02, 0.01)
    b = mcq_run(tmp_path / "x", "int8", "http://127.0.0.1:8002/v1", -0.002, 0.03, 0.02)
    with pytest.raises(UserError, match="two MCQ runs for candidate int8"):
        corr.pair_runs([corr.read_run(a), corr.read_run(b)])


def test_baseline_differences_are_warned(tmp_path: Path) -> None:
    a = mcq_run(tmp_path, "int8", "http://h:1", -0.001, 0.02, 0.01)
    manifest = json.loads((a / "manifest.json").read_text())
    manifest["endpoints"][0]["model"] = "other-baseline"
    (a / "manifest.json").write_text(json.dumps(manifest))
    b = mt_run(tmp_path, "int8", "http://h:1", -0.1)
    _, warnings = corr.pair_runs([corr.read_run(a), corr.read_run(b)])
    assert len(warnings) == 1 and warnings[0].startswith("the runs have different baseline models")


def test_run_dirs_of_neither_kind(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a servecmp run directory"):
        corr.read_run(tmp_path)
    d = _run(tmp_path, "shadow", {**_manifest("mcq", "m", "http://h", "t"), "kind": "shadow"}, {})
    with pytest.raises(UserError, match="run kind 'shadow' is neither an MCQ run nor an MT-Bench run"):
        corr.read_run(d)
    d = _run(tmp_path, "mcq-bad", _manifest("mcq", "m", "http://h", "t"), {"schema": "other"})
    with pytest.raises(UserError, match="not an MCQ summary"):
        corr.read_run(d)
    d = tmp_path / "unfinished"
    d.mkdir()
    (d / "manifest.json").write_text(json.dumps(_manifest("mtbench", "m", "http://h", "mt_bench")))
    with pytest.raises(UserError, match="no summary.json yet"):
        corr.read_run(d)


def test_topk_kl_requires_it_in_the_summary(tmp_path: Path) -> None:
    d = mcq_run(tmp_path, "int8", "http://h:1", -0.001, 0.02, 0.01)
    with pytest.raises(UserError, match="no top-k KL"):
        corr.read_run(d, "topk")
    summary = json.loads((d / "summary.json").read_text())
    summary["topk_kl"] = {"kl_hat": {"mean": 0.123}}
    (d / "summary.json").write_text(json.dumps(summary))
    assert corr.read_run(d, "topk").mcq.kl == 0.123  # type: ignore[union-attr]


def test_reads_a_multi_candidate_mcq_run(tmp_path: Path) -> None:
    from servecmp.mcq.compare import compare_run
    from tests.test_mcq_multi import LADDER, make_run

    run_dir = make_run(tmp_path, LADDER)
    compare_run(run_dir)
    facts = corr.read_runs(run_dir)
    assert [(f.candidate.model, f.candidate.url, f.mcq.flips if f.mcq else None) for f in facts] == [
        (f"m-{n}", f"http://{n}:8000/v1", flips) for n, flips in (("a", 1), ("b", 2), ("c", 3), ("d", 0))]
    assert {f.baseline for f in facts} == {corr.Endpoint(model="m-base", url="http://base:8000/v1")}
    # An MT-Bench run of one of them pairs with its row; each candidate is a row of its own.
    mt = mt_run(tmp_path, "m-b", "http://b:8000/v1", -0.5)
    rows, _ = corr.pair_runs([*facts, *corr.read_runs(mt)])
    assert [r.candidate.model for r in rows] == ["m-a", "m-b", "m-c", "m-d"]
    assert [r.delta_mtbench for r in rows] == [None, -0.5, None, None]
    result = CliRunner().invoke(build_app(), ["correlate", str(run_dir), "--plot", str(tmp_path / "p.png"),
                                              "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert {(c["x"], c["y"]): c["n"] for c in out["correlations"]}[("flip_rate", "kl")] == 4
