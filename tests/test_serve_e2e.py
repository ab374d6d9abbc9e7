"""The real embedded pair under vLLM: both servers answer, logprobs round-trip, they differ.

Few requests on purpose: the servers are shared with every other e2e test of the run. That no
server process survives the shutdown is asserted by the `vllm_pair` fixture's teardown.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import psutil
import pytest

from servecmp.endpoints import EndpointClient, EndpointSpec
from tests.conftest import VllmPair

pytestmark = pytest.mark.vllm

MMLU_PROMPT = (
    "The following are multiple choice questions (with answers) about astronomy.\n\n"
    "Which planet is closest to the Sun?\nA. Venus\nB. Earth\nC. Mercury\nD. Mars\nAnswer: C\n\n"
    "What is the largest planet in the Solar System?\nA. Jupiter\nB. Saturn\nC. Neptune\nD. Earth\nAnswer:"
)


def both(pair: VllmPair) -> list[EndpointSpec]:
    return [
        EndpointSpec(base_url=pair.baseline_url, model=pair.baseline_model),
        EndpointSpec(base_url=pair.candidate_url, model=pair.candidate_model),
    ]


async def _completion(spec: EndpointSpec, **kw: Any) -> Any:
    async with EndpointClient(spec) as client:
        resp, _ = await client.completion(MMLU_PROMPT, **kw)
        return resp


def test_both_servers_list_their_model_and_run_in_their_own_process_group(vllm_pair: VllmPair) -> None:
    async def names(spec: EndpointSpec) -> list[str]:
        async with EndpointClient(spec) as client:
            return await client.list_models()

    assert asyncio.run(names(both(vllm_pair)[0])) == [vllm_pair.baseline_model]
    assert asyncio.run(names(both(vllm_pair)[1])) == [vllm_pair.candidate_model]
    assert vllm_pair.baseline_model != vllm_pair.candidate_model
    for pid in vllm_pair.pids:
        proc = psutil.Process(pid)
        assert proc.is_running()
        assert psutil.Process(pid).children(recursive=True), "vLLM's engine core runs as a child"


def test_top20_logprobs_round_trip_and_the_candidate_differs(vllm_pair: VllmPair) -> None:
    tops = []
    for spec in both(vllm_pair):
        resp = asyncio.run(_completion(spec, max_tokens=1, logprobs=20))
        choice = resp.choices[0]
        top = choice.logprobs.top_logprobs[0]
        assert len(top) == 20
        assert all(lp <= 0.0 for lp in top.values())
        assert sum(math.exp(lp) for lp in top.values()) <= 1.0 + 1e-4
        # Greedy decoding: the generated token is the most likely one, with the same logprob.
        best = max(top, key=top.__getitem__)
        assert choice.text == best
        assert choice.logprobs.token_logprobs[0] == pytest.approx(top[best], abs=1e-4)
        tops.append(top)
    base, cand = tops
    shared = set(base) & set(cand)
    assert len(shared) >= 10, "the two models should broadly agree on what is likely"
    assert max(abs(base[t] - cand[t]) for t in shared) > 1e-3, "the W8A8 candidate is not the baseline"


def test_each_server_answers_a_chat_sensibly(vllm_pair: VllmPair) -> None:
    async def ask(spec: EndpointSpec) -> str:
        async with EndpointClient(spec) as client:
            resp, _ = await client.chat(
                [{"role": "user", "content": "What is the capital of France?"}], max_tokens=24
            )
            return str(resp.choices[0].message.content)

    for spec in both(vllm_pair):
        assert "Paris" in asyncio.run(ask(spec))
