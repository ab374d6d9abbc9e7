"""servecmp's one endpoint layer: where an endpoint is (`EndpointSpec`), its URL forms, its key,
and the one HTTP client wrapper (`EndpointClient`) MCQ, MT-Bench and the judge talk through.

`EndpointSpec` is also the `[baseline]` / `[candidate]` / `[secondary]` sections of servecmp.toml
and what run manifests record (every field is safe to store: a key is named by its environment
variable, never held). The shadow proxy has its own aiohttp upstreams (see `servecmp.shadow.upstream`)
but builds them from the same specs, URL forms and key lookup.

The client speaks the OpenAI HTTP API itself rather than through the openai SDK, which costs
~0.75 s to import and ~1.4 ms of CPU per top-20 logprobs response (httpx, then pydantic objects for
every logprob). It POSTs JSON through `servecmp._http` (an aiohttp session with keep-alive
connections, for http and https, through the proxy the environment names) and returns the decoded
JSON as `JsonObject`s: plain dicts that also read as attributes (``resp.choices[0].message.content``),
like the SDK's objects. Around that it adds what evaluation traffic needs: a concurrency cap, an optional
requests-per-second cap (asyncio-throttle), our own retry loop (backoff with full jitter on 408, 409,
425, 429, 5xx, timeouts and dropped connections, counted so the report can say how flaky an endpoint
was), a per-request timeout, and wall-clock latency.

Importing this module imports neither aiohttp nor asyncio: config and CLI code reads `EndpointSpec`.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from servecmp.errors import EndpointError, UserError, first_error

if TYPE_CHECKING:
    from asyncio_throttle import Throttler

    from servecmp._http import Transport
    from servecmp.concurrency import Outcome, VegasController

#: The client whose seat the running task holds (`EndpointClient.slot`).
_HELD_SLOT: ContextVar[EndpointClient | None] = ContextVar("servecmp_held_slot", default=None)

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}

#: Path suffixes a user may paste with a URL; the base URL is what precedes them.
_ROUTE_SUFFIXES = ("/chat/completions", "/completions", "/models")


def normalise_url(url: str) -> str:
    """Accept ``http://host:port``, ``.../v1``, ``.../v1/`` or a pasted route such as
    ``.../v1/completions`` and return the OpenAI base URL (``.../v1``).

    UserError at once for anything that cannot be an HTTP URL, so a typo is never retried.
    """
    text = str(url).strip().rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"{url!r} is not an endpoint URL (expected http[s]://host[:port][/v1])")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError as exc:
        raise UserError(f"{url!r} is not an endpoint URL ({exc})") from None
    for suffix in _ROUTE_SUFFIXES:
        if text.endswith(suffix):
            text = text[: -len(suffix)]
    if not text.endswith("/v1"):
        text += "/v1"
    return text


def root_url(url: str) -> str:
    """The server root (``http://host:port``) that routes like ``/v1/models`` are appended to."""
    return normalise_url(url)[: -len("/v1")]


def api_key_from_env(env_name: str | None, role: str) -> str | None:
    """The key held by environment variable `env_name` (None when no variable is named)."""
    if not env_name:
        return None
    key = os.environ.get(env_name)
    if not key:
        raise UserError(f"environment variable {env_name} ({role} API key) is not set")
    return key


class EndpointSpec(BaseModel):
    """Where an endpoint is and how to reach it. The key itself is never stored, only the name of
    the environment variable holding it. In servecmp.toml the URL's key is ``url``."""

    # A typo in a key should be an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid")

    #: The OpenAI base URL, normalised to ``.../v1`` on construction (see `normalise_url`).
    base_url: str
    model: str | None = None
    #: Name of the environment variable that holds the API key (never the key itself).
    api_key_env: str | None = None
    timeout_s: float = Field(default=120.0, gt=0)
    #: Requests in flight: a fixed number, or "auto" (`servecmp.concurrency`: found while running).
    max_concurrency: Annotated[int, Field(ge=1)] | Literal["auto"] = 4
    #: The most "auto" may reach (None: `servecmp.concurrency.DEFAULT_MAX_LIMIT`); a fixed number ignores it.
    #: Not written when unset, so manifests of runs that never use it (MT-Bench's) keep their layout.
    concurrency_cap: int | None = Field(default=None, ge=1, exclude_if=lambda v: v is None)
    requests_per_second: float | None = Field(default=None, gt=0)
    max_retries: int = Field(default=4, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _toml_url(cls, data: Any) -> Any:
        # servecmp.toml says `url = ...`; Python callers say base_url=.
        if isinstance(data, dict) and "url" in data and "base_url" not in data:
            data = {("base_url" if k == "url" else k): v for k, v in data.items()}
        return data

    @field_validator("base_url", mode="before")
    @classmethod
    def _url(cls, value: object) -> str:
        # UserError is not a ValueError, so pydantic lets it through as the one-line error it is.
        return normalise_url(str(value))

    def normalised_url(self) -> str:
        return self.base_url

    def api_key(self) -> str:
        # vLLM without --api-key accepts any bearer token; the SDK insists on one.
        return api_key_from_env(self.api_key_env, "endpoint") or "EMPTY"


def endpoint_from(role: str, section: EndpointSpec | None, url: str | None = None, **flags: Any) -> EndpointSpec:
    """The endpoint for `role`: its servecmp.toml section, overridden by the flags that were given
    (None means "not given"). UserError when neither names a URL."""
    if url is None and section is None:
        raise UserError(f"no {role} endpoint: pass --{role} URL or set [{role}] url in servecmp.toml")
    data = section.model_dump() if section is not None else {}
    if url is not None:
        data["base_url"] = url
    data.update({k: v for k, v in flags.items() if v is not None})
    try:
        return EndpointSpec.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"{role} endpoint: {first_error(exc)}") from None


@dataclass
class CallStats:
    requests: int = 0
    retries: int = 0
    failures: int = 0
    latencies: list[float] = field(default_factory=list)


class JsonObject(dict[str, Any]):
    """A JSON object as returned by the server: a dict that also reads as attributes, as the
    openai SDK's response objects do (``resp.choices[0].logprobs.top_logprobs[0]``). A missing key
    reads as None, as an absent optional field does in the SDK."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # copy, pickle and friends probe dunder names
            raise AttributeError(name)
        return self.get(name)


def parse_json(body: bytes) -> Any:
    """A response body as `JsonObject`s (every JSON object in it, nested ones included)."""
    return json.loads(body, object_hook=JsonObject)


class HttpStatusError(Exception):
    """The server answered with a non-2xx status; `body` is what it said."""

    def __init__(self, status_code: int, body: bytes) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code
        self.body = body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class InvalidResponse(Exception):
    """A 2xx response whose body is not the JSON object expected."""


def _is_retryable(exc: BaseException) -> bool:
    from servecmp._http import TransportError

    if isinstance(exc, HttpStatusError):
        return exc.status_code in RETRYABLE_STATUS
    return isinstance(exc, TransportError)


def describe_error(exc: BaseException) -> str:
    """One line for why a request failed (the tail of an `EndpointError`'s message)."""
    from servecmp._http import RequestTimeout, TransportError

    if isinstance(exc, HttpStatusError):
        return f"HTTP {exc.status_code}: {' '.join(exc.text[:200].split())}"
    if isinstance(exc, RequestTimeout):
        return "request timed out"
    if isinstance(exc, TransportError):
        cause = exc.__cause__ or exc
        return f"connection failed ({type(cause).__name__}: {' '.join(str(cause).split())})"
    return f"{type(exc).__name__}: {exc}"


def _load_outcome(exc: BaseException) -> Outcome:
    """What a failed attempt says about the server's load (`servecmp.concurrency.Outcome`)."""
    from servecmp._http import RequestTimeout

    if isinstance(exc, HttpStatusError):
        return "overload" if exc.status_code in (429, 503) else "other"
    return "overload" if isinstance(exc, RequestTimeout) else "other"


def is_unreachable(exc: BaseException) -> bool:
    """Whether an `EndpointError` means the endpoint could not be reached or gave no answer in time
    (refused, dropped connection, timeout) rather than answering with an error."""
    from servecmp._http import TransportError

    return isinstance(exc, EndpointError) and isinstance(exc.__cause__, TransportError)


class EndpointClient:
    """Async client for one endpoint. Use as `async with EndpointClient(spec) as c:`.

    `completion` and `chat` return (decoded JSON response, latency seconds); the response is a
    `JsonObject`, so both ``resp["choices"][0]`` and ``resp.choices[0]`` read it.
    """

    def __init__(
        self,
        spec: EndpointSpec,
        *,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 20.0,
        sleep: Callable[[float], Any] | None = None,
    ) -> None:
        import asyncio

        from servecmp._http import make_transport

        self.spec = spec
        self.stats = CallStats()
        self._backoff_base = backoff_base_s
        self._backoff_max = backoff_max_s
        self._sleep = sleep or asyncio.sleep
        from servecmp.concurrency import DEFAULT_MAX_LIMIT, Gate, VegasController

        #: The adaptive limit's state machine (None at a fixed concurrency).
        self.controller: VegasController | None = None
        if spec.max_concurrency == "auto":
            self.controller = VegasController(max_limit=spec.concurrency_cap or DEFAULT_MAX_LIMIT)
            self._gate = Gate(self.controller.limit)
        else:
            self._gate = Gate(spec.max_concurrency)
        self._t0 = time.perf_counter()
        #: How MCQ letter items are asked of this endpoint ("completions" or "chat") and whether an
        #: option missing from the top-k may be scored through echoed prompt logprobs; set from the
        #: capability probe (servecmp.capabilities) before any item is sent.
        self.api: Literal["completions", "chat"] = "completions"
        self.echo_fallback = True
        #: What the probe found (a servecmp.capabilities.EndpointCapabilities), None before it ran.
        self.capabilities: Any = None
        self._throttler: Throttler | None = None
        if spec.requests_per_second:
            from asyncio_throttle import Throttler

            # One request per 1/rps seconds: exact for fractional rates and never bursty.
            self._throttler = Throttler(rate_limit=1, period=1.0 / spec.requests_per_second)
        # vLLM without --api-key accepts any bearer token (api_key() says "EMPTY" then).
        self._transport: Transport = make_transport(
            spec.normalised_url(), {"Authorization": f"Bearer {spec.api_key()}"}, spec.timeout_s
        )

    async def __aenter__(self) -> EndpointClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):  # closing must not mask the error that ends a run
            await self._transport.aclose()

    @property
    def model(self) -> str:
        if not self.spec.model:
            raise UserError(f"no model name for {self.spec.base_url}; resolve it first")
        return self.spec.model

    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One HTTP exchange: the decoded JSON of a 2xx answer, else HttpStatusError/InvalidResponse
        (or a `servecmp._http.TransportError` when there was no complete answer)."""
        status, data = await self._transport.request(
            method, path, None if body is None else json.dumps(body).encode()
        )
        if not 200 <= status < 300:
            raise HttpStatusError(status, data)
        try:
            result = parse_json(data)
        except ValueError as exc:
            raise InvalidResponse(f"HTTP {status} with a body that is not JSON: {data[:80]!r}") from exc
        if not isinstance(result, dict):
            raise InvalidResponse(f"HTTP {status} with JSON that is not an object: {data[:80]!r}")
        return result

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[Any, float]:
        """Run one request with the concurrency cap, rate cap and retries; return (result, seconds)."""
        attempt = 0
        # A caller inside `slot()` holds a seat already: its requests go out on that one.
        held = _HELD_SLOT.get() is self
        while True:
            if not held:
                await self._gate.acquire()
            try:
                if self._throttler is not None:
                    async with self._throttler:
                        pass
                self.stats.requests += 1
                t0 = time.perf_counter()
                try:
                    result = await self._request(method, path, body)
                    elapsed = time.perf_counter() - t0
                    self.stats.latencies.append(elapsed)
                    if self.controller is not None and method != "GET":  # /models says nothing of load
                        self._observe(elapsed, "ok", t0 + elapsed)
                    return result, elapsed
                except Exception as exc:  # noqa: BLE001 - classified just below
                    if self.controller is not None and method != "GET":
                        now = time.perf_counter()
                        self._observe(now - t0, _load_outcome(exc), now)
                    if not _is_retryable(exc) or attempt >= self.spec.max_retries:
                        self.stats.failures += 1
                        raise EndpointError(
                            f"{self.spec.normalised_url()}: {describe_error(exc)}"
                            + (f" (after {attempt} retries)" if attempt else ""),
                            status=exc.status_code if isinstance(exc, HttpStatusError) else None,
                        ) from exc
            finally:
                if not held:
                    self._gate.release()
            attempt += 1
            self.stats.retries += 1
            # Full jitter: spreads retries of many concurrent requests instead of synchronising them.
            delay = random.uniform(0, min(self._backoff_max, self._backoff_base * 2 ** (attempt - 1)))
            await self._sleep(delay)

    def _observe(self, latency: float, outcome: Outcome, now: float) -> None:
        """Feed the adaptive limit one finished attempt (times relative to the client's start)."""
        from servecmp.concurrency import Sample

        assert self.controller is not None
        limit = self.controller.on_sample(Sample(latency, outcome, now - self._t0, self._gate.in_flight))
        if limit != self._gate.limit:
            self._gate.set_limit(limit)

    @property
    def in_flight_limit(self) -> int:
        """The number of requests allowed in flight now (the adaptive limit's current level)."""
        return self._gate.limit

    def cap_concurrency(self, limit: int) -> None:
        """Never exceed `limit` in flight (a server's advertised limit); "auto" only."""
        if self.controller is not None:
            self.controller.cap(limit)
            self._gate.set_limit(self.controller.limit)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the endpoint's seats across the calls made inside (they take no other). The
        MCQ runner takes its seat before it picks the next item, so the item is chosen when it can be
        sent (prefix-aware ordering decides at send time, not when a worker queued up). A retry's
        backoff keeps the seat."""
        await self._gate.acquire()
        token = _HELD_SLOT.set(self)
        try:
            yield
        finally:
            _HELD_SLOT.reset(token)
            self._gate.release()

    async def list_models(self) -> list[str]:
        page, _ = await self._call("GET", "/models")
        return [str(m["id"]) for m in page.get("data") or []]

    async def completion(
        self,
        prompt: str | list[str],
        *,
        max_tokens: int = 1,
        logprobs: int | None = None,
        echo: bool = False,
        temperature: float = 0.0,
        extra_body: dict[str, Any] | None = None,
    ) -> tuple[Any, float]:
        """POST /v1/completions; returns (response JSON as a `JsonObject`, latency seconds)."""
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "echo": echo,
        }
        if logprobs is not None:
            body["logprobs"] = logprobs
        if extra_body:
            body.update(extra_body)
        return await self._call("POST", "/completions", body)

    async def chat(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int = 512,
        temperature: float = 0.0,
        extra_body: dict[str, Any] | None = None,
    ) -> tuple[Any, float]:
        """POST /v1/chat/completions; returns (response JSON as a `JsonObject`, latency seconds)."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        if extra_body:
            body.update(extra_body)
        return await self._call("POST", "/chat/completions", body)

    async def resolve_model(self, role: str) -> str:
        """Fill in the model name from /v1/models when the endpoint serves exactly one."""
        try:
            models = await self.list_models()
        except EndpointError as exc:
            raise UserError(f"{role} endpoint unreachable: {exc}") from exc
        if self.spec.model:
            if models and self.spec.model not in models:
                raise UserError(
                    f"{role} endpoint {self.spec.normalised_url()} does not serve model "
                    f"'{self.spec.model}' (it serves: {', '.join(models)})"
                )
            return self.spec.model
        if len(models) == 1:
            self.spec.model = models[0]
            return models[0]
        if not models:
            raise UserError(f"{role} endpoint {self.spec.normalised_url()} lists no models")
        raise UserError(
            f"{role} endpoint serves several models ({', '.join(models)}); "
            f"choose one with --{role}-model"
        )

    async def probe_logprobs(self, role: str, k: int) -> None:
        """One tiny request proving the endpoint returns top-k logprobs for the named model."""
        try:
            resp, _ = await self.completion("Hello", max_tokens=1, logprobs=k)
        except EndpointError as exc:
            cause = exc.__cause__
            if isinstance(cause, HttpStatusError) and cause.status_code in (400, 404, 422):
                raise UserError(
                    f"{role} endpoint rejected a logprobs={k} completion request: {describe_error(cause)} "
                    "(vLLM needs --max-logprobs >= k; the model must serve /v1/completions)"
                ) from exc
            raise UserError(f"{role} endpoint failed the probe request: {exc}") from exc
        choices = resp.get("choices") or []
        logprobs = choices[0].get("logprobs") if choices and isinstance(choices[0], dict) else None
        top = logprobs.get("top_logprobs") if isinstance(logprobs, dict) else None
        if not top or not top[0]:
            raise UserError(
                f"{role} endpoint {self.spec.normalised_url()} answered without logprobs; "
                "servecmp needs an endpoint that returns top-k logprobs (e.g. vLLM)"
            )
