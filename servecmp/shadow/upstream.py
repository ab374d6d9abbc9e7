"""One upstream endpoint of the shadow feature: its URL, credentials, model name and pooled client,
built from an `EndpointSpec` (servecmp's one endpoint layer: URL forms, key lookup).

The requests servecmp makes on its own (mirrored ones to the candidate and secondary, teacher-forced
scoring, replay, collect's baseline replica) use the aiohttp client here: measured on this project's
2-core machine against the loopback stub, one keep-alive request cost ~0.2 ms of CPU with aiohttp and
~0.9 ms with httpx. The proxy's own requests to the primary, on the user's path, go through
aiohttp's pool in `proxy` instead, with the client's own headers (its Authorization included); the candidate and
the secondary only ever get the key named by their own ``api_key_env`` (``--candidate-key-env``,
...). Keys live in memory only: never in a record, a log line or an error message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from servecmp._http import KEEPALIVE_S
from servecmp.endpoints import EndpointSpec, api_key_from_env, root_url

#: aiohttp adds these unless told not to; a mirrored request must carry the client's headers only
#: (collect forwards them to the baseline replica; an Accept-Encoding the client never sent would
#: change the bytes that come back).
NO_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")

#: Errors of one upstream exchange: connection refused/reset, bad HTTP, truncated body, timeout.
UPSTREAM_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError)


class UpstreamStatusError(Exception):
    """A request servecmp made on its own got a non-200 status."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


def error_code(exc: BaseException) -> str:
    """A short, payload-free name for an upstream failure, as records store it."""
    if isinstance(exc, UpstreamStatusError):
        return f"http_{exc.status}"
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connect"
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError | aiohttp.ClientOSError):
        return "dropped"
    if isinstance(exc, aiohttp.ClientError):
        return "transport"
    return "garbage"


@dataclass
class Upstream:
    role: str  # "primary", "candidate" or "secondary"
    #: The server root (``http://host:port``): routes such as ``/v1/models`` and vLLM's ``/tokenize``
    #: are appended to it.
    url: str
    timeout_s: float
    #: Model name for requests servecmp makes to this endpoint (mirrored ones, teacher-forced scoring,
    #: replay); ``None`` until known, and then the client's is kept. Never put in requests the proxy
    #: forwards to the primary for a client: those go through unchanged.
    model: str | None = None
    #: The ``Authorization`` value for requests this proxy makes on its own (never the client's).
    authorization: str | None = field(default=None, repr=False)
    connect_timeout_s: float = 10.0
    max_connections: int = 512
    _resolved: bool = field(default=False, repr=False)
    _session: aiohttp.ClientSession | None = field(default=None, repr=False)

    @classmethod
    def create(cls, role: str, spec: EndpointSpec, *, timeout_s: float) -> Upstream:
        """The upstream for ``spec``; UserError when its key variable is named but not set."""
        # The primary is the baseline: that is what its key variable is called everywhere else.
        key = api_key_from_env(spec.api_key_env, "baseline" if role == "primary" else role)
        return cls(
            role=role,
            url=root_url(spec.base_url),
            timeout_s=timeout_s,
            model=spec.model,
            authorization=f"Bearer {key}" if key else None,
            _resolved=spec.model is not None,
        )

    @property
    def session(self) -> aiohttp.ClientSession:
        """The pooled keep-alive session, created on first use inside the running event loop."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self.max_connections,
                    limit_per_host=self.max_connections,
                    # Shorter than uvicorn's (so vLLM's) 5 s, so the pool drops an idle connection
                    # before the server does, not while a request is being written to it.
                    keepalive_timeout=KEEPALIVE_S,
                ),
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=self.connect_timeout_s, sock_read=self.timeout_s
                ),
                auto_decompress=False,  # bytes go to the client exactly as the upstream sent them
                skip_auto_headers=NO_AUTO_HEADERS,
                trust_env=False,  # loopback upstreams must not go through an HTTP(S)_PROXY
            )
        return self._session

    def own_headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.authorization:
            headers["Authorization"] = self.authorization
        return headers

    async def post_json(self, path: str, payload: dict[str, Any], timeout_s: float) -> Any:
        """POST ``payload`` with this upstream's own credentials; the JSON answer, or raise."""
        async with asyncio.timeout(timeout_s):
            async with self.session.post(
                f"{self.url}{path}", data=json.dumps(payload), headers=self.own_headers()
            ) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise UpstreamStatusError(resp.status)
        try:
            return json.loads(body)
        except ValueError as exc:
            raise ValueError("upstream answered with a body that is not JSON") from exc

    async def resolve_model(self) -> str | None:
        """The model to name in mirrored requests: the configured one, else the single model its
        /v1/models lists (asked once, successfully), else ``None`` (keep the client's)."""
        if self._resolved:
            return self.model
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                async with self.session.get(f"{self.url}/v1/models", headers=self.own_headers()) as resp:
                    data: Any = json.loads(await resp.read()) if resp.status == 200 else None
        except (*UPSTREAM_ERRORS, ValueError):
            return None  # down or garbage: try again on a later request
        self._resolved = True
        with contextlib.suppress(TypeError, KeyError, AttributeError):
            ids = [m["id"] for m in data["data"]]
            if len(ids) == 1:
                self.model = str(ids[0])
        return self.model

    async def aclose(self) -> None:
        if self._session is not None:
            with contextlib.suppress(Exception):
                await self._session.close()
