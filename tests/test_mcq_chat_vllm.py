"""Chat-API MCQ and the capability probe against the real embedded vLLM pair (bf16 vs W8A8)."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import pytest

from tests.conftest import VllmPair
from tests.test_mcq_vllm import _servecmp

pytestmark = pytest.mark.vllm


def test_chat_api_mcq_against_real_pair(vllm_pair: VllmPair, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    proc = _servecmp("mcq", "--baseline", vllm_pair.baseline_url, "--candidate", vllm_pair.candidate_url,
                     "--task", "mmlu-sample", "--sample", "8", "--api", "chat", "--runs-dir", str(runs), "--json")
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = list(runs.iterdir())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["endpoint_apis"] == {"baseline": "chat", "candidate": "chat"}
    for role in ("baseline", "candidate"):
        caps = manifest["capabilities"][role]
        # vLLM serves everything the probe asks about, with --max-logprobs 20.
        assert (caps["completions"], caps["chat_logprobs"], caps["echo"], caps["tokenize"], caps["top_k"]) == (
            True, True, True, True, 20)
        assert caps["path_gap_nats"] is not None and caps["path_gap_options"] >= 1
    recs = [json.loads(x) for x in (run_dir / "records.jsonl").read_text().splitlines()]
    assert len(recs) == 16
    for r in recs:
        assert r["api"] == "chat" and len(r["topk"]) == 20 and r["n_requests"] == 1
        # Every option read from the top-20 with its two spellings, or bounded and counted.
        tokens = {t for t, _ in r["topk"]}
        present = sum(1 for letter in "ABCD" if letter in tokens or f" {letter}" in tokens)
        assert r["censored_options"] == 4 - present
        assert all(math.isfinite(x) and x <= 0 for x in r["option_logprobs"])
    summary = json.loads(proc.stdout)
    assert summary["flips"]["n"] == 8


def completions_vs_chat(url: str, n: int) -> tuple[int, int, int]:
    """(items, same chosen option through both APIs, options censored on the chat path) for the
    first n items of a seeded mmlu-sample draw, asked of one server both ways."""
    from servecmp.endpoints import EndpointClient, EndpointSpec
    from servecmp.mcq.scoring import score_item
    from servecmp.tasks import load_task

    items = load_task("mmlu-sample", sample=n, seed=0).items

    async def go() -> tuple[int, int, int]:
        async with EndpointClient(EndpointSpec(base_url=url)) as c:
            await c.resolve_model("baseline")
            same = censored = 0
            for it in items:
                c.api = "completions"
                a = await score_item(c, it, "baseline", 20)
                c.api = "chat"
                b = await score_item(c, it, "baseline", 20)
                same += a.chosen == b.chosen
                censored += b.censored_options
            return len(items), same, censored

    return asyncio.run(go())


def test_chat_and_completions_choose_alike_on_the_same_server(vllm_pair: VllmPair) -> None:
    """The same items through both APIs of one server. They need not agree: the chat template wraps
    every turn in role markers and the answer comes as the assistant's first token ("A", not " A"),
    so the model conditions on other text, and at this model's 25% accuracy most answers are near-ties
    that any change of context moves. Measured (mmlu-sample, seed 0): 55 of 100 items chose the same
    option on the bf16 baseline and 55 of 100 on the W8A8 candidate; 14 of these 20. The test pins
    the agreement well above chance (25%) and no option missing from the chat top-20."""
    n, same, censored = completions_vs_chat(vllm_pair.baseline_url, 20)
    print(f"chat vs completions: same chosen option on {same}/{n} items, {censored} options censored")
    assert same >= 0.45 * n
    assert censored == 0
