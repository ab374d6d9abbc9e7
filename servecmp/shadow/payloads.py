"""Reading OpenAI-compatible request and response bodies after the fact (never on the response path).

Only the first choice (index 0) is compared; requests with ``n > 1`` are compared on that choice.
A body that is not what the endpoint kind promises raises `PayloadError`, which the mirror records
as the endpoint's error ("garbage"), never as a crash.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

EndpointKind = Literal["chat", "completions"]

PATH_KINDS: dict[str, EndpointKind] = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
}


class PayloadError(ValueError):
    """A body that cannot be read as the expected OpenAI object."""


@dataclass(frozen=True)
class Answer:
    """The first choice of a completion, from a JSON body or a reassembled SSE stream."""

    text: str
    #: The answer's tokens as the endpoint's logprobs name them; ``None`` without logprobs.
    tokens: list[str] | None = None
    #: Logprob of each chosen token (aligned with `tokens`).
    token_logprobs: list[float] | None = None
    #: Top logprobs at each position (token → logprob), aligned with `tokens`; ``None`` when the
    #: request asked for no top-k (or the endpoint returned none).
    top_logprobs: list[dict[str, float]] | None = None
    finish_reason: str | None = None


def is_event_stream(content_type: str | None) -> bool:
    return content_type is not None and content_type.split(";", 1)[0].strip().lower() == "text/event-stream"


def parse_request(body: bytes) -> dict[str, Any] | None:
    """The request body as a JSON object, or ``None`` when it is not one (the primary decides)."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def prompt_of(kind: EndpointKind, request: dict[str, Any]) -> str:
    """A canonical text of what was asked (messages or prompt), for storing and hashing."""
    value = request.get("messages") if kind == "chat" else request.get("prompt")
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _object(body: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PayloadError("not JSON") from exc
    if not isinstance(obj, dict):
        raise PayloadError("not a JSON object")
    return obj


def _first_choice(obj: dict[str, Any]) -> dict[str, Any] | None:
    if "error" in obj and "choices" not in obj:
        raise PayloadError("error object")
    choices = obj.get("choices")
    if not isinstance(choices, list):
        raise PayloadError("no choices")
    for ch in choices:
        if isinstance(ch, dict) and ch.get("index", 0) == 0:
            return ch
    return None


class _Accumulator:
    """Collects text and logprobs of choice 0 across one body or many stream chunks."""

    def __init__(self, kind: EndpointKind) -> None:
        self.kind = kind
        self.parts: list[str] = []
        self.tokens: list[str] = []
        self.lps: list[float] = []
        self.tops: list[dict[str, float]] = []
        self.saw_logprobs = False
        self.finish: str | None = None

    def add(self, choice: dict[str, Any], *, delta: bool) -> None:
        if self.kind == "chat":
            msg = choice.get("delta" if delta else "message") or {}
            if not isinstance(msg, dict):
                raise PayloadError("bad message")
            text = msg.get("content")
        else:
            text = choice.get("text")
        if text is not None and not isinstance(text, str):
            raise PayloadError("text is not a string")
        if text:
            self.parts.append(text)
        if choice.get("finish_reason"):
            self.finish = str(choice["finish_reason"])
        lp = choice.get("logprobs")
        if lp:
            self.saw_logprobs = True
            try:
                if self.kind == "chat":
                    self._add_chat_logprobs(lp)
                else:
                    self._add_completion_logprobs(lp)
            except (TypeError, KeyError, ValueError, AttributeError) as exc:
                raise PayloadError("bad logprobs") from exc

    def _add_chat_logprobs(self, lp: dict[str, Any]) -> None:
        for item in lp.get("content") or []:
            self.tokens.append(str(item["token"]))
            self.lps.append(float(item["logprob"]))
            self.tops.append({str(t["token"]): float(t["logprob"]) for t in item.get("top_logprobs") or []})

    def _add_completion_logprobs(self, lp: dict[str, Any]) -> None:
        tokens = lp.get("tokens") or []
        values = lp.get("token_logprobs") or []
        tops = lp.get("top_logprobs") or [None] * len(tokens)
        if not len(tokens) == len(values) == len(tops):
            raise ValueError("logprobs lists differ in length")
        for tok, val, top in zip(tokens, values, tops, strict=True):
            self.tokens.append(str(tok))
            self.lps.append(float(val) if val is not None else float("nan"))
            self.tops.append({str(t): float(v) for t, v in (top or {}).items()})

    def answer(self) -> Answer:
        has_tokens = self.saw_logprobs and bool(self.tokens)
        has_tops = has_tokens and all(self.tops)
        return Answer(
            text="".join(self.parts),
            tokens=self.tokens if has_tokens else None,
            token_logprobs=self.lps if has_tokens else None,
            top_logprobs=self.tops if has_tops else None,
            finish_reason=self.finish,
        )


def parse_json_answer(kind: EndpointKind, body: bytes) -> Answer:
    acc = _Accumulator(kind)
    choice = _first_choice(_object(body))
    if choice is None:
        raise PayloadError("no choice 0")
    acc.add(choice, delta=False)
    return acc.answer()


def parse_sse_answer(kind: EndpointKind, body: bytes) -> Answer:
    """Reassemble a streamed completion from its ``data:`` events (until ``[DONE]``)."""
    acc = _Accumulator(kind)
    events = 0
    done = False
    for raw in body.splitlines():
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue  # comments, event names, blank separators
        data = line[5:].strip()
        if data == b"[DONE]":
            done = True
            break
        choice = _first_choice(_object(data))
        events += 1
        if choice is not None:
            acc.add(choice, delta=kind == "chat")
    if not done and events == 0:
        raise PayloadError("no events")
    return acc.answer()


def parse_answer(kind: EndpointKind, body: bytes, *, stream: bool) -> Answer:
    return parse_sse_answer(kind, body) if stream else parse_json_answer(kind, body)
