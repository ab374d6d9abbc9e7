"""A stand-in for a GPU server as a queue: K seats, a fixed service time, FIFO waiting beyond K.

Its ceiling is exactly K / service_s requests per second, whatever the client does, so a benchmark
can say how close servecmp gets to it (scripts/bench_throughput.py) and tests can give the
concurrency controller a server that saturates at a known K. It answers /v1/completions with a
valid top-20 logprobs body (" A" to " D" among them, so MCQ scoring reads it), /v1/models, and
/metrics with vLLM's prefix-cache counters (a request whose first 256 prompt characters it has seen
before counts as a hit).

Knobs, also settable while it runs (POST /control with a JSON object of the same names):
``service_s`` (a slow-down mid-run), ``overload_status`` (answer every request at once with this
status, e.g. 429: a storm; 0 turns it off), ``queue_limit`` (answer 429 to a request that would wait
behind more than this many; None: wait forever).

    python tests/stub_seats.py --port 8301 --seats 32 --service 0.25     # its own process

A plain ASGI app (no framework) and no JSON parsing of requests: the stub's own CPU stays small
next to the client it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import threading
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from tests.stub_openai import FILLERS, LETTERS, ThreadedApp

PREFIX_CHARS = 256


def completion_body(model: str, variant: int) -> bytes:
    """A /v1/completions answer with top-20 logprobs at one position; `variant` (0-3) picks which
    letter is most likely."""
    top = {tok: -3.0 - 0.1 * i for i, tok in enumerate(FILLERS[:16])}
    for i, letter in enumerate(LETTERS):
        top[letter] = -0.2 - 0.5 * ((i - variant) % 4)
    first = max(top, key=lambda t: top[t])
    body = {
        "id": "cmpl-seats", "object": "text_completion", "created": 0, "model": model,
        "choices": [{"index": 0, "text": first, "finish_reason": "length",
                     "logprobs": {"tokens": [first], "token_logprobs": [top[first]], "text_offset": [0],
                                  "top_logprobs": [top]}}],
        "usage": {"prompt_tokens": 600, "completion_tokens": 1, "total_tokens": 601},
    }
    return json.dumps(body).encode()


@dataclass
class Seats:
    seats: int = 8
    service_s: float = 0.25
    model: str = "seats-model"
    overload_status: int = 0
    queue_limit: int | None = None
    served: int = 0
    rejected: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    prefix_hits: int = 0
    prefix_queries: int = 0
    seen: set[bytes] = field(default_factory=set)
    _sem: asyncio.Semaphore | None = None
    _bodies: list[bytes] = field(default_factory=list)

    def bodies(self) -> list[bytes]:
        if not self._bodies:
            self._bodies = [completion_body(self.model, v) for v in range(4)]
        return self._bodies


async def _read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        msg = await receive()
        chunks.append(msg.get("body", b""))
        if not msg.get("more_body"):
            return b"".join(chunks)


async def _send(send: Any, status: int, body: bytes, ctype: bytes = b"application/json") -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def make_app(st: Seats) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        body = await _read_body(receive)
        if path.endswith("/completions"):
            await completions(body, send)
        elif path.endswith("/models"):
            await _send(send, 200, json.dumps({"object": "list", "data": [{"id": st.model}]}).encode())
        elif path == "/metrics":
            text = (f'vllm:prefix_cache_queries_total{{engine="0"}} {float(st.prefix_queries)}\n'
                    f'vllm:prefix_cache_hits_total{{engine="0"}} {float(st.prefix_hits)}\n')
            await _send(send, 200, text.encode(), b"text/plain")
        elif path == "/control":
            for k, v in json.loads(body or b"{}").items():
                setattr(st, k, v)
            await _send(send, 200, b"{}")
        else:
            await _send(send, 404, b'{"error": "not found"}')

    async def completions(body: bytes, send: Any) -> None:
        if st.overload_status:
            st.rejected += 1
            await _send(send, st.overload_status, b'{"error": "overloaded"}')
            return
        if st.queue_limit is not None and st.in_flight - st.seats >= st.queue_limit:
            st.rejected += 1
            await _send(send, 429, b'{"error": "queue full"}')
            return
        # The prompt's first characters: a prefix-cache hit when seen before (a few hundred bytes of
        # the JSON body, which begins with the prompt in servecmp's requests, stand in for them).
        start = body.find(b'"prompt"')
        key = body[start:start + PREFIX_CHARS]
        st.prefix_queries += 1
        if key in st.seen:
            st.prefix_hits += 1
        else:
            st.seen.add(key)
        if st._sem is None:
            st._sem = asyncio.Semaphore(st.seats)
        st.in_flight += 1
        st.max_in_flight = max(st.max_in_flight, st.in_flight)
        try:
            async with st._sem:
                await asyncio.sleep(st.service_s)
        finally:
            st.in_flight -= 1
        st.served += 1
        await _send(send, 200, st.bodies()[len(body) % 4])

    return app


class SeatsServer(ThreadedApp):
    """`with SeatsServer(Seats(seats=4, service_s=0.05)) as s: s.url` (uvicorn in a thread)."""

    def __init__(self, state: Seats) -> None:
        self.state = state
        super().__init__(make_app(state))


def ceiling(seats: int, service_s: float) -> float:
    """Requests per second the queue can serve at most."""
    return seats / service_s if service_s > 0 else math.inf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--seats", type=int, default=8)
    ap.add_argument("--service", type=float, default=0.25)
    ap.add_argument("--model", default="seats-model")
    args = ap.parse_args()
    st = Seats(seats=args.seats, service_s=args.service, model=args.model)
    # uvloop + httptools when installed: the stand-in's own overhead stays well under the client's.
    uvicorn.run(make_app(st), host="127.0.0.1", port=args.port, log_level="critical", lifespan="off",
                backlog=4096, access_log=False)


if __name__ == "__main__":
    threading.current_thread().name = "stub-seats"
    main()
