"""The HTTP transport under `servecmp.endpoints.EndpointClient`: one request in, (status, body) out.

`AiohttpTransport` is an aiohttp `ClientSession` with keep-alive connections to one endpoint, for
http and https alike, through the proxy the environment names for it (HTTP_PROXY, HTTPS_PROXY,
ALL_PROXY, NO_PROXY). On this project's 2-core machine it costs ~0.17 ms of CPU per top-20 logprobs
request (~0.4 ms with a 20 KB echo answer); httpx costs ~0.4 ms and the openai SDK ~1.4 ms (it builds
pydantic objects for every logprob). The shadow proxy uses aiohttp too (`servecmp.shadow.upstream`).

It raises three exceptions, which the client's retry loop classifies: `RequestTimeout`,
`ConnectFailed` (no connection: refused, unknown host, TLS failure, ...) and `ConnectionDropped` (the
connection broke or the server closed it before a whole response; also a response that is not
HTTP). The aiohttp error is the ``__cause__``.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.request
import weakref
from contextvars import ContextVar
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
from aiohttp.tracing import Trace

#: Idle connections are closed after this long: shorter than uvicorn's (so vLLM's) 5 s keep-alive,
#: so the pool drops an idle connection before the server does, not while a request goes out on it.
KEEPALIVE_S = 4.0

#: Request headers of a request with a body (every body servecmp sends is JSON).
_JSON = {"Content-Type": "application/json"}


class TransportError(Exception):
    """The request got no complete HTTP response."""


class RequestTimeout(TransportError):
    """No complete response within the request's timeout (connecting included)."""


class ConnectFailed(TransportError):
    """No connection could be made (refused, unreachable, unknown host, TLS failure, ...)."""


class ConnectionDropped(TransportError):
    """The connection broke, or the server closed it, before a whole response arrived."""


class Transport(Protocol):
    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """`path` is relative to the base URL (e.g. ``/completions``); returns (status, body)."""
        ...

    async def aclose(self) -> None: ...


def make_transport(base_url: str, headers: dict[str, str], timeout_s: float) -> Transport:
    return AiohttpTransport(base_url, headers, timeout_s)


def env_proxy(url: str) -> str | None:
    """The proxy the environment names for `url` (HTTP_PROXY / HTTPS_PROXY, else ALL_PROXY; none for a
    host NO_PROXY lists), read once per client. Not aiohttp's ``trust_env``: that also reads ~/.netrc
    in a worker thread on every request and would send its credentials instead of our bearer key."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(parts.netloc.rsplit("@", 1)[-1]):
        return None
    return proxy


#: Whether the request this task sent last went out on a connection that had carried one before.
_REUSED: ContextVar[bool] = ContextVar("servecmp_http_reused", default=False)


class _Connector(aiohttp.TCPConnector):
    """aiohttp's pool, noting for each request whether its connection is a kept-alive one (`_REUSED`).
    aiohttp's tracing (``on_connection_reuseconn``) would say the same, but with any trace configured
    every request builds and awaits a dozen trace events: measurably more CPU per MCQ item."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._carried: weakref.WeakSet[Any] = weakref.WeakSet()

    async def connect(self, req: aiohttp.ClientRequest, traces: list[Trace], timeout: aiohttp.ClientTimeout) -> Any:
        conn = await super().connect(req, traces, timeout)
        _REUSED.set(conn.protocol in self._carried)
        self._carried.add(conn.protocol)
        return conn


class AiohttpTransport:
    """One `aiohttp.ClientSession` per client, made on first use inside the running event loop (a
    session and its connections belong to that loop: a client used again under a later
    ``asyncio.run()`` gets a new one)."""

    def __init__(self, base_url: str, headers: dict[str, str], timeout_s: float) -> None:
        self._base = base_url.rstrip("/")
        self._headers = {"Accept": "application/json", "User-Agent": "servecmp", **headers}
        self._timeout_s = timeout_s
        self._proxy = env_proxy(base_url)
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def _new_session(self) -> aiohttp.ClientSession:
        await self.aclose()  # one from an earlier event loop: its connections died with that loop
        self._session = aiohttp.ClientSession(
            connector=_Connector(
                limit=0,  # EndpointClient caps the requests in flight
                keepalive_timeout=KEEPALIVE_S,
            ),
            headers=self._headers,
            # Connecting included, and the whole body: a stalled answer is a timeout too.
            timeout=aiohttp.ClientTimeout(total=self._timeout_s),
            # No Accept-Encoding: compressing a JSON answer on the loopback only costs CPU on both ends
            # (a server that compresses anyway is decoded: auto_decompress).
            skip_auto_headers=("Accept-Encoding",),
            cookie_jar=aiohttp.DummyCookieJar(),  # an API client keeps no cookies
        )
        self._loop = asyncio.get_running_loop()
        return self._session

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        session = self._session
        if session is None or self._loop is not asyncio.get_running_loop():
            session = await self._new_session()
        url = self._base + path
        headers = None if body is None else _JSON
        try:
            while True:
                _REUSED.set(False)
                try:
                    resp = await session.request(method, url, data=body, headers=headers, proxy=self._proxy)
                    break
                except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                    # A kept-alive connection the server had closed while it sat in the pool (the close
                    # raced our reuse), and no answer began: the server never handled the request, so
                    # say it again. aiohttp does so itself, on the same two errors, only for idempotent
                    # methods (RFC 9112 §9.3.1), not for POST. The failed connection is gone; once the pool
                    # runs dry the next one is new. Not an endpoint retry, so not counted as one.
                    if not _REUSED.get():
                        raise
            async with resp:
                return resp.status, await resp.read()
        except TimeoutError as exc:  # aiohttp's own timeout errors are TimeoutErrors too
            raise RequestTimeout("request timed out") from exc
        except aiohttp.ClientConnectorError as exc:
            raise ConnectFailed(str(exc)) from exc
        except aiohttp.ClientError as exc:
            raise ConnectionDropped(str(exc) or type(exc).__name__) from exc

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            # Under a later event loop than the session's, this closes what it can and may fail.
            with contextlib.suppress(Exception):
                await session.close()
