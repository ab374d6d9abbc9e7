"""The one HTTP client wrapper servecmp uses to talk to OpenAI-compatible endpoints.

Wraps `openai.AsyncOpenAI` with what evaluation traffic needs and the SDK does not give in one
place: a concurrency cap, an optional requests-per-second cap (asyncio-throttle), our own retry
loop (backoff with full jitter on 429, 5xx, timeouts and dropped connections, counted so the
report can say how flaky an endpoint was), a per-request timeout, and wall-clock latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import openai
from asyncio_throttle import Throttler

from servecmp.errors import UserError

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


@dataclass
class EndpointSpec:
    """Where an endpoint is and how to reach it. The key itself is never stored on disk."""

    base_url: str
    model: str | None = None
    #: Name of the environment variable that holds the API key (never the key itself).
    api_key_env: str | None = None
    timeout_s: float = 120.0
    max_concurrency: int = 4
    requests_per_second: float | None = None
    max_retries: int = 4

    def normalised_url(self) -> str:
        """Accept `http://host:port`, `.../v1` or `.../v1/` and return the `.../v1` form."""
        url = self.base_url.rstrip("/")
        for suffix in ("/completions", "/chat/completions"):
            if url.endswith(suffix):
                url = url[: -len(suffix)]
        if not url.endswith("/v1"):
            url += "/v1"
        return url

    def api_key(self) -> str:
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise UserError(f"environment variable {self.api_key_env} (the API key) is not set")
            return key
        # vLLM without --api-key accepts any bearer token; the SDK insists on one.
        return "EMPTY"


@dataclass
class CallStats:
    requests: int = 0
    retries: int = 0
    failures: int = 0
    latencies: list[float] = field(default_factory=list)


class EndpointError(Exception):
    """A request that still failed after every retry. Carries a one-line reason and, when the
    server answered, its HTTP status (a 4xx is about this request, not the endpoint's health)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def is_request_error(self) -> bool:
        # 400/413/422: this input was refused (e.g. a prompt longer than the model's context);
        # other items may well succeed. 401/403/404 are about the endpoint and stop the run.
        return self.status in (400, 413, 422)


def _is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in RETRYABLE_STATUS
    return isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError))


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, openai.APIStatusError):
        body = exc.response.text[:200] if exc.response is not None else ""
        return f"HTTP {exc.status_code}: {' '.join(body.split())}"
    if isinstance(exc, openai.APITimeoutError):
        return "request timed out"
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc
        return f"connection failed ({type(cause).__name__}: {cause})"
    return f"{type(exc).__name__}: {exc}"


class EndpointClient:
    """Async client for one endpoint. Use as `async with EndpointClient(spec) as c:`."""

    def __init__(
        self,
        spec: EndpointSpec,
        *,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 20.0,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self.spec = spec
        self.stats = CallStats()
        self._backoff_base = backoff_base_s
        self._backoff_max = backoff_max_s
        self._sleep = sleep
        self._sem = asyncio.Semaphore(max(1, spec.max_concurrency))
        self._throttler = (
            # One request per 1/rps seconds: exact for fractional rates and never bursty.
            Throttler(rate_limit=1, period=1.0 / spec.requests_per_second)
            if spec.requests_per_second
            else None
        )
        self._client = openai.AsyncOpenAI(
            base_url=spec.normalised_url(),
            api_key=spec.api_key(),
            timeout=spec.timeout_s,
            max_retries=0,  # retries are ours, so they are counted and jittered the same everywhere
            # Not DefaultAioHttpClient, though it costs less CPU per request: after a dropped
            # connection it kept reusing the dead socket, and it reports refused connections as
            # timeouts (tests/test_client.py caught both).
        )

    async def __aenter__(self) -> EndpointClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self._client.close()

    @property
    def model(self) -> str:
        if not self.spec.model:
            raise UserError(f"no model name for {self.spec.base_url}; resolve it first")
        return self.spec.model

    async def _call(self, fn: Callable[[], Any]) -> tuple[Any, float]:
        """Run one request with the concurrency cap, rate cap and retries; return (result, seconds)."""
        attempt = 0
        while True:
            async with self._sem:
                if self._throttler is not None:
                    async with self._throttler:
                        pass
                self.stats.requests += 1
                t0 = time.perf_counter()
                try:
                    result = await fn()
                    elapsed = time.perf_counter() - t0
                    self.stats.latencies.append(elapsed)
                    return result, elapsed
                except Exception as exc:  # noqa: BLE001 - classified just below
                    if not _is_retryable(exc) or attempt >= self.spec.max_retries:
                        self.stats.failures += 1
                        raise EndpointError(
                            f"{self.spec.normalised_url()}: {describe_error(exc)}"
                            + (f" (after {attempt} retries)" if attempt else ""),
                            status=exc.status_code if isinstance(exc, openai.APIStatusError) else None,
                        ) from exc
            attempt += 1
            self.stats.retries += 1
            # Full jitter: spreads retries of many concurrent requests instead of synchronising them.
            delay = random.uniform(0, min(self._backoff_max, self._backoff_base * 2 ** (attempt - 1)))
            await self._sleep(delay)

    async def list_models(self) -> list[str]:
        page, _ = await self._call(lambda: self._client.models.list())
        return [m.id for m in page.data]

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
        """POST /v1/completions; returns (Completion, latency seconds)."""
        kwargs: dict[str, Any] = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "echo": echo,
        }
        if logprobs is not None:
            kwargs["logprobs"] = logprobs
        if extra_body:
            kwargs["extra_body"] = extra_body
        return await self._call(lambda: self._client.completions.create(**kwargs))

    async def chat(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int = 512,
        temperature: float = 0.0,
        extra_body: dict[str, Any] | None = None,
    ) -> tuple[Any, float]:
        """POST /v1/chat/completions; returns (ChatCompletion, latency seconds)."""
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        if extra_body:
            kwargs["extra_body"] = extra_body
        return await self._call(lambda: self._client.chat.completions.create(**kwargs))

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
            if isinstance(cause, openai.APIStatusError) and cause.status_code in (400, 404, 422):
                raise UserError(
                    f"{role} endpoint rejected a logprobs={k} completion request: {describe_error(cause)} "
                    "(vLLM needs --max-logprobs >= k; the model must serve /v1/completions)"
                ) from exc
            raise UserError(f"{role} endpoint failed the probe request: {exc}") from exc
        choice = resp.choices[0] if resp.choices else None
        top = getattr(getattr(choice, "logprobs", None), "top_logprobs", None)
        if not top or not top[0]:
            raise UserError(
                f"{role} endpoint {self.spec.normalised_url()} answered without logprobs; "
                "servecmp needs an endpoint that returns top-k logprobs (e.g. vLLM)"
            )
