"""A stored baseline against the real embedded vLLM CPU pair: a profile made with --baseline-only
and joined with --baseline-run gives the per-item results of a joint run on the same servers.

Two candidates: the baseline server itself ("control", which reproduces its answers to float
rounding) and the int8 server. The W8A8 CPU server does not answer bit-identically when asked
again (option logprobs move by up to ~0.1 between runs, measured here), whatever the baseline
side, so its records are compared for the item set only; the control's and the baseline's per
item."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import VllmPair

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.vllm

#: The same fp32/bf16 server answering a prompt in another batch moves option logprobs by ~1e-5
#: (tests/test_mcq_multi_vllm.py); per-item logprobs are compared to this, choices exactly.
LP_TOL = 1e-3


def _mcq(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "servecmp", "mcq", *args], capture_output=True, text=True,
                          timeout=1200, cwd=ROOT, env={**os.environ, "COLUMNS": "160"})


def _records(runs: Path) -> dict[tuple[str, str], dict[str, object]]:
    (run_dir,) = list(runs.iterdir())
    recs = [json.loads(x) for x in (run_dir / "records.jsonl").read_text().splitlines() if x.strip()]
    return {(str(r["item_id"]), str(r["endpoint"])): r for r in recs}


def test_joined_profile_equals_joint_run(vllm_pair: VllmPair, tmp_path: Path) -> None:
    task = ["--task", "mmlu-sample", "--sample", "12", "--concurrency", "2"]
    cands = ["--candidate", vllm_pair.baseline_url, "--candidate-name", "control",
             "--candidate", vllm_pair.candidate_url, "--candidate-name", "int8"]
    joint = _mcq("--baseline", vllm_pair.baseline_url, *cands, *task, "--runs-dir", str(tmp_path / "joint"), "--json")
    assert joint.returncode == 0, joint.stderr[-3000:]
    prof = _mcq("--baseline", vllm_pair.baseline_url, "--baseline-only", *task, "--runs-dir", str(tmp_path / "p"))
    assert prof.returncode == 0, prof.stderr[-3000:]
    (profile,) = list((tmp_path / "p").iterdir())
    joined = _mcq("--baseline-run", str(profile), "--baseline", vllm_pair.baseline_url, "--baseline-check", "6",
                  *cands, "--concurrency", "2", "--runs-dir", str(tmp_path / "s"), "--json")
    assert joined.returncode == 0, joined.stderr[-3000:]
    a, b = _records(tmp_path / "joint"), _records(tmp_path / "s")
    assert set(a) == set(b) and len(a) == 36
    for key, ra in a.items():
        rb = b[key]
        if key[1] == "int8":
            assert ra["gold"] == rb["gold"]
            continue
        assert ra["chosen"] == rb["chosen"], key
        assert ra["gold"] == rb["gold"]
        lpa, lpb = ra["option_logprobs"], rb["option_logprobs"]
        assert max(abs(x - y) for x, y in zip(lpa, lpb, strict=True)) <= LP_TOL, key  # type: ignore[call-overload]
    sa, sb = (json.loads(p.stdout)["candidates"][0]["summary"] for p in (joint, joined))
    assert sa["flips"]["flips"] == sb["flips"]["flips"] == 0
    assert sa["accuracy"]["baseline"]["point"] == sb["accuracy"]["baseline"]["point"]
    check = json.loads((next((tmp_path / "s").iterdir()) / "manifest.json").read_text())["stored_baseline"]["check"]
    assert check["items"] == 6 and check["reproduced"]
