"""Asking a judge: cache first, then one chat call through servecmp's EndpointClient.

The client does the HTTP retries (429, 5xx, timeouts, with jittered backoff) and the
requests-per-second cap. Here we add what is specific to judging: the on-disk cache, the
`--max-judge-calls` budget, an optional forced output format for vLLM judges, a few retries when
the judge answers with nothing or refuses, and the line between "this judgment failed" (recorded
as an error item) and "the judge is gone" (the run stops, resumable).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Literal

from servecmp.endpoints import EndpointClient, EndpointError, is_unreachable
from servecmp.judges.cache import JudgeCache, cache_key
from servecmp.judges.parsing import FORCED_RATING_REGEX, FORCED_VERDICT_REGEX

JudgeKind = Literal["single", "pairwise"]


class JudgeBudgetExhausted(Exception):
    """--max-judge-calls was reached; the remaining judgments are left for a resume."""


class JudgeUnavailable(Exception):
    """The judge endpoint cannot be reached (or fails every call): stop, keep the run resumable."""


@dataclass(frozen=True)
class JudgeReply:
    """What the judge said (`text`), or why there is nothing (`error`)."""

    text: str | None
    cached: bool = False
    error: str | None = None


@dataclass
class JudgeStats:
    calls: int = 0
    cache_hits: int = 0
    errors: int = 0


@dataclass(eq=False)
class JudgeRunner:
    client: EndpointClient
    cache: JudgeCache
    _: KW_ONLY
    max_tokens: int = 2048
    force_format: bool = False
    max_calls: int | None = None
    empty_retries: int = 2
    max_consecutive_errors: int = 8
    #: How to wait between attempts (tests pass one that does not wait).
    sleep: Callable[[float], Any] = asyncio.sleep
    stats: JudgeStats = field(default_factory=JudgeStats, init=False)
    _consecutive_errors: int = field(default=0, init=False, repr=False)
    _in_flight: dict[str, asyncio.Future[JudgeReply]] = field(default_factory=dict, init=False, repr=False)

    @property
    def model(self) -> str:
        return self.client.model

    def _extra_body(self, kind: JudgeKind) -> dict[str, Any] | None:
        if not self.force_format:
            return None
        # vLLM >= 0.10 reads constrained decoding from `structured_outputs` (the older
        # `guided_regex` field is gone in 0.32; see ChatCompletionRequest.structured_outputs).
        regex = FORCED_RATING_REGEX if kind == "single" else FORCED_VERDICT_REGEX
        return {"structured_outputs": {"regex": regex}}

    def key(self, messages: Sequence[dict[str, str]], kind: JudgeKind) -> str:
        params = {"temperature": 0.0, "max_tokens": self.max_tokens, "extra_body": self._extra_body(kind)}
        return cache_key(self.model, messages, params)

    def is_cached(self, messages: Sequence[dict[str, str]], kind: JudgeKind) -> bool:
        return self.key(messages, kind) in self.cache

    async def ask(self, messages: list[dict[str, str]], kind: JudgeKind) -> JudgeReply:
        key = self.key(messages, kind)
        hit = self.cache.get(key)
        if hit is not None:
            self.stats.cache_hits += 1
            return JudgeReply(text=hit, cached=True)
        pending = self._in_flight.get(key)
        if pending is not None:
            # The same request is already on its way (e.g. two identical answers): share its reply.
            shared = await asyncio.shield(pending)
            self.stats.cache_hits += 1
            return JudgeReply(text=shared.text, cached=True, error=shared.error)
        if self.max_calls is not None and self.stats.calls >= self.max_calls:
            raise JudgeBudgetExhausted
        self.stats.calls += 1
        future: asyncio.Future[JudgeReply] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        try:
            reply = self._settle(key, await self._call(messages, kind))
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark it retrieved: there may be nobody else waiting for it
            raise
        else:
            future.set_result(reply)
            return reply
        finally:
            del self._in_flight[key]

    def _settle(self, key: str, reply: JudgeReply) -> JudgeReply:
        if reply.text is not None:
            self._consecutive_errors = 0
            self.cache.put(key, self.model, reply.text)
            return reply
        self.stats.errors += 1
        self._consecutive_errors += 1
        if self._consecutive_errors >= self.max_consecutive_errors:
            raise JudgeUnavailable(
                f"judge failed {self._consecutive_errors} calls in a row; last: {reply.error}"
            )
        return reply

    async def _call(self, messages: list[dict[str, str]], kind: JudgeKind) -> JudgeReply:
        problem = "no answer"
        for attempt in range(self.empty_retries + 1):
            if attempt:
                await self.sleep(random.uniform(0, 0.5 * 2**attempt))
            try:
                resp, _ = await self.client.chat(
                    messages, max_tokens=self.max_tokens, temperature=0.0, extra_body=self._extra_body(kind)
                )
            except EndpointError as exc:
                # Refused, dropped or timed out: the judge is gone, not this one judgment.
                if is_unreachable(exc):
                    raise JudgeUnavailable(str(exc)) from exc
                return JudgeReply(text=None, error=str(exc))
            choice = resp.choices[0] if resp.choices else None
            message = getattr(choice, "message", None)
            text = getattr(message, "content", None)
            refusal = getattr(message, "refusal", None)
            if refusal:
                problem = f"judge refused: {' '.join(str(refusal).split())[:200]}"
            elif getattr(choice, "finish_reason", None) == "content_filter":
                problem = "judge answer withheld by a content filter"
            elif not text or not text.strip():
                problem = "judge returned an empty answer"
            else:
                return JudgeReply(text=text)
        return JudgeReply(text=None, error=f"{problem} (after {self.empty_retries + 1} attempts)")
