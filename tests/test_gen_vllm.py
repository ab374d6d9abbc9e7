"""`servecmp gen` against the real vLLM pair (float32 baseline, W8A8 candidate): a few GSM8K items,
greedy, 64 tokens. Checks the record contract, lm-eval's extractions re-applied to the stored texts,
token ids equal to the server's own /tokenize, teacher forcing on every item with an answer, and
`servecmp report` recomputing the same summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from servecmp.endpoints import root_url
from servecmp.tasks.extract import flexible_answer, lmeval_exact_match, strict_answer
from tests.conftest import VllmPair

pytestmark = pytest.mark.vllm
ROOT = Path(__file__).resolve().parents[1]


def _servecmp(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "servecmp", *args], capture_output=True, text=True, timeout=900,
                          cwd=ROOT, env={**os.environ, "COLUMNS": "200"})


def _tokenize(url: str, model: str, text: str) -> list[int]:
    body = json.dumps({"model": model, "prompt": text, "add_special_tokens": False}).encode()
    req = urllib.request.Request(root_url(url) + "/tokenize", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return [int(t) for t in json.loads(resp.read())["tokens"]]


def test_gen_gsm8k_against_real_pair(vllm_pair: VllmPair, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    proc = _servecmp("gen", "--baseline", vllm_pair.baseline_url, "--candidate", vllm_pair.candidate_url,
                     "--task", "gsm8k", "--limit", "4", "--max-tokens", "64", "--runs-dir", str(runs), "--json",
                     "--concurrency", "4", "--gate", "tf_kl<=5", "--html", str(tmp_path / "gen.html"))
    assert proc.returncode in (0, 4), proc.stderr
    s = json.loads(proc.stdout)
    (run_dir,) = list(runs.iterdir())
    recs = [json.loads(x) for x in (run_dir / "records.jsonl").read_text().splitlines()]
    assert sorted((r["endpoint"], r["item_id"]) for r in recs) == sorted(
        (e, f"gsm8k/{i}") for e in ("baseline", "candidate") for i in range(4))
    items = {json.loads(x)["item_id"]: json.loads(x) for x in (run_dir / "items.jsonl").read_text().splitlines()}
    for r in recs:
        assert r["sample"] == 0 and r["finish_reason"] in ("stop", "length")
        assert 0 <= r["completion_tokens"] <= 64
        # lm-eval's filters and exact_match, re-applied to the stored generation.
        assert r["answer"] == strict_answer(r["text"]) and r["answer_flexible"] == flexible_answer(r["text"])
        assert r["correct"] == lmeval_exact_match(r["answer"], items[r["item_id"]]["gold"])
        model = vllm_pair.baseline_model if r["endpoint"] == "baseline" else vllm_pair.candidate_model
        url = vllm_pair.baseline_url if r["endpoint"] == "baseline" else vllm_pair.candidate_url
        assert r["token_ids"] == _tokenize(url, model, r["text"])
    assert s["run"]["api"] == "completions" and s["run"]["divergence_unit"] == "tokens"
    c = s["candidates"][0]
    assert c["n"] == 4
    by = {(r["endpoint"], r["item_id"]): r for r in recs}
    for row in c["items"]:
        b, k = by[("baseline", row["item_id"])], by[("candidate", row["item_id"])]
        assert row["identical"] == (b["text"] == k["text"])
        if row["identical"]:
            assert row["first_divergence"] is None
        else:
            d = row["first_divergence"]
            assert b["token_ids"][:d] == k["token_ids"][:d]
            assert d == min(len(b["token_ids"]), len(k["token_ids"])) or b["token_ids"][d] != k["token_ids"][d]
    tf = c["teacher_forcing"]
    answered = sum(1 for r in recs if r["endpoint"] == "baseline" and r["text"])
    assert tf["n"] == answered
    for t in map(json.loads, (run_dir / "teacher_forcing.jsonl").read_text().splitlines()):
        if t["error"] is None:
            assert len(t["kl"]) == t["n_positions"] == len(by[("baseline", t["item_id"])]["token_ids"])
            assert all(v >= -1e-9 for v in t["kl"])
    assert s["verdict"]["gates"][0]["metric"] == "tf_kl"
    rep = _servecmp("report", str(run_dir), "--json")
    assert rep.returncode == 0, rep.stderr
    assert json.loads(rep.stdout) == {k: v for k, v in s.items() if k != "verdict"}
    assert "gsm8k/0" in (tmp_path / "gen.html").read_text()
