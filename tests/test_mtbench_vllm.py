"""End to end on the real local vLLM pair: `servecmp mtbench` with the baseline as the offline demo
judge (vLLM structured outputs force a parseable rating), then `servecmp correlate` over that run
and synthetic runs of two more candidates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from servecmp._cli.main import build_app
from tests.conftest import VllmPair
from tests.test_correlate import mcq_run, mt_run


@pytest.mark.vllm
def test_mtbench_on_the_vllm_pair_then_correlate(
    vllm_pair: VllmPair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SERVECMP_CACHE_DIR", str(tmp_path / "cache"))  # only the judgment cache lives there
    app = build_app()
    runner = CliRunner()
    args = [
        "mtbench", "--baseline", vllm_pair.baseline_url, "--baseline-model", vllm_pair.baseline_model,
        "--candidate", vllm_pair.candidate_url, "--candidate-model", vllm_pair.candidate_model,
        "--judge-url", "baseline", "--categories", "math,writing", "--limit", "2", "--max-tokens", "48",
        "--runs-dir", str(tmp_path / "runs"), "--judge-cache", "off", "--json",
    ]  # fmt: skip
    result = runner.invoke(app, args)
    if result.exception is not None:
        raise result.exception
    s = json.loads(result.stdout)
    assert "offline demo" in result.stderr
    assert s["judge_is_baseline"] is True and s["judge_model"] == vllm_pair.baseline_model
    assert s["n_questions"] == 2
    # The forced format makes every judgment parseable: 2 questions x 2 turns x 2 endpoints.
    assert s["single_judgments"] == {
        "expected": 8, "ok": 8, "unparseable": 0, "out_of_range": 0, "errors": 0, "missing": 0,
    }  # fmt: skip
    assert s["pair_judgments"]["ok"] == 8 and s["complete"] is True
    assert s["delta"]["n"] == 2
    (run,) = list((tmp_path / "runs").iterdir())
    for role in ("baseline", "candidate"):
        answer_file = run / s["endpoints"][role]["answer_file"]
        answers = [json.loads(line) for line in answer_file.open()]
        assert len(answers) == 2 and all(len(a["choices"][0]["turns"]) == 2 for a in answers)

    # correlate: this run's candidate plus two synthetic candidates of the same baseline.
    cand_url = vllm_pair.candidate_url
    runs = [run, mcq_run(tmp_path, vllm_pair.candidate_model, cand_url, -0.01, 0.05, 0.02)]
    for i, (dacc, flip, kl, dmt) in enumerate([(-0.02, 0.10, 0.08, -0.9), (-0.05, 0.20, 0.25, -2.0)]):
        url = f"http://127.0.0.1:{9100 + i}/v1"
        runs += [
            mcq_run(tmp_path, f"synthetic{i}", url, dacc, flip, kl),
            mt_run(tmp_path, f"synthetic{i}", url, dmt),
        ]
    for d in runs[1:]:  # the synthetic runs share the real baseline
        manifest = json.loads((d / "manifest.json").read_text())
        manifest["endpoints"][0].update(base_url=vllm_pair.baseline_url, model=vllm_pair.baseline_model)
        (d / "manifest.json").write_text(json.dumps(manifest))
    plot = tmp_path / "plot.png"
    result = runner.invoke(app, ["correlate", *map(str, runs), "--plot", str(plot), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["warnings"] == []
    assert [c["candidate"]["model"] for c in out["candidates"]][0] == vllm_pair.candidate_model
    assert out["candidates"][0]["delta_mtbench"] == pytest.approx(s["delta"]["point"])
    by_pair = {(c["x"], c["y"]): c for c in out["correlations"]}
    assert by_pair[("flip_rate", "kl")]["spearman_r"] == pytest.approx(1.0)
    assert by_pair[("flip_rate", "delta_mtbench")]["n"] == 3
    assert plot.read_bytes()[:4] == b"\x89PNG"
