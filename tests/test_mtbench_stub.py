"""A small OpenAI-compatible chat stub for the MT-Bench tests (helpers only; no tests in this file).

One server per role (baseline, candidate, judge) so each counts its own requests. Answers and
judgments are deterministic functions of the request, so tests can state exact expected values:

- an answering stub replies "[<model>] turn <k>: <first 40 chars of the last user message>";
- the judge reads the tags of the answers it is shown: single grading rates an answer containing
  "[base]" 8 and "[cand]" 6; pairwise names whichever assistant's answer contains "[base]".
  Markers in a question steer it: "NO-RATING" (no rating at all), "OUT-OF-RANGE" ([[11]]),
  "BACKUP" (the single-bracket [7] fallback), "CAND-WINS" (rates [cand] 9, prefers it pairwise).
- `biased=True` makes the pairwise judge always answer [[A]] (pure position bias);
  `fixed_reply` makes every reply that text.
- `fail_after=N` answers HTTP 503 to every chat request after the first N; `down_after=N` drops
  the connection instead (an endpoint that died).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.stub_openai import ThreadedApp


def judge_text(system: str, user: str, *, biased: bool = False) -> str:
    if "[[A]]" in system:  # a pairwise prompt names the verdict format in its system message
        if biased:
            return "Both are fine. [[A]]"
        a_start = user.find("Assistant A")
        b_start = user.find("Assistant B")
        base_in_a = user.find("[base]", a_start) < b_start if "[base]" in user else False
        if "CAND-WINS" in user:
            return "B is better. [[B]]" if base_in_a else "A is better. [[A]]"
        return "A is better. [[A]]" if base_in_a else "B is better. [[B]]"
    if "NO-RATING" in user:
        return "I cannot decide."
    if "OUT-OF-RANGE" in user:
        return "Superb. Rating: [[11]]"
    if "BACKUP" in user:
        return "Decent. Rating: [7]"
    if "[cand]" in user:
        return "Rating: [[9]]" if "CAND-WINS" in user else "Rating: [[6]]"
    return "Rating: [[8]]"


@dataclass
class ChatStubState:
    model: str
    #: Tag put in every answer, e.g. "[base]".
    tag: str = ""
    biased: bool = False
    #: When set, every chat request gets exactly this text (e.g. "" for an empty answer).
    fixed_reply: str | None = None
    fail_after: int | None = None
    down_after: int | None = None
    chat_requests: list[dict[str, Any]] = field(default_factory=list)
    #: Chat requests answered with HTTP 200. Counted by the stub, so a test need not guess how many
    #: failing requests were still arriving when the client gave up.
    n_ok: int = 0
    #: The Authorization header of each chat request (None when absent), in arrival order.
    authorizations: list[str | None] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def n_chat(self) -> int:
        return len(self.chat_requests)


def settled_count(state: ChatStubState, quiet: float = 0.3, limit: float = 10.0) -> int:
    """The stub's request count once no request has arrived for `quiet` seconds.

    A run that stops abandons its in-flight requests; the stub may see them a moment after the CLI
    returned, so a count read at once can be short by one.
    """
    deadline = time.monotonic() + limit
    last = state.n_chat
    while time.monotonic() < deadline:
        time.sleep(quiet)
        if state.n_chat == last:
            return last
        last = state.n_chat
    return last


def make_chat_app(state: ChatStubState) -> Starlette:
    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": state.model, "object": "model"}]})

    async def chat(request: Request) -> Response:
        body = await request.json()
        with state.lock:
            n = state.n_chat
            state.chat_requests.append(body)
            state.authorizations.append(request.headers.get("authorization"))
        if state.down_after is not None and n >= state.down_after:
            raise ConnectionAbortedError("stub endpoint is down")
        if state.fail_after is not None and n >= state.fail_after:
            return JSONResponse({"error": {"message": "injected 503"}}, status_code=503)
        if body.get("model") != state.model:
            return JSONResponse(
                {"error": {"message": f"model {body.get('model')} not found"}}, status_code=404
            )
        messages = body["messages"]
        if state.fixed_reply is not None:
            text = state.fixed_reply
        elif messages[0]["role"] == "system":
            text = judge_text(messages[0]["content"], messages[-1]["content"], biased=state.biased)
        else:
            turn = sum(m["role"] == "user" for m in messages)
            text = f"{state.tag} turn {turn}: {messages[-1]['content'][:40]}"
        with state.lock:
            state.n_ok += 1
        return JSONResponse(
            {
                "id": "chat-stub",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": state.model,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 10, "completion_tokens": len(text.split()), "total_tokens": 10},
            }
        )

    return Starlette(
        routes=[Route("/v1/models", models), Route("/v1/chat/completions", chat, methods=["POST"])]
    )


class ChatStub(ThreadedApp):
    """`with ChatStub(ChatStubState(...)) as s: s.url` — uvicorn in a daemon thread on 127.0.0.1."""

    def __init__(self, state: ChatStubState) -> None:
        self.state = state
        super().__init__(make_chat_app(state))
