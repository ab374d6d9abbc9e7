"""The one HTTP client wrapper: retries, model resolution and the logprobs probe, against a stub
that fails on demand."""

from __future__ import annotations

import asyncio

import pytest

from servecmp.endpoints import EndpointClient, EndpointError, EndpointSpec
from servecmp.errors import UserError
from tests.stub_openai import StubServer, StubState, free_port


async def _no_sleep(_: float) -> None:
    return None


def _client(url: str, **kw: object) -> EndpointClient:
    spec = EndpointSpec(base_url=url, model="stub-model", timeout_s=5, **kw)  # type: ignore[arg-type]
    return EndpointClient(spec, sleep=_no_sleep)


@pytest.mark.parametrize("failure", [429, 500, 502, 503, "drop"])
def test_retries_then_succeeds(failure: object) -> None:
    with StubServer(StubState(script=[failure, failure])) as s:
        async def go() -> tuple[int, int]:
            async with _client(s.url, max_retries=3) as c:
                resp, _ = await c.completion("Q: 1+1?\nAnswer:", logprobs=5)
                assert len(resp.choices[0].logprobs.top_logprobs[0]) == 5
                return c.stats.requests, c.stats.retries
        requests, retries = asyncio.run(go())
    # The server saw the two failures and the success. After a dropped connection the client may
    # also find the next pooled socket dead before it reaches the server: one more retry, no more.
    assert len(s.state.requests) == 3
    assert requests == retries + 1
    assert retries == 2 or (failure == "drop" and retries == 3)


def test_gives_up_after_max_retries_with_reason() -> None:
    with StubServer(StubState(script=[503] * 5)) as s:
        async def go() -> None:
            async with _client(s.url, max_retries=2) as c:
                await c.completion("x", logprobs=1)
        with pytest.raises(EndpointError, match=r"HTTP 503.*after 2 retries"):
            asyncio.run(go())
        assert len(s.state.requests) == 3


def test_client_error_is_not_retried() -> None:
    with StubServer(StubState(script=[400])) as s:
        async def go() -> None:
            async with _client(s.url, max_retries=3) as c:
                await c.completion("x", logprobs=1)
        with pytest.raises(EndpointError, match="HTTP 400"):
            asyncio.run(go())
        assert len(s.state.requests) == 1


def test_timeout_is_retried() -> None:
    with StubServer(StubState(script=["sleep:1.0"])) as s:
        async def go() -> int:
            spec = EndpointSpec(base_url=s.url, model="stub-model", timeout_s=0.3, max_retries=2)
            async with EndpointClient(spec, sleep=_no_sleep) as c:
                await c.completion("x", logprobs=1)
                return c.stats.retries
        assert asyncio.run(go()) == 1


def test_concurrency_cap_is_respected() -> None:
    in_flight = 0
    peak = 0
    with StubServer(StubState(delay_s=0.05)) as s:
        async def one(c: EndpointClient) -> None:
            nonlocal in_flight, peak
            await c.completion("x", logprobs=1)

        async def go() -> None:
            async with _client(s.url, max_concurrency=2) as c:
                orig = c._client.completions.create

                async def counting(**kw: object) -> object:
                    nonlocal in_flight, peak
                    in_flight += 1
                    peak = max(peak, in_flight)
                    try:
                        return await orig(**kw)  # type: ignore[arg-type]
                    finally:
                        in_flight -= 1
                c._client.completions.create = counting  # type: ignore[method-assign]
                await asyncio.gather(*(one(c) for _ in range(8)))
        asyncio.run(go())
    assert peak == 2


def test_resolve_model_single_and_wrong_name() -> None:
    with StubServer(StubState(model="m1")) as s:
        async def go(model: str | None) -> str:
            async with EndpointClient(EndpointSpec(base_url=s.url, model=model)) as c:
                return await c.resolve_model("baseline")
        assert asyncio.run(go(None)) == "m1"
        with pytest.raises(UserError, match="does not serve model 'nope'.*m1"):
            asyncio.run(go("nope"))


def test_unreachable_endpoint_is_a_user_error() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"

    async def go() -> None:
        spec = EndpointSpec(base_url=url, max_retries=1, timeout_s=2)
        async with EndpointClient(spec, sleep=_no_sleep) as c:
            await c.resolve_model("candidate")
    with pytest.raises(UserError, match="candidate endpoint unreachable.*connection failed"):
        asyncio.run(go())


def test_probe_detects_missing_logprobs() -> None:
    with StubServer(StubState(no_logprobs=True)) as s:
        async def go() -> None:
            async with _client(s.url) as c:
                await c.probe_logprobs("candidate", 20)
        with pytest.raises(UserError, match="answered without logprobs"):
            asyncio.run(go())


def test_url_forms_normalise() -> None:
    for url in ("http://h:1", "http://h:1/", "http://h:1/v1", "http://h:1/v1/", "http://h:1/v1/completions"):
        assert EndpointSpec(base_url=url).normalised_url() == "http://h:1/v1"


def test_missing_key_env_is_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SERVECMP_TEST_KEY", raising=False)
    with pytest.raises(UserError, match="SERVECMP_TEST_KEY"):
        EndpointSpec(base_url="http://h", api_key_env="SERVECMP_TEST_KEY").api_key()
