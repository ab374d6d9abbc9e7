"""The one HTTP client wrapper: retries, model resolution and the logprobs probe, against a stub
that fails on demand. Then the aiohttp transport's corners against a raw socket server (stale
pooled connections, dropped and stalled answers, chunked and close-delimited bodies, garbage, the
proxy from the environment), and the responses' dict-and-attribute form."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import servecmp._http as http
from servecmp.endpoints import EndpointClient, EndpointError, EndpointSpec, is_unreachable
from servecmp.errors import UserError
from tests.stub_openai import StubServer, StubState, free_port

PROXY_VARS = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
              "no_proxy", "NO_PROXY")


@pytest.fixture(autouse=True)
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The loopback servers below must be reached directly, whatever proxy the machine names."""
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)


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
                orig = c._transport.request

                async def counting(*args: Any) -> tuple[int, bytes]:
                    nonlocal in_flight, peak
                    in_flight += 1
                    peak = max(peak, in_flight)
                    try:
                        return await orig(*args)
                    finally:
                        in_flight -= 1
                c._transport.request = counting  # type: ignore[method-assign,assignment]
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


def test_proxy_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert http.env_proxy("http://h:1/v1") is None
    monkeypatch.setenv("HTTP_PROXY", "http://proxy:3128")
    assert http.env_proxy("http://h:1/v1") == "http://proxy:3128"
    assert http.env_proxy("https://h/v1") is None
    monkeypatch.setenv("ALL_PROXY", "http://all:3128")
    assert http.env_proxy("https://h/v1") == "http://all:3128"
    monkeypatch.setenv("HTTPS_PROXY", "http://tls:3128")
    assert http.env_proxy("https://h/v1") == "http://tls:3128"
    monkeypatch.setenv("NO_PROXY", "h")
    assert http.env_proxy("http://h:1/v1") is None and http.env_proxy("https://h/v1") is None


def test_unreachable_is_a_connection_failure_not_a_timeout() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"

    async def go() -> None:
        spec = EndpointSpec(base_url=url, model="m", max_retries=1, timeout_s=5)
        async with EndpointClient(spec, sleep=_no_sleep) as c:
            await c.completion("x")
    with pytest.raises(EndpointError, match=r"connection failed \(.*\) \(after 1 retries\)") as info:
        asyncio.run(go())
    assert is_unreachable(info.value) and info.value.status is None


def test_http_error_carries_status_and_is_not_unreachable() -> None:
    with StubServer(StubState(script=[422])) as s:
        async def go() -> None:
            async with _client(s.url) as c:
                await c.completion("x", logprobs=1)
        with pytest.raises(EndpointError, match="HTTP 422: .*injected 422") as info:
            asyncio.run(go())
    assert info.value.status == 422 and info.value.is_request_error and not is_unreachable(info.value)


def test_request_body_and_headers_are_the_openai_ones() -> None:
    with StubServer() as s:
        async def go() -> None:
            async with _client(s.url) as c:
                await c.completion(["a", "b"], max_tokens=1, logprobs=3, echo=True, extra_body={"seed": 7})
                await c.chat([{"role": "user", "content": "hi"}], max_tokens=9, extra_body={"top_k": 1})
        asyncio.run(go())
    (comp, chat) = s.state.requests
    assert comp["path"] == "/v1/completions"
    assert comp["body"] == {"model": "stub-model", "prompt": ["a", "b"], "max_tokens": 1, "temperature": 0.0,
                            "echo": True, "logprobs": 3, "seed": 7}
    assert comp["headers"]["authorization"] == "Bearer EMPTY"
    assert comp["headers"]["content-type"] == "application/json"
    assert chat["path"] == "/v1/chat/completions"
    assert chat["body"] == {"model": "stub-model", "messages": [{"role": "user", "content": "hi"}],
                            "max_tokens": 9, "temperature": 0.0, "top_k": 1}


def test_chat_reads_like_the_sdk_objects() -> None:
    """MT-Bench and the judge read `resp.choices[0].message.content` and `resp.usage`."""
    with StubServer() as s:
        async def go() -> Any:
            async with _client(s.url) as c:
                resp, latency = await c.chat([{"role": "user", "content": "What is 2+2?"}])
                assert latency > 0
                return resp
        resp = asyncio.run(go())
    assert resp.choices[0].message.content == "stub answer to: What is 2+2?"
    assert resp["choices"][0]["message"]["content"] == resp.choices[0].message.content
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.completion_tokens == 5
    assert resp.choices[0].message.refusal is None  # absent, as an unset optional field in the SDK


# -- the transport against a raw socket server --------------------------------------------------------

COMPLETION = json.dumps({"choices": [{"index": 0, "text": " A", "logprobs": {
    "text_offset": [0], "token_logprobs": [-0.5], "tokens": [" A"], "top_logprobs": [{" A": -0.5, " B": -1.0}]}}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1}}).encode()

Handler = Callable[[int, int, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + await reader.readexactly(length)


def _ok(body: bytes = COMPLETION) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body) + body


class RawServer:
    """Runs `handler(connection_no, request_no_on_it, reader, writer)` for each request; the handler
    returns False to close the connection. Counts connections and requests."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests = 0
        self.received: list[bytes] = []

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = self.connections
        self.connections += 1
        n = 0
        try:
            while (request := await _read_request(reader)) is not None:
                self.requests += 1
                self.received.append(request)
                keep = await self.handler(conn, n, reader, writer)
                n += 1
                await writer.drain()
                if not keep:
                    break
        except (asyncio.CancelledError, ConnectionError):
            pass  # the test is over (asyncio.run cancels what is left), or the client hung up
        finally:
            writer.close()


def _raw_client(url: str, **kw: Any) -> EndpointClient:
    return EndpointClient(EndpointSpec(base_url=url, model="m", **kw), sleep=_no_sleep)


def _run(handler: Handler, n_requests: int = 1, **kw: Any) -> tuple[list[Any], EndpointClient, RawServer]:
    server = RawServer(handler)

    async def go() -> tuple[list[Any], EndpointClient]:
        async with server as url, _raw_client(url, **kw) as c:
            out = []
            for _ in range(n_requests):
                resp, _ = await c.completion("x", logprobs=2)
                out.append(resp)
            return out, c
    out, client = asyncio.run(go())
    return out, client, server


def test_pool_reuses_one_connection_for_sequential_requests() -> None:
    async def handler(conn: int, n: int, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(_ok())
        return True
    out, c, server = _run(handler, 5)
    assert [o["choices"][0]["logprobs"]["top_logprobs"][0] for o in out] == [{" A": -0.5, " B": -1.0}] * 5
    assert (server.connections, server.requests, c.stats.retries) == (1, 5, 0)


def test_a_client_outlives_its_event_loop() -> None:
    """resolve_model in one asyncio.run(), the requests in another: pooled connections of the
    first (closed) loop are dropped, not reused."""
    with StubServer() as s:
        c = _client(s.url)
        assert asyncio.run(c.resolve_model("baseline")) == "stub-model"

        async def go() -> None:
            resp, _ = await c.completion("x", logprobs=1)
            assert resp.choices[0].logprobs.top_logprobs[0]
            await c.aclose()
        asyncio.run(go())
    assert c.stats.retries == 0 and c.stats.failures == 0


def test_pool_reads_chunked_split_and_close_delimited_bodies() -> None:
    async def handler(conn: int, n: int, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        if n == 0:  # chunked, with a chunk extension and a trailer
            w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            for i in range(0, len(COMPLETION), 50):
                part = COMPLETION[i : i + 50]
                w.write(b"%x;ext=1\r\n" % len(part) + part + b"\r\n")
            w.write(b"0\r\nx-trailer: 1\r\n\r\n")
            return True
        if n == 1:  # a byte at a time, after a 100 Continue
            for b in b"HTTP/1.1 100 Continue\r\n\r\n" + _ok():
                w.write(bytes([b]))
                await w.drain()
            return True
        # no length: the body ends when the server closes
        w.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n" + COMPLETION)
        return False
    out, c, server = _run(handler, 4)
    assert all(o == json.loads(COMPLETION) for o in out)
    assert (server.connections, server.requests, c.stats.retries) == (2, 4, 0)


def test_pool_resends_once_on_a_kept_alive_connection_the_server_had_closed() -> None:
    """The server closes an idle keep-alive connection just as the next request goes out on it:
    the request is sent again on a new connection, and that is not an endpoint retry."""
    async def handler(conn: int, n: int, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        if conn == 0 and n == 1:
            return False  # read the second request, close without answering
        w.write(_ok())
        return True
    out, c, server = _run(handler, 2)
    assert len(out) == 2
    assert (server.connections, server.requests) == (2, 3)
    assert (c.stats.requests, c.stats.retries, c.stats.failures) == (2, 0, 0)


def test_pool_counts_an_unanswered_request_on_a_new_connection_as_a_retry() -> None:
    """Only a pooled connection is assumed stale: a new one that takes the request and closes without
    an answer may have had it handled, so that is an endpoint retry, counted."""
    async def handler(conn: int, n: int, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        if conn == 0:
            return False
        w.write(_ok())
        return True
    out, c, server = _run(handler, 1, max_retries=2)
    assert len(out) == 1
    assert (server.connections, server.requests, c.stats.requests, c.stats.retries) == (2, 2, 2, 1)


def test_requests_go_through_the_proxy_the_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    async def handler(conn: int, n: int, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(_ok())
        return True
    server = RawServer(handler)

    async def go() -> None:
        async with server as proxy_url:
            monkeypatch.setenv("HTTP_PROXY", proxy_url.removesuffix("/v1"))
            async with _raw_client("http://llm.servecmp.invalid:8000/v1") as c:
                await c.completion("x", logprobs=2)
    asyncio.run(go())
    request_line, _, rest = server.received[0].partition(b"\r\n")
    assert request_line == b"POST http://llm.servecmp.invalid:8000/v1/completions HTTP/1.1"
    assert b"Authorization: Bearer EMPTY" in rest


def test_pool_counts_a_drop_on_a_new_connection_as_a_retry() -> None:
    async def handler(conn: int, n: int, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        if conn == 0:
            w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 500\r\n\r\n{\"cho")  # then hang up mid-body
            return False
        w.write(_ok())
        return True
    out, c, server = _run(handler, 1, max_retries=2)
    assert len(out) == 1
    assert (server.connections, c.stats.requests, c.stats.retries) == (2, 2, 1)


def test_pool_times_out_a_stalled_body_and_retries() -> None:
    async def handler(conn: int, n: int, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        if conn == 0:
            w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 500\r\n\r\n{")
            await w.drain()
            await asyncio.sleep(2)
            return False
        w.write(_ok())
        return True
    out, c, server = _run(handler, 1, timeout_s=0.3, max_retries=1)
    assert len(out) == 1 and c.stats.retries == 1


def test_pool_gives_up_on_garbage_with_a_reason() -> None:
    async def handler(conn: int, n: int, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        return True
    with pytest.raises(EndpointError, match=r"connection failed \(.*\) \(after 1 retries\)") as info:
        _run(handler, 1, max_retries=1)
    assert "\n" not in str(info.value)  # one line, though aiohttp's parser error spans several


def test_non_json_success_is_an_error_not_a_retry() -> None:
    async def handler(conn: int, n: int, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(_ok(b"<html>hello</html>"))
        return True
    with pytest.raises(EndpointError, match="InvalidResponse: HTTP 200 with a body that is not JSON") as info:
        _run(handler, 1, max_retries=3)
    assert info.value.status is None and not is_unreachable(info.value)
