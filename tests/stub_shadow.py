"""A fake OpenAI-compatible (and vLLM-flavoured) server for the shadow tests and benchmark.

Answers, ids and logprobs are deterministic functions of the request, so a response fetched directly
and one fetched through the proxy can be compared byte for byte. It serves ``/v1/models``,
``/v1/completions`` (incl. vLLM's ``prompt_logprobs`` over token-id prompts), ``/v1/chat/completions``
(streamed or not, with logprobs on request) and vLLM's ``/tokenize``. Its tokenizer is reversible
(a token's id is its UTF-8 bytes read as an integer), so separate stub instances agree on ids.

Faults are switched at run time on `StubControl`: delay, error status, garbage body, dropped
connection, a gate that holds every generation until a test releases it, and answer variants that
make a "candidate" diverge. Run standalone for the benchmark: ``python -m tests.stub_shadow``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import json
import math
import re
import socket
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

WORDS = [
    "the", "cat", "sat", "on", "a", "mat", "while", "rain", "fell", "over", "quiet", "hills", "and", "old",
    "roads", "led", "far", "into", "green", "woods", "where", "birds", "sang", "softly", "near", "bright",
    "water", "under", "tall", "pines",
]
TOKEN_RE = re.compile(r"\s*\S+")
CREATED = 1_700_000_000
#: Probability the stub puts on the chosen token and on four alternatives, per variant.
PROBS = {0: (0.6, 0.2, 0.1, 0.05, 0.02), 1: (0.5, 0.25, 0.1, 0.06, 0.03)}


def token_id(token: str) -> int:
    return int.from_bytes(token.encode("utf-8"), "big")


def id_token(tid: int) -> str:
    return tid.to_bytes((tid.bit_length() + 7) // 8, "big").decode("utf-8")


def tokenize(text: str) -> list[str]:
    return TOKEN_RE.findall(text)


def _h(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "big")


def render_chat(messages: list[dict[str, Any]]) -> str:
    return "".join(f"<|{m.get('role')}|> {m.get('content')}\n" for m in messages) + "<|assistant|>"


def answer_tokens(prompt: str, variant: int, n: int) -> list[str]:
    """The answer to a prompt: n words; a non-zero variant swaps about a third of them."""
    out = []
    for i in range(n):
        w = _h(prompt, i) % len(WORDS)
        if variant and _h("variant", variant, prompt, i) % 3 == 0:
            w = (w + 1 + variant) % len(WORDS)
        out.append(WORDS[w] if i == 0 else " " + WORDS[w])
    return out


def distribution(token: str, variant: int) -> dict[str, float]:
    """Top-5 logprobs at a position whose actual token is ``token``."""
    base = WORDS.index(token.strip()) if token.strip() in WORDS else _h(token) % len(WORDS)
    probs = PROBS[1 if variant else 0]
    lead = " " if token.startswith(" ") else ""
    out = {token: math.log(probs[0])}
    for j, p in enumerate(probs[1:], start=1):
        alt = lead + WORDS[(base + 3 * j) % len(WORDS)]
        if alt not in out:
            out[alt] = math.log(p)
    return out


def _top(dist: dict[str, float], k: int) -> list[tuple[str, float]]:
    return sorted(dist.items(), key=lambda kv: -kv[1])[:k]


def _bounded() -> collections.deque[Any]:
    return collections.deque(maxlen=1000)


@dataclass
class StubControl:
    """Behaviour switches and observations of one stub server (shared with the test thread)."""

    model: str = "stub-model"
    variant: int = 0
    n_words: int = 8
    delay_s: float = 0.0
    status: int = 200
    garbage: bool = False
    drop: bool = False
    #: Seconds a stream waits after its last event (``[DONE]``) before it ends, as a server that is
    #: slow to close the chunked body (lets a test's client leave after [DONE] but before the end).
    tail_delay_s: float = 0.0
    tokenize: bool = True
    #: When set, generation requests wait until the event is set (released by the test).
    gate: threading.Event | None = None
    #: Set whenever a generation request arrives.
    received: threading.Event = field(default_factory=threading.Event)
    #: Set whenever a generation request has been answered.
    answered: threading.Event = field(default_factory=threading.Event)
    generations: int = 0
    #: Authorization headers seen on every request (bounded), for the credential tests.
    authorizations: collections.deque[str | None] = field(default_factory=lambda: _bounded())
    paths: collections.deque[str] = field(default_factory=lambda: _bounded())
    #: The model named by every generation request (bounded), for the model-name tests.
    models: collections.deque[str | None] = field(default_factory=lambda: _bounded())


def _completion_logprobs(tokens: list[str], variant: int, k: int) -> dict[str, Any]:
    offsets, pos = [], 0
    for t in tokens:
        offsets.append(pos)
        pos += len(t)
    return {
        "text_offset": offsets,
        "token_logprobs": [distribution(t, variant)[t] for t in tokens],
        "tokens": tokens,
        "top_logprobs": [dict(_top(distribution(t, variant), k)) for t in tokens],
    }


def _chat_logprobs(tokens: list[str], variant: int, k: int) -> dict[str, Any]:
    content = []
    for t in tokens:
        d = distribution(t, variant)
        content.append({
            "token": t,
            "logprob": d[t],
            "bytes": list(t.encode()),
            "top_logprobs": [{"token": a, "logprob": v, "bytes": list(a.encode())} for a, v in _top(d, k)],
        })
    return {"content": content}


def _prompt_logprobs(ids: list[int], variant: int, k: int) -> list[dict[str, Any] | None]:
    out: list[dict[str, Any] | None] = [None]
    for tid in ids[1:]:
        tok = id_token(tid)
        ranked = _top(distribution(tok, variant), len(PROBS[0]))
        row = {}
        for rank, (t, v) in enumerate(ranked, start=1):
            if rank <= k or t == tok:
                row[str(token_id(t))] = {"logprob": v, "rank": rank, "decoded_token": t}
        out.append(row)
    return out


def build_stub_app(ctl: StubControl) -> Starlette:
    async def models(request: Request) -> Response:
        ctl.authorizations.append(request.headers.get("authorization"))
        ctl.paths.append(request.url.path)
        data = [{"id": ctl.model, "object": "model", "owned_by": "stub"}]
        return JSONResponse({"object": "list", "data": data})

    async def tokenize_route(request: Request) -> Response:
        ctl.authorizations.append(request.headers.get("authorization"))
        ctl.paths.append(request.url.path)
        if not ctl.tokenize:
            return JSONResponse({"detail": "Not Found"}, 404)
        body = await request.json()
        text = render_chat(body["messages"]) if "messages" in body else str(body["prompt"])
        ids = [token_id(t) for t in tokenize(text)]
        return JSONResponse({"count": len(ids), "max_model_len": 2048, "tokens": ids})

    async def generate(request: Request) -> Response:
        ctl.authorizations.append(request.headers.get("authorization"))
        ctl.paths.append(request.url.path)
        raw = await request.body()
        try:
            named = json.loads(raw).get("model")
        except (ValueError, AttributeError):
            named = None  # garbage bodies are the tests' business, not this bookkeeping's
        ctl.models.append(named)
        ctl.received.set()
        try:
            if ctl.gate is not None:
                await asyncio.to_thread(ctl.gate.wait, 30)
            if ctl.delay_s:
                await asyncio.sleep(ctl.delay_s)
            return _generate(ctl, request.url.path, raw)
        finally:
            ctl.generations += 1
            ctl.answered.set()

    return Starlette(routes=[
        Route("/v1/models", models, methods=["GET"]),
        Route("/tokenize", tokenize_route, methods=["POST"]),
        Route("/v1/completions", generate, methods=["POST"]),
        Route("/v1/chat/completions", generate, methods=["POST"]),
    ])


def _generate(ctl: StubControl, path: str, raw: bytes) -> Response:
    if ctl.status != 200:
        error = {"message": "stub failure", "type": "server_error", "code": ctl.status}
        return JSONResponse({"error": error}, ctl.status)
    if ctl.garbage:
        return Response(b"<html>\x00not json at all", media_type="application/json")
    body = json.loads(raw)
    chat = path.endswith("/chat/completions")
    stream = bool(body.get("stream"))
    variant = ctl.variant
    model = body.get("model", ctl.model)
    rid = hashlib.sha256(raw).hexdigest()[:16]

    prompt_ids: list[int] | None = None
    if chat:
        prompt = render_chat(body["messages"])
    elif isinstance(body.get("prompt"), list) and all(isinstance(t, int) for t in body["prompt"]):
        prompt_ids = [int(t) for t in body["prompt"]]
        prompt = "".join(id_token(t) for t in prompt_ids)
    else:
        prompt = str(body.get("prompt"))
    n = min(ctl.n_words, int(body.get("max_tokens") or ctl.n_words))
    tokens = answer_tokens(prompt, variant, n)
    text = "".join(tokens)
    if chat:
        k = int(body.get("top_logprobs") or 0)
        lp = _chat_logprobs(tokens, variant, k) if body.get("logprobs") else None
    else:
        k = int(body.get("logprobs") or 0)
        lp = _completion_logprobs(tokens, variant, k) if body.get("logprobs") is not None else None
    usage = {"prompt_tokens": len(tokenize(prompt)), "completion_tokens": n,
             "total_tokens": len(tokenize(prompt)) + n}

    if not stream:
        if chat:
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                      "logprobs": lp, "finish_reason": "length"}
            obj = {"id": f"chatcmpl-{rid}", "object": "chat.completion", "created": CREATED, "model": model,
                   "choices": [choice], "usage": usage}
        else:
            choice = {"index": 0, "text": text, "logprobs": lp, "finish_reason": "length"}
            if body.get("prompt_logprobs") is not None and prompt_ids is not None:
                k_prompt = int(body["prompt_logprobs"])
                choice["prompt_logprobs"] = _prompt_logprobs(prompt_ids, variant, k_prompt)
            obj = {"id": f"cmpl-{rid}", "object": "text_completion", "created": CREATED, "model": model,
                   "choices": [choice], "usage": usage}
        data = json.dumps(obj).encode()
        if ctl.drop:
            return StreamingResponse(_dropping([data[: len(data) // 2]]), media_type="application/json",
                                     headers={"content-length": str(len(data))})
        return Response(data, media_type="application/json")

    events = []
    for i, tok in enumerate(tokens):
        if chat:
            delta: dict[str, Any] = {"content": tok} if i else {"role": "assistant", "content": tok}
            ch: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
            if lp is not None:
                ch["logprobs"] = {"content": [lp["content"][i]]}
            ev = {"id": f"chatcmpl-{rid}", "object": "chat.completion.chunk", "created": CREATED,
                  "model": model, "choices": [ch]}
        else:
            ch = {"index": 0, "text": tok, "logprobs": None, "finish_reason": None}
            if lp is not None:
                ch["logprobs"] = {key: [vals[i]] for key, vals in lp.items()}
            ev = {"id": f"cmpl-{rid}", "object": "text_completion", "created": CREATED, "model": model,
                  "choices": [ch]}
        if i == len(tokens) - 1:
            ch["finish_reason"] = "length"
        events.append(b"data: " + json.dumps(ev).encode() + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    if ctl.drop:
        return StreamingResponse(_dropping(events[:2]), media_type="text/event-stream")
    return StreamingResponse(_events(events, ctl.tail_delay_s), media_type="text/event-stream")


async def _events(events: list[bytes], tail_delay_s: float = 0.0) -> AsyncIterator[bytes]:
    for ev in events:
        yield ev
        await asyncio.sleep(0)  # one chunk per event on the wire
    if tail_delay_s:
        await asyncio.sleep(tail_delay_s)


class StubDropped(Exception):
    """Raised inside a response body so uvicorn aborts the connection (a dropped-connection fault)."""


async def _dropping(parts: list[bytes]) -> AsyncIterator[bytes]:
    for p in parts:
        yield p
        await asyncio.sleep(0)
    raise StubDropped("stub drops the connection")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerThread:
    """An ASGI app on uvicorn in a background thread, bound to 127.0.0.1 on a free port."""

    def __init__(self, app: Any, *, port: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port or 0))
        self.port = int(self.sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="critical", access_log=False, lifespan="auto",
                                server_header=False, date_header=False, timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server thread failed to start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the servecmp shadow stub server (loopback only).")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-s", type=float, default=0.0)
    parser.add_argument("--variant", type=int, default=0)
    parser.add_argument("--n-words", type=int, default=8)
    args = parser.parse_args()
    ctl = StubControl(delay_s=args.delay_s, variant=args.variant, n_words=args.n_words)
    uvicorn.run(build_stub_app(ctl), host="127.0.0.1", port=args.port, log_level="warning", access_log=False,
                server_header=False, date_header=False)


if __name__ == "__main__":
    main()
