"""A small OpenAI-compatible server for `servecmp gen` tests: scripted generations, a character
tokenizer (/tokenize: token id = Unicode code point) and vLLM-style ``prompt_logprobs`` drawn from
known full distributions, so tests can work out every number independently.

Generation: ``answers[prompt]`` (completions) or ``answers[last user message]`` (chat) is the text,
or a list of texts for ``n`` samples (sample i gets element i); ``truncate`` lists prompts answered
with finish_reason "length". Unknown prompts get ``default``.

Teacher forcing: at every prompt position j >= 1 the distribution over the next token is
`position_dist(model, ids[:j], ids[j])`: four tokens (the actual one and three others) with
probabilities that depend on the model and the position; it is the whole distribution (it sums
to 1), so a top-k of 4 or more covers it and the tight top-k estimate equals the exact KL.
"""

from __future__ import annotations

import hashlib
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

from tests.stub_openai import ThreadedApp


def _u(seed: str) -> float:
    h = hashlib.sha256(seed.encode()).digest()
    return (int.from_bytes(h[:8], "big") + 1) / (2**64 + 2)


def tokenize(text: str) -> list[int]:
    return [ord(c) for c in text]


def chat_render(messages: list[dict[str, str]]) -> str:
    """The stub's 'chat template' (what /tokenize renders for messages)."""
    return "".join(f"<{m['role']}>{m['content']}\n" for m in messages) + "<assistant>"


def position_dist(model: str, prefix_len: int, actual: int) -> dict[int, float]:
    """The full next-token distribution at a position: probabilities over 4 token ids."""
    others = [actual + 1, actual + 2, actual + 3]
    ids = [actual, *others]
    weights = [math.exp(3 * _u(f"{model}|{prefix_len}|{t}")) for t in ids]
    z = sum(weights)
    return {t: w / z for t, w in zip(ids, weights, strict=True)}


@dataclass
class GenStubState:
    model: str = "stub-model"
    answers: dict[str, Any] = field(default_factory=dict)
    default: str = "I do not know."
    truncate: set[str] = field(default_factory=set)
    chat_only: bool = False
    no_tokenize: bool = False
    no_prompt_logprobs: bool = False
    delay_s: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def texts(self, key: str, n: int) -> list[str]:
        value = self.answers.get(key, self.default)
        if isinstance(value, list):
            return [value[i % len(value)] for i in range(n)]
        return [value] * n


def make_app(state: GenStubState) -> Starlette:
    async def record(request: Request) -> dict[str, Any]:
        body = await request.body()
        parsed = json.loads(body) if body else {}
        with state.lock:
            state.requests.append({"path": request.url.path, "body": parsed})
        if state.delay_s:
            import asyncio

            await asyncio.sleep(state.delay_s)
        return parsed

    async def models(request: Request) -> Response:
        await record(request)
        return JSONResponse({"object": "list", "data": [{"id": state.model, "object": "model"}]})

    def usage(texts: list[str]) -> dict[str, int]:
        return {"prompt_tokens": 10, "completion_tokens": sum(len(t) for t in texts),
                "total_tokens": 10 + sum(len(t) for t in texts)}

    async def completions(request: Request) -> Response:
        body = await record(request)
        if state.chat_only:
            return JSONResponse({"error": {"message": "no completions here"}}, status_code=404)
        if body.get("model") != state.model:
            return JSONResponse({"error": {"message": "unknown model"}}, status_code=404)
        prompt = body["prompt"]
        if isinstance(prompt, list):  # token ids: teacher forcing
            if state.no_prompt_logprobs:
                return JSONResponse({"error": {"message": "prompt_logprobs not supported"}}, status_code=400)
            k = int(body.get("prompt_logprobs") or 0)
            rows: list[Any] = [None]
            for j in range(1, len(prompt)):
                dist = position_dist(state.model, j, prompt[j])
                top = sorted(dist.items(), key=lambda kv: -kv[1])[:k]
                row = {str(t): {"logprob": math.log(p), "rank": r + 1, "decoded_token": chr(t)}
                       for r, (t, p) in enumerate(top)}
                row.setdefault(str(prompt[j]), {"logprob": math.log(dist[prompt[j]]), "rank": 99,
                                                "decoded_token": chr(prompt[j])})
                rows.append(row)
            return JSONResponse({"id": "tf", "object": "text_completion", "model": state.model,
                                 "choices": [{"index": 0, "text": "x", "finish_reason": "length",
                                              "prompt_logprobs": rows}], "usage": usage(["x"])})
        n = int(body.get("n") or 1)
        texts = state.texts(prompt, n)
        finish = "length" if prompt in state.truncate else "stop"
        return JSONResponse({"id": "cmpl", "object": "text_completion", "created": int(time.time()),
                             "model": state.model,
                             "choices": [{"index": i, "text": t, "finish_reason": finish, "logprobs": None}
                                         for i, t in enumerate(texts)],
                             "usage": usage(texts)})

    async def chat(request: Request) -> Response:
        body = await record(request)
        last = body["messages"][-1]["content"]
        n = int(body.get("n") or 1)
        texts = state.texts(last, n)
        finish = "length" if last in state.truncate else "stop"
        return JSONResponse({"id": "chat", "object": "chat.completion", "created": int(time.time()),
                             "model": state.model,
                             "choices": [{"index": i, "message": {"role": "assistant", "content": t},
                                          "finish_reason": finish} for i, t in enumerate(texts)],
                             "usage": usage(texts)})

    async def tokenize_route(request: Request) -> Response:
        body = await record(request)
        if state.no_tokenize:
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        text = chat_render(body["messages"]) if "messages" in body else body["prompt"]
        ids = tokenize(text)
        return JSONResponse({"count": len(ids), "max_model_len": 8192, "tokens": ids})

    return Starlette(routes=[
        Route("/v1/models", models),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/tokenize", tokenize_route, methods=["POST"]),
    ])


class GenStub(ThreadedApp):
    def __init__(self, state: GenStubState | None = None) -> None:
        self.state = state or GenStubState()
        super().__init__(make_app(self.state))


def serve_forever(port: int, config_json: str) -> None:
    """Entry point for a stub in its own process (kill -9 tests): GenStubState fields as JSON."""
    import uvicorn

    cfg = json.loads(config_json)
    cfg["truncate"] = set(cfg.get("truncate", []))
    uvicorn.run(make_app(GenStubState(**cfg)), host="127.0.0.1", port=port, log_level="critical")


if __name__ == "__main__":
    import sys

    serve_forever(int(sys.argv[1]), sys.argv[2])
