"""The judge runner: cache, call budget, forced format, error items, and a judge that is gone; plus
the on-disk cache and the cost guard."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from servecmp.endpoints import EndpointClient, EndpointSpec
from servecmp.errors import UserError
from servecmp.judges.cache import JudgeCache, cache_key
from servecmp.judges.cost import CostEstimate, confirm_cost, count_prompt_tokens, is_paid_judge
from servecmp.judges.runner import JudgeBudgetExhausted, JudgeRunner, JudgeUnavailable
from tests.stub_openai import free_port
from tests.test_mtbench_stub import ChatStub, ChatStubState

SINGLE = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "[base] x"},
]


async def _no_sleep(_: float) -> None:
    return None


def _runner(url: str, cache: JudgeCache, **kw: object) -> JudgeRunner:
    client = EndpointClient(
        EndpointSpec(base_url=url, model="judge-m", max_retries=0, timeout_s=5), sleep=_no_sleep
    )
    return JudgeRunner(client, cache, sleep=_no_sleep, **kw)  # type: ignore[arg-type]


def test_cache_hit_makes_no_request_and_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "cache.jsonl"
    with ChatStub(ChatStubState(model="judge-m")) as stub:

        async def go() -> tuple[str | None, bool, str | None, bool]:
            with JudgeCache([path]) as cache:
                r = _runner(stub.url, cache)
                first = await r.ask(SINGLE, "single")
                second = await r.ask(SINGLE, "single")
                await r.client.aclose()
            with JudgeCache([path]) as cache:
                r = _runner(stub.url, cache)
                third = await r.ask(SINGLE, "single")
                await r.client.aclose()
            return first.text, second.cached, third.text, third.cached

        first, second_cached, third, third_cached = asyncio.run(go())
    assert first == third == "Rating: [[8]]"
    assert second_cached and third_cached
    assert stub.state.n_chat == 1
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert (
        len(lines) == 1 and lines[0]["judgment"] == "Rating: [[8]]" and lines[0]["judge_model"] == "judge-m"
    )


def test_cache_key_depends_on_model_prompt_and_sampling() -> None:
    base = cache_key("gpt-4", SINGLE, {"temperature": 0.0, "max_tokens": 2048})
    assert base == cache_key("gpt-4", [dict(m) for m in SINGLE], {"max_tokens": 2048, "temperature": 0.0})
    assert base != cache_key("gpt-4o", SINGLE, {"temperature": 0.0, "max_tokens": 2048})
    assert base != cache_key("gpt-4", SINGLE[:1], {"temperature": 0.0, "max_tokens": 2048})
    assert base != cache_key("gpt-4", SINGLE, {"temperature": 0.0, "max_tokens": 200})


def test_identical_requests_in_flight_make_one_call(tmp_path: Path) -> None:
    with ChatStub(ChatStubState(model="judge-m")) as stub:

        async def go() -> None:
            with JudgeCache([tmp_path / "c.jsonl"]) as cache:
                r = _runner(stub.url, cache)
                replies = await asyncio.gather(*(r.ask(SINGLE, "single") for _ in range(3)))
                assert [x.text for x in replies] == ["Rating: [[8]]"] * 3
                assert [x.cached for x in replies] == [False, True, True]
                assert (r.stats.calls, r.stats.cache_hits) == (1, 2)
                await r.client.aclose()

        asyncio.run(go())
    assert stub.state.n_chat == 1


def test_budget_counts_calls_not_cache_hits(tmp_path: Path) -> None:
    with ChatStub(ChatStubState(model="judge-m")) as stub:

        async def go() -> None:
            with JudgeCache([tmp_path / "c.jsonl"]) as cache:
                r = _runner(stub.url, cache, max_calls=1)
                await r.ask(SINGLE, "single")
                await r.ask(SINGLE, "single")  # a hit: free
                with pytest.raises(JudgeBudgetExhausted):
                    await r.ask([SINGLE[0], {"role": "user", "content": "other"}], "single")
                assert (r.stats.calls, r.stats.cache_hits) == (1, 1)
                await r.client.aclose()

        asyncio.run(go())
    assert stub.state.n_chat == 1


def test_forced_format_sends_vllm_structured_outputs(tmp_path: Path) -> None:
    with ChatStub(ChatStubState(model="judge-m")) as stub:

        async def go() -> None:
            with JudgeCache([tmp_path / "c.jsonl"]) as cache:
                r = _runner(stub.url, cache, force_format=True, max_tokens=200)
                await r.ask(SINGLE, "single")
                await r.ask([SINGLE[0], {"role": "user", "content": "pair"}], "pairwise")
                await r.client.aclose()

        asyncio.run(go())
    single, pair = stub.state.chat_requests
    assert single["structured_outputs"] == {"regex": r"[^\[\]\n]{0,160}\n\nRating: \[\[([1-9]|10)\]\]"}
    assert pair["structured_outputs"] == {"regex": r"[^\[\]\n]{0,160}\n\n\[\[[ABC]\]\]"}
    assert single["max_tokens"] == 200 and single["temperature"] == 0.0


def test_http_error_becomes_an_error_item_and_is_not_cached(tmp_path: Path) -> None:
    with ChatStub(ChatStubState(model="judge-m", fail_after=0)) as stub:

        async def go() -> None:
            with JudgeCache([tmp_path / "c.jsonl"]) as cache:
                r = _runner(stub.url, cache)
                reply = await r.ask(SINGLE, "single")
                assert reply.text is None and reply.error is not None and "HTTP 503" in reply.error
                assert len(cache) == 0
                await r.client.aclose()

        asyncio.run(go())


def test_repeated_errors_stop_the_run(tmp_path: Path) -> None:
    with ChatStub(ChatStubState(model="judge-m", fail_after=0)) as stub:

        async def go() -> None:
            with JudgeCache([tmp_path / "c.jsonl"]) as cache:
                r = _runner(stub.url, cache, max_consecutive_errors=3)
                for i in range(2):
                    assert (await r.ask([{"role": "user", "content": str(i)}], "single")).error
                with pytest.raises(JudgeUnavailable, match="3 calls in a row"):
                    await r.ask([{"role": "user", "content": "last"}], "single")
                await r.client.aclose()

        asyncio.run(go())


def test_unreachable_judge_stops_at_once(tmp_path: Path) -> None:
    async def go() -> None:
        with JudgeCache([tmp_path / "c.jsonl"]) as cache:
            r = _runner(f"http://127.0.0.1:{free_port()}/v1", cache)
            with pytest.raises(JudgeUnavailable, match="connection failed"):
                await r.ask(SINGLE, "single")
            await r.client.aclose()

    asyncio.run(go())


def test_empty_answer_is_retried_then_recorded(tmp_path: Path) -> None:
    with ChatStub(ChatStubState(model="judge-m", fixed_reply="  ")) as stub:

        async def go() -> None:
            with JudgeCache([tmp_path / "c.jsonl"]) as cache:
                r = _runner(stub.url, cache, empty_retries=2)
                reply = await r.ask(SINGLE, "single")
                assert reply.text is None
                assert reply.error == "judge returned an empty answer (after 3 attempts)"
                assert len(cache) == 0
                await r.client.aclose()

        asyncio.run(go())
    assert stub.state.n_chat == 3


@pytest.mark.parametrize(
    ("url", "key_env", "paid"),
    [
        ("https://api.openai.com/v1", None, True),
        ("https://API.OpenAI.com", None, True),
        ("http://127.0.0.1:8000/v1", None, False),
        ("http://127.0.0.1:8000/v1", "MY_KEY", True),
        ("https://judge.example.com/v1", None, False),
    ],
)
def test_is_paid_judge(url: str, key_env: str | None, paid: bool) -> None:
    assert is_paid_judge(url, key_env) is paid


def test_token_count_falls_back_to_chars_over_4_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # empty: no encoding on disk
    assert count_prompt_tokens(["abcd", "abcde", ""], "gpt-4") == (1 + 2 + 0, "estimated as characters/4")


class _Asked:
    def __init__(self, answer: bool) -> None:
        self.answer, self.prompts = answer, []  # type: ignore[var-annotated]

    def __call__(self, prompt: str) -> bool:
        self.prompts.append(prompt)
        return self.answer


EST = CostEstimate(calls=640, cached=0, prompt_tokens=1_200_000, method="estimated as characters/4")


def test_cost_guard_asks_on_a_tty_and_respects_no() -> None:
    said: list[str] = []
    ask = _Asked(False)
    with pytest.raises(UserError, match="judging cancelled"):
        confirm_cost(EST, "gpt-4", paid=True, assume_yes=False, is_tty=True, ask=ask, say=said.append)
    assert said == ["640 judge calls to gpt-4 (+0 answered from cache), ~1,200,000 prompt tokens "
                    "(estimated as characters/4)"]  # fmt: skip
    assert len(ask.prompts) == 1
    confirm_cost(EST, "gpt-4", paid=True, assume_yes=False, is_tty=True, ask=_Asked(True), say=said.append)


def test_cost_guard_refuses_without_tty_and_skips_with_yes_or_free_judge() -> None:
    ask = _Asked(True)
    with pytest.raises(UserError, match="pass --yes"):
        confirm_cost(EST, "gpt-4", paid=True, assume_yes=False, is_tty=False, ask=ask, say=lambda _: None)
    confirm_cost(EST, "gpt-4", paid=True, assume_yes=True, is_tty=False, ask=ask, say=lambda _: None)
    confirm_cost(EST, "local", paid=False, assume_yes=False, is_tty=False, ask=ask, say=lambda _: None)
    all_cached = CostEstimate(calls=0, cached=12, prompt_tokens=0, method="x")
    confirm_cost(all_cached, "gpt-4", paid=True, assume_yes=False, is_tty=False, ask=ask, say=lambda _: None)
    assert ask.prompts == []
