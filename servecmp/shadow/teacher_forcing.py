"""Teacher-forced comparison on vLLM endpoints: score the primary's answer under the other endpoint.

How (vLLM 0.32's OpenAI server; all requests off the response path):

1. Render the prompt to token ids with the candidate's ``POST /tokenize``: chat requests send their
   ``messages`` (vLLM applies the model's chat template with ``add_generation_prompt``, exactly as
   its chat endpoint does); completion requests send their ``prompt`` string (or already are ids).
2. Tokenize the primary's answer text with ``add_special_tokens: false``. Re-tokenizing text can in
   rare cases split differently from the ids the primary sampled; the measure then describes the
   canonical tokenization of the same text.
3. ``POST /v1/completions`` with ``prompt`` = prompt ids + answer ids, ``max_tokens: 1`` and
   ``prompt_logprobs: k`` to the candidate (and the secondary). vLLM returns, at every prompt
   position, the top-k plus the actual token, keyed by token id; the answer positions are the tail.
4. The primary's own top-k: from its response's logprobs when the client asked for them and their
   tokens line up with the decoded answer ids (compared by token text); otherwise the same
   ``prompt_logprobs`` request to the primary (with the baseline's ``api_key_env`` key, never the client's),
   unless ``tf_score_primary`` is off (then only requests that asked for logprobs are scored).

The same tokenizer is assumed on all endpoints (a quantized copy of one model). Anything that fails
becomes a short ``tf_error`` code on the record; the rest of the record is kept.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from servecmp.metrics.kl import merge_topk
from servecmp.shadow.measures import TeacherForcedStats, teacher_forced_stats
from servecmp.shadow.payloads import Answer, EndpointKind
from servecmp.shadow.upstream import Upstream, UpstreamStatusError, error_code

SOURCE_RESPONSE = "response"
SOURCE_PROMPT_LOGPROBS = "prompt_logprobs"


class TfError(Exception):
    """A step of the teacher-forced scoring failed; ``code`` is what the record stores."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True)
class Position:
    """The distribution at one answer position: top-k (plus the actual token) by token id."""

    logprobs: dict[int, float]
    decoded: dict[int, str]


@dataclass(frozen=True)
class TfOutcome:
    stats: TeacherForcedStats | None = None
    source: str | None = None
    error: str | None = None


def _error_code(exc: BaseException) -> str:
    return exc.code if isinstance(exc, TfError) else error_code(exc)


def parse_prompt_logprobs(data: Any, start: int, count: int) -> list[Position]:
    """Answer positions ``start .. start+count-1`` of a vLLM completion's ``prompt_logprobs``."""
    try:
        plp = data["choices"][0]["prompt_logprobs"]
        rows = plp[start : start + count]
        if len(rows) != count:
            raise TfError("short_prompt_logprobs")
        out = []
        for row in rows:
            lps = {int(tid): float(v["logprob"]) for tid, v in row.items()}
            dec = {int(tid): str(v.get("decoded_token") or "") for tid, v in row.items()}
            out.append(Position(lps, dec))
        return out
    except TfError:
        raise
    except (TypeError, KeyError, ValueError, IndexError, AttributeError) as exc:
        raise TfError("garbage") from exc


def by_text(position: Position) -> dict[str, float]:
    """Re-key a position by token text, summing ids that decode to the same text (log-sum-exp)."""
    return merge_topk((position.decoded[tid], lp) for tid, lp in position.logprobs.items())


def by_id(position: Position) -> dict[str, float]:
    return {str(tid): lp for tid, lp in position.logprobs.items()}


def response_topk(answer: Answer, decoded_chosen: Sequence[str]) -> list[dict[str, float]] | None:
    """The primary's top-k from its own response, when its tokens line up with the answer ids.

    vLLM may list one more generated token (the end-of-sequence) than the answer text holds, so only
    the first ``len(decoded_chosen)`` positions must match.
    """
    n = len(decoded_chosen)
    if answer.tokens is None or answer.top_logprobs is None or answer.token_logprobs is None:
        return None
    if len(answer.tokens) < n or list(answer.tokens[:n]) != list(decoded_chosen):
        return None
    out = []
    rows = zip(answer.tokens[:n], answer.token_logprobs[:n], answer.top_logprobs[:n], strict=True)
    for tok, lp, top in rows:
        if not math.isfinite(lp):
            return None
        dist = dict(top)
        dist.setdefault(tok, lp)
        out.append(dist)
    return out


@dataclass(eq=False)
class TeacherForcer:
    """Scores the primary's answers under other endpoints via vLLM's ``prompt_logprobs``."""

    renderer: Upstream
    primary: Upstream
    _: KW_ONLY
    top_k: int = 20
    max_answer_tokens: int = 256
    timeout_s: float = 60.0
    #: Whether the primary may be asked for prompt_logprobs when its response has no top-k.
    score_primary: bool = True
    #: Turned off for good when the renderer has no /tokenize (not vLLM).
    available: bool = field(default=True, init=False)

    async def _tokenize(self, payload: dict[str, Any]) -> list[int]:
        model = await self.renderer.resolve_model()
        if model:
            payload = {"model": model, **payload}
        try:
            data = await self.renderer.post_json("/tokenize", payload, self.timeout_s)
        except UpstreamStatusError as exc:
            if exc.status in (404, 405):
                self.available = False
                raise TfError("no_tokenize") from exc
            raise
        try:
            return [int(t) for t in data["tokens"]]
        except (TypeError, KeyError, ValueError) as exc:
            raise TfError("garbage") from exc

    async def render_prompt(self, kind: EndpointKind, request: Mapping[str, Any]) -> list[int]:
        if kind == "chat":
            messages = request.get("messages")
            if not isinstance(messages, list):
                raise TfError("unsupported_prompt")
            payload: dict[str, Any] = {"messages": messages}
            for key in ("add_generation_prompt", "continue_final_message", "chat_template_kwargs", "tools"):
                if key in request:
                    payload[key] = request[key]
            return await self._tokenize(payload)
        if request.get("echo"):
            raise TfError("unsupported_echo")  # the answer text would repeat the prompt
        prompt = request.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            return [int(t) for t in prompt]
        if not isinstance(prompt, str):
            raise TfError("unsupported_prompt")  # batches of prompts are not compared
        return await self._tokenize({"prompt": prompt})

    async def score_ids(self, up: Upstream, model: str | None, ids: list[int], start: int) -> list[Position]:
        payload: dict[str, Any] = {
            "prompt": ids,
            "max_tokens": 1,
            "temperature": 0,
            "prompt_logprobs": self.top_k,
        }
        if model:
            payload["model"] = model
        data = await up.post_json("/v1/completions", payload, self.timeout_s)
        return parse_prompt_logprobs(data, start, len(ids) - start)

    async def compare(
        self,
        kind: EndpointKind,
        request: Mapping[str, Any],
        answer: Answer,
        others: Mapping[str, Upstream],
    ) -> dict[str, TfOutcome]:
        """One `TfOutcome` per name in ``others`` (e.g. "candidate", "secondary")."""
        if not self.available:
            return {name: TfOutcome(error="no_tokenize") for name in others}
        if not answer.text:
            return {name: TfOutcome(error="empty_answer") for name in others}
        if not self.score_primary and answer.top_logprobs is None:
            return {name: TfOutcome(error="no_primary_topk") for name in others}
        try:
            prompt_ids = await self.render_prompt(kind, request)
            answer_ids = (await self._tokenize({"prompt": answer.text, "add_special_tokens": False}))[
                : self.max_answer_tokens
            ]
        except Exception as exc:  # noqa: BLE001 - every failure becomes a recorded code
            return {name: TfOutcome(error=_error_code(exc)) for name in others}
        if not answer_ids:
            return {name: TfOutcome(error="empty_answer") for name in others}
        ids, start = prompt_ids + answer_ids, len(prompt_ids)
        client_model = request.get("model") if isinstance(request.get("model"), str) else None

        async def score(up: Upstream) -> list[Position]:
            model = await up.resolve_model() or client_model
            return await self.score_ids(up, model, ids, start)

        names = list(others)
        results = await asyncio.gather(*(score(others[n]) for n in names), return_exceptions=True)
        scored: dict[str, list[Position]] = {}
        outcomes: dict[str, TfOutcome] = {}
        for name, res in zip(names, results, strict=True):
            if isinstance(res, BaseException):
                outcomes[name] = TfOutcome(error=_error_code(res))
            else:
                scored[name] = res
        if not scored:
            return outcomes

        # The answer's token texts, as the first endpoint that answered decodes them.
        reference = next(iter(scored.values()))
        decoded_chosen = [pos.decoded.get(tid, "") for pos, tid in zip(reference, answer_ids, strict=True)]
        from_response = response_topk(answer, decoded_chosen)
        primary_ids: list[Position] | None = None
        if from_response is None:
            try:
                # The baseline's model name when one was given (--baseline-model), else the client's.
                primary_ids = await self.score_ids(self.primary, self.primary.model or client_model, ids, start)
            except Exception as exc:  # noqa: BLE001
                code = f"primary_{_error_code(exc)}"
                outcomes.update({name: TfOutcome(error=code) for name in scored})
                return outcomes

        for name, positions in scored.items():
            try:
                if from_response is not None:
                    other_text = [by_text(p) for p in positions]
                    stats = teacher_forced_stats(from_response, other_text, decoded_chosen)
                    source = SOURCE_RESPONSE
                else:
                    assert primary_ids is not None
                    stats = teacher_forced_stats(
                        [by_id(p) for p in primary_ids], [by_id(p) for p in positions], [str(t) for t in answer_ids]
                    )
                    source = SOURCE_PROMPT_LOGPROBS
                outcomes[name] = TfOutcome(stats=stats, source=source)
            except ValueError:
                outcomes[name] = TfOutcome(error="misaligned")
        return outcomes
