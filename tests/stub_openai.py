"""A tiny OpenAI-compatible server for fault injection: the failures a real vLLM cannot be made to
produce on demand (429, 5xx, timeouts, dropped connections, missing logprobs).

Answers are deterministic functions of the prompt, so tests can compute the expected records
independently. It runs uvicorn in a thread on 127.0.0.1 with a free port.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

LETTERS = [" A", " B", " C", " D"]
FILLERS = [" The", " I", "\n", " Answer", " It", " This", " a", " 1", " In", " E", " F", " G", " H",
           " J", " K", " L", " M", " N", " O", " P"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _u(seed: str) -> float:
    """A deterministic number in (0, 1) from a string."""
    h = hashlib.sha256(seed.encode()).digest()
    return (int.from_bytes(h[:8], "big") + 1) / (2**64 + 2)


def next_token_logprobs(prompt: str, model: str, k: int) -> dict[str, float]:
    """A normalised distribution over LETTERS + FILLERS; returns the top-k as logprobs."""
    vocab = LETTERS + FILLERS
    weights = [math.exp(4 * _u(f"{model}|{prompt}|{t}")) for t in vocab]
    z = sum(weights)
    lps = {t: math.log(w / z) for t, w in zip(vocab, weights, strict=True)}
    top = sorted(lps.items(), key=lambda kv: -kv[1])[:k]
    return dict(top)


TOKEN_RE = re.compile(r"\s*\S+|\s+")


def echo_tokens(text: str, model: str) -> list[tuple[str, float | None]]:
    toks = TOKEN_RE.findall(text)
    out: list[tuple[str, float | None]] = []
    vocab = set(LETTERS + FILLERS)
    for i, t in enumerate(toks):
        prefix = "".join(toks[:i])
        if i == 0:
            out.append((t, None))
        elif t in vocab:
            # Consistent with the next-token distribution, as a real model's echo would be.
            out.append((t, next_token_logprobs(prefix, model, len(vocab))[t]))
        else:
            out.append((t, math.log(_u(f"{model}|echo|{prefix}|{t}"))))
    return out


@dataclass
class StubState:
    model: str = "stub-model"
    #: Scripted failures, consumed one per request in order: an int status, "drop", "sleep:S", or None.
    script: list[Any] = field(default_factory=list)
    #: Applied to every request after the script: e.g. ("fail_after", N).
    fail_after: int | None = None
    no_logprobs: bool = False
    delay_s: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def make_app(state: StubState) -> Starlette:
    async def fault(request: Request) -> tuple[Response | None, dict[str, Any]]:
        body = await request.body()  # before the lock: awaiting while holding it would deadlock the loop
        with state.lock:
            n = len(state.requests)
            parsed = json.loads(body) if body else {}
            state.requests.append({"path": request.url.path, "body": parsed, "headers": dict(request.headers)})
            action = state.script.pop(0) if state.script else None
        if action is None and state.fail_after is not None and n >= state.fail_after:
            action = 503
        if state.delay_s:
            await asyncio.sleep(state.delay_s)
        if isinstance(action, int):
            return JSONResponse({"error": {"message": f"injected {action}"}}, status_code=action), parsed
        if isinstance(action, str) and action.startswith("sleep:"):
            await asyncio.sleep(float(action.split(":", 1)[1]))
        if action == "drop":
            raise ConnectionAbortedError("injected dropped connection")
        return None, parsed

    async def models(request: Request) -> Response:
        return (await fault(request))[0] or JSONResponse(
            {"object": "list", "data": [{"id": state.model, "object": "model"}]}
        )

    async def completions(request: Request) -> Response:
        failed, body = await fault(request)
        if failed is not None:
            return failed
        if body.get("model") != state.model:
            return JSONResponse({"error": {"message": f"model {body.get('model')} not found"}}, status_code=404)
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        k = body.get("logprobs")
        choices = []
        for i, p in enumerate(prompts):
            top = next_token_logprobs(p, state.model, k or 1)
            tok, lp = next(iter(top.items()))
            logprobs = None
            if k is not None and not state.no_logprobs:
                tokens, token_lps, offsets, tops = [], [], [], []
                pos = 0
                if body.get("echo"):
                    for t, tlp in echo_tokens(p, state.model):
                        tokens.append(t)
                        token_lps.append(tlp)
                        offsets.append(pos)
                        tops.append(None if tlp is None else {t: tlp})
                        pos += len(t)
                tokens.append(tok)
                token_lps.append(lp)
                offsets.append(pos)
                tops.append(top)
                logprobs = {"tokens": tokens, "token_logprobs": token_lps, "text_offset": offsets,
                            "top_logprobs": tops}
            choices.append({"index": i, "text": (p if body.get("echo") else "") + tok, "logprobs": logprobs,
                            "finish_reason": "length"})
        return JSONResponse({
            "id": "cmpl-stub", "object": "text_completion", "created": int(time.time()), "model": state.model,
            "choices": choices,
            "usage": {"prompt_tokens": sum(len(p) // 4 for p in prompts), "completion_tokens": len(prompts),
                      "total_tokens": sum(len(p) // 4 for p in prompts) + len(prompts)},
        })

    async def chat(request: Request) -> Response:
        failed, body = await fault(request)
        if failed is not None:
            return failed
        last = body["messages"][-1]["content"]
        text = f"stub answer to: {last[:40]}"
        return JSONResponse({
            "id": "chat-stub", "object": "chat.completion", "created": int(time.time()), "model": state.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        })

    return Starlette(routes=[
        Route("/v1/models", models),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
    ])


class ThreadedApp:
    """`with ThreadedApp(asgi_app) as s: s.url` — uvicorn in a daemon thread on 127.0.0.1, free port."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="critical", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        deadline = time.time() + 10
        while not self._server.started:
            if time.time() > deadline:
                raise RuntimeError("stub server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)


class StubServer(ThreadedApp):
    """The completions/chat stub above, with its state reachable as `.state`."""

    def __init__(self, state: StubState | None = None) -> None:
        self.state = state or StubState()
        super().__init__(make_app(self.state))


def run_forever(state_factory: Callable[[], StubState], port: int) -> None:
    """Entry point for a stub in its own process (used by kill -9 tests)."""
    uvicorn.run(make_app(state_factory()), host="127.0.0.1", port=port, log_level="critical")


if __name__ == "__main__":
    import sys

    st = StubState(model=sys.argv[2] if len(sys.argv) > 2 else "stub-model",
                   delay_s=float(sys.argv[3]) if len(sys.argv) > 3 else 0.0)
    run_forever(lambda: st, int(sys.argv[1]))
