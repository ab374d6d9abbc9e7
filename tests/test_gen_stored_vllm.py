"""A stored gen baseline against the real embedded vLLM CPU pair: a profile made with --baseline-only
and joined with --baseline-run (the live baseline re-checked) gives the per-item results of a joint
run on the same servers.

Two candidates: the baseline server itself ("control": greedy answers reproduce, its teacher-forced
KL along its own answers is float rounding) and the int8 server. The W8A8 CPU server does not
answer bit-identically when asked again (tests/test_decide_stored_vllm.py), so its records are
compared for the item set only."""

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

#: KL (nats per token) of a server against itself asked in another batch: float rounding only.
SELF_KL = 1e-3


def _gen(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "servecmp", "gen", *args], capture_output=True, text=True,
                          timeout=1200, cwd=ROOT, env={**os.environ, "COLUMNS": "200"})


def _lines(runs: Path, name: str) -> list[dict[str, object]]:
    (run_dir,) = list(runs.iterdir())
    return [json.loads(x) for x in (run_dir / name).read_text().splitlines() if x.strip()]


def test_joined_gen_profile_equals_joint_run(vllm_pair: VllmPair, tmp_path: Path) -> None:
    task = ["--task", "gsm8k", "--limit", "3", "--max-tokens", "32", "--concurrency", "2"]
    cands = ["--candidate", vllm_pair.baseline_url, "--candidate-name", "control",
             "--candidate", vllm_pair.candidate_url, "--candidate-name", "int8"]
    joint = _gen("--baseline", vllm_pair.baseline_url, *cands, *task, "--runs-dir", str(tmp_path / "joint"), "--json")
    assert joint.returncode == 0, joint.stderr[-3000:]
    prof = _gen("--baseline", vllm_pair.baseline_url, "--baseline-only", *task, "--runs-dir", str(tmp_path / "p"))
    assert prof.returncode == 0, prof.stderr[-3000:]
    (profile,) = list((tmp_path / "p").iterdir())
    joined = _gen("--baseline-run", str(profile), "--baseline", vllm_pair.baseline_url, "--baseline-check", "3",
                  *cands, "--concurrency", "2", "--runs-dir", str(tmp_path / "s"), "--json")
    assert joined.returncode == 0, joined.stderr[-3000:]
    a = {(str(r["item_id"]), str(r["endpoint"])): r for r in _lines(tmp_path / "joint", "records.jsonl")}
    b = {(str(r["item_id"]), str(r["endpoint"])): r for r in _lines(tmp_path / "s", "records.jsonl")}
    assert set(a) == set(b) and len(a) == 9
    for key, ra in a.items():
        rb = b[key]
        assert ra["gold"] == rb["gold"]
        if key[1] != "int8":
            assert (ra["text"], ra["token_ids"], ra["correct"]) == (rb["text"], rb["token_ids"], rb["correct"]), key
    # The joined baseline records are the profile's, as stored.
    stored = {str(r["item_id"]): r for r in _lines(tmp_path / "p", "records.jsonl")}
    assert all(b[(i, "baseline")] == r for i, r in stored.items())
    tf = {(str(t["item_id"]), str(t["endpoint"])): t for t in _lines(tmp_path / "s", "teacher_forcing.jsonl")}
    assert {k[1] for k in tf} == {"control", "int8"} and len(tf) == 6
    for (item, name), t in tf.items():
        if t["error"] is None:
            assert t["n_positions"] == len(b[(item, "baseline")]["token_ids"])  # type: ignore[arg-type]
            if name == "control":
                assert max(t["kl"]) <= SELF_KL, t  # type: ignore[call-overload]
    sa, sb = (json.loads(p.stdout) for p in (joint, joined))
    ca, cb = (next(c for c in s["candidates"] if c["name"] == "control") for s in (sa, sb))
    assert ca["correctness"] == cb["correctness"] and ca["identical"] == cb["identical"]
    assert cb["identical"]["count"] == 3  # the control answers as the stored baseline did
    assert sa["endpoints"][0] == sb["endpoints"][0]
    manifest = json.loads((next((tmp_path / "s").iterdir()) / "manifest.json").read_text())
    check = manifest["stored_baseline"]["check"]
    assert check["items"] == 3 and check["changed"] == 0 and check["reproduced"]
    assert manifest["stored_baseline"]["run_dir"] == str(profile)
