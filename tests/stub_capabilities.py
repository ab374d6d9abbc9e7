"""An OpenAI-compatible stub whose capabilities can be switched off one by one, for the capability
probe (servecmp.capabilities) and the chat MCQ path (servecmp.mcq.chat).

Distributions are those of tests/stub_openai.py (deterministic functions of the prompt), so tests
compute expected values independently:

- /v1/completions: top-k of `next_token_logprobs(prompt)`; echo=true adds each prompt token's
  logprob (`echo_tokens`), with `echo_shift` nats added to letter tokens (a server whose two
  logprob paths disagree).
- /v1/chat/completions: the key is the last user message. Each letter L gets the mass
  ``CHAT_LETTER_MASS * p_L`` (p_L: `next_token_logprobs(key)` renormalised over " A".." D"), split
  ``CHAT_BARE_SHARE`` to the bare token "L" and the rest to " L"; sixteen fillers share what is left.
- /tokenize: vLLM's route.
"""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.stub_openai import FILLERS, LETTERS, ThreadedApp, echo_tokens, next_token_logprobs

CHAT_LETTER_MASS = 0.99
CHAT_BARE_SHARE = 0.75
CHAT_FILLERS = ["The", "I", "You", "Answer", "It", "This", "a", "1", "In", "Given", "To", "Let", "We", "So", "If",
                "What"]


def letter_probs(key: str, model: str) -> dict[str, float]:
    """p_L over the four letters (" A".." D"), renormalised: what the chat stub splits."""
    lps = next_token_logprobs(key, model, len(LETTERS) + len(FILLERS))
    z = sum(math.exp(lps[t]) for t in LETTERS)
    return {t.strip(): math.exp(lps[t]) / z for t in LETTERS}


def chat_distribution(key: str, model: str) -> dict[str, float]:
    """Every token the chat stub can emit first, with its probability (sums to 1)."""
    out: dict[str, float] = {}
    for letter, p in letter_probs(key, model).items():
        out[letter] = CHAT_LETTER_MASS * p * CHAT_BARE_SHARE
        out[" " + letter] = CHAT_LETTER_MASS * p * (1 - CHAT_BARE_SHARE)
    for t in CHAT_FILLERS:
        out[t] = (1 - CHAT_LETTER_MASS) / len(CHAT_FILLERS)
    return out


@dataclass
class CapsState:
    model: str = "caps-model"
    completions: bool = True
    #: Completions answer without logprobs (a server that ignores the parameter).
    completions_logprobs: bool = True
    chat: bool = True
    chat_logprobs: bool = True
    echo: bool = True
    tokenize: bool = True
    #: Refuse logprobs/top_logprobs above this, with vLLM's message.
    max_top_k: int | None = None
    #: Added to echoed letter-token logprobs: the echo path disagrees with the top-k path.
    echo_shift: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _too_many(state: CapsState, k: int | None, name: str) -> Response | None:
    if k is not None and state.max_top_k is not None and k > state.max_top_k:
        return JSONResponse({"error": {"message": f"Requested sample logprobs of {k}, which is greater than max "
                                                  f"allowed: {state.max_top_k} (parameter={name}, value={k})",
                                       "type": "BadRequestError", "code": 400}}, status_code=400)
    return None


def make_caps_app(state: CapsState) -> Starlette:
    async def body_of(request: Request) -> dict[str, Any]:
        raw = await request.body()
        parsed = json.loads(raw) if raw else {}
        with state.lock:
            state.requests.append({"path": request.url.path, "body": parsed})
        return parsed

    def not_found() -> Response:
        return JSONResponse({"error": {"message": "Not Found"}}, status_code=404)

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": state.model, "object": "model"}]})

    async def completions(request: Request) -> Response:
        body = await body_of(request)
        if not state.completions:
            return not_found()
        k = body.get("logprobs")
        refused = _too_many(state, k, "logprobs")
        if refused is not None:
            return refused
        if body.get("echo") and not state.echo:
            return JSONResponse({"error": {"message": "echo is not supported"}}, status_code=400)
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        choices = []
        for i, p in enumerate(prompts):
            top = next_token_logprobs(p, state.model, k or 1)
            tok = next(iter(top))
            logprobs = None
            if k is not None and state.completions_logprobs:
                tokens, lps, offsets, tops = [], [], [], []
                pos = 0
                if body.get("echo"):
                    for t, tlp in echo_tokens(p, state.model):
                        if tlp is not None and t in LETTERS:
                            tlp += state.echo_shift
                        tokens.append(t)
                        lps.append(tlp)
                        offsets.append(pos)
                        tops.append(None if tlp is None else {t: tlp})
                        pos += len(t)
                tokens.append(tok)
                lps.append(top[tok])
                offsets.append(pos)
                tops.append(top)
                logprobs = {"tokens": tokens, "token_logprobs": lps, "text_offset": offsets, "top_logprobs": tops}
            choices.append({"index": i, "text": tok, "logprobs": logprobs, "finish_reason": "length"})
        return JSONResponse({"object": "text_completion", "created": int(time.time()), "model": state.model,
                             "choices": choices,
                             "usage": {"prompt_tokens": 7, "completion_tokens": 1, "total_tokens": 8}})

    async def chat(request: Request) -> Response:
        body = await body_of(request)
        if not state.chat:
            return not_found()
        k = body.get("top_logprobs") if body.get("logprobs") else None
        refused = _too_many(state, k, "top_logprobs")
        if refused is not None:
            return refused
        key = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
        dist = sorted(chat_distribution(key, state.model).items(), key=lambda kv: -kv[1])
        tok, p = dist[0]
        logprobs = None
        if k is not None and state.chat_logprobs:
            logprobs = {"content": [{"token": tok, "logprob": math.log(p), "bytes": list(tok.encode()),
                                     "top_logprobs": [{"token": t, "logprob": math.log(q), "bytes": list(t.encode())}
                                                      for t, q in dist[:k]]}]}
        return JSONResponse({"object": "chat.completion", "created": int(time.time()), "model": state.model,
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": tok},
                                          "logprobs": logprobs, "finish_reason": "length"}],
                             "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10}})

    async def tokenize(request: Request) -> Response:
        await body_of(request)
        if not state.tokenize:
            return not_found()
        return JSONResponse({"count": 2, "tokens": [1, 2], "max_model_len": 4096})

    return Starlette(routes=[
        Route("/v1/models", models),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/tokenize", tokenize, methods=["POST"]),
    ])


class CapsStub(ThreadedApp):
    """`with CapsStub(CapsState(chat=False)) as s: s.url`."""

    def __init__(self, state: CapsState | None = None) -> None:
        self.state = state or CapsState()
        super().__init__(make_caps_app(self.state))
