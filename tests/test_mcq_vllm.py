"""`servecmp mcq` and `servecmp demo` against the real embedded vLLM CPU pair (bf16/fp32 vs int8)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from tests.conftest import VllmPair
from tests.stub_openai import free_port

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.vllm


def _servecmp(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "servecmp", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, "COLUMNS": "160"})


def _softmax(lps: list[float]) -> list[float]:
    m = max(lps)
    e = [math.exp(x - m) for x in lps]
    return [x / sum(e) for x in e]


def test_mcq_against_real_pair(vllm_pair: VllmPair, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    proc = _servecmp("mcq", "--baseline", vllm_pair.baseline_url, "--candidate", vllm_pair.candidate_url,
                     "--task", "mmlu-sample", "--sample", "12", "--runs-dir", str(runs), "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    (run_dir,) = list(runs.iterdir())
    recs = [json.loads(x) for x in (run_dir / "records.jsonl").read_text().splitlines()]
    base = {r["item_id"]: r for r in recs if r["endpoint"] == "baseline"}
    cand = {r["item_id"]: r for r in recs if r["endpoint"] == "candidate"}
    assert len(base) == len(cand) == 12

    # Model names came from /v1/models; the manifest records them and no key.
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert {e["model"] for e in manifest["endpoints"]} == {vllm_pair.baseline_model, vllm_pair.candidate_model}

    for r in recs:
        assert len(r["topk"]) == 20
        assert all(math.isfinite(x) and x <= 0 for x in r["option_logprobs"])
        assert r["chosen"] == max(range(4), key=lambda i, r=r: r["option_logprobs"][i])

    # Logprobs round-trip: the record holds what the server returns for the same prompt.
    from servecmp.tasks import load_task

    items = {it.item_id: it for it in load_task("mmlu-sample", sample=12, seed=0).items}
    item_id = sorted(base)[0]
    client = openai.OpenAI(base_url=vllm_pair.baseline_url, api_key="EMPTY")
    resp = client.completions.create(model=vllm_pair.baseline_model, prompt=items[item_id].prompt,
                                     max_tokens=1, logprobs=20, temperature=0)
    top = resp.choices[0].logprobs.top_logprobs[0]  # type: ignore[union-attr,index]
    for letter, lp in zip((" A", " B", " C", " D"), base[item_id]["option_logprobs"], strict=True):
        if letter in top:
            # Prefix caching and batching can move the last bits; a tenth of a nat is far below
            # the option gaps the metrics read.
            assert abs(top[letter] - lp) < 0.1

    # Flips and answer changes, recomputed here from the raw records.
    flips = sum((base[i]["chosen"] == base[i]["gold"]) != (cand[i]["chosen"] == cand[i]["gold"]) for i in base)
    changes = sum(base[i]["chosen"] != cand[i]["chosen"] for i in base)
    assert summary["flips"]["flips"] == flips
    assert summary["answer_changes"]["count"] == changes

    # Option KL from the real logprobs, recomputed by hand, and the candidate really differs.
    kls = []
    for i in base:
        p, q = _softmax(base[i]["option_logprobs"]), _softmax(cand[i]["option_logprobs"])
        kls.append(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True)))
    assert summary["option_kl"]["mean"] == pytest.approx(sum(kls) / len(kls), rel=1e-9)
    assert summary["option_kl"]["max"] > 0
    assert summary["topk_kl"]["n"] == 12
    assert summary["topk_kl"]["kl_hat"]["max"] > 0
    assert summary["run"]["requests_per_item"]["baseline"] >= 1.0


def test_demo_on_a_tiny_item_count(vllm_pair: VllmPair, tmp_path: Path) -> None:
    """The demo starts and stops its own pair; the shared pair stays up for other tests."""
    import psutil

    proc = _servecmp("demo", "--sample", "4", "--mtbench-questions", "1", "--max-tokens", "24",
                     "--gsm8k-items", "2", "--gsm8k-tokens", "24",
                     "--runs-dir", str(tmp_path / "runs"), "--baseline-port", str(free_port()),
                     "--candidate-port", str(free_port()), timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "Accuracy and flips" in out and "KL(baseline" in out
    assert "only exercise the pipeline" in out
    assert "first divergence" in out and "GSM8K run directory" in out
    assert "total" in out
    servers = json.loads(next((tmp_path / "runs").glob("demo-servers-*/servers.json")).read_text())
    pids = [s["pid"] for s in servers.values() if isinstance(s, dict) and s.get("pid")]
    assert pids
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
