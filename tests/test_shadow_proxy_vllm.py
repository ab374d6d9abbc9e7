"""`servecmp shadow serve`, the shadow reverse proxy, as a process in front of the real vLLM pair.

The stub-based tests (test_shadow_proxy.py) check the proxy's HTTP against servers written for the
tests; this one checks it against vLLM itself, with the official openai SDK as the client: what
vLLM really sends (its SSE framing, its keep-alive, its headers) passes through the proxy's own
HTTP/1.1 server and upstream pool unchanged, and the answer the mirror records is the one the
client saw.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from servecmp.shadow.store import load_all
from tests.stub_shadow import free_port
from tests.test_shadow_collect import ROOT, interrupt
from tests.test_shadow_metrics import assert_metrics_equal_store, scrape, total
from tests.test_shadow_proxy import wait_for

#: Generous: the pair runs on 2 shared CPU cores, and the mirror's teacher forcing is slow there.
SLOW_S = 600.0


@contextmanager
def shadow_serve(args: list[str], log: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`servecmp shadow serve` with ``args`` as a process; yields (its URL, the process) once its
    /metrics answers, and stops it with SIGINT (Ctrl-C) on leaving, killing it only if it hangs."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "servecmp", "shadow", "serve", *args, "--port", str(port)]
    with log.open("wb") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)

    def answering() -> bool:
        assert proc.poll() is None, f"shadow serve exited early:\n{log.read_text()}"
        try:
            return httpx.get(url + "/metrics", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        assert wait_for(answering, 180), log.read_text()
        yield url, proc
    finally:
        interrupt(proc)


def chat_text(client: openai.OpenAI, body: dict[str, Any]) -> str:
    if not body.get("stream"):
        return client.chat.completions.create(**body).choices[0].message.content or ""
    return "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**body) if c.choices)


def completion_text(client: openai.OpenAI, body: dict[str, Any]) -> str:
    if not body.get("stream"):
        return client.completions.create(**body).choices[0].text
    return "".join(c.choices[0].text for c in client.completions.create(**body) if c.choices)


@pytest.mark.vllm
def test_shadow_serve_in_front_of_the_real_vllm_pair(vllm_pair: Any, tmp_path: Path) -> None:
    """Proves, with the real vLLM pair and the openai SDK through `shadow serve` (mirror process,
    teacher forcing on; the baseline server doubles as the secondary, the noise floor):

    - chat and completions, streamed and not, all succeed through the proxy, and the text the SDK
      assembled equals the primary_answer the mirror stored for that request, exactly: what the
      proxy captured on the way through is byte for byte what it relayed;
    - a non-streamed answer equals the baseline's own answer to the same body when called directly
      (checked only when two direct calls agree, i.e. when greedy decoding is reproducible here);
    - GET /v1/models through the proxy lists the baseline's models;
    - /metrics equals the database at the end; every request was compared with both targets; the
      candidate's teacher-forced KL is positive (int8 against float) while the secondary, the same
      server, agrees on every answer and every top-1 token;
    - Ctrl-C stops it cleanly (exit 0) and its log holds no traceback and no ERROR line.
    """
    model = vllm_pair.baseline_model
    base = {"model": model, "temperature": 0, "max_tokens": 20}
    requests: list[tuple[Callable[[openai.OpenAI, dict[str, Any]], str], str, dict[str, Any]]] = [
        (chat_text, "chat", {**base, "messages": [{"role": "user", "content": "What is the capital of France?"}]}),
        (chat_text, "chat", {**base, "stream": True,
                             "messages": [{"role": "user", "content": "Name three primary colours."}]}),
        (completion_text, "completions", {**base, "prompt": "The three largest cities of Italy are"}),
        (completion_text, "completions", {**base, "stream": True, "prompt": "Once upon a time, in a small village,"}),
    ]
    n = len(requests)
    log = tmp_path / "shadow-serve.log"
    db = tmp_path / "shadow.db"
    args = ["--baseline", vllm_pair.baseline_url, "--candidate", vllm_pair.candidate_url,
            "--secondary", vllm_pair.baseline_url, "--db", str(db)]
    received: list[str] = []
    with shadow_serve(args, log) as (url, proc):
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=SLOW_S)
        try:
            for i, (call, _, body) in enumerate(requests):
                received.append(call(client, body))
                # One at a time: each request meets a quiet server (so a direct call later decodes
                # under the same conditions), and the two cores are not oversubscribed.
                assert wait_for(lambda i=i: total(scrape(url), "servecmp_shadow_mirrored_total") == i + 1, SLOW_S)
            proxied_models = httpx.get(url + "/v1/models", headers={"Authorization": "Bearer x"}, timeout=60)
        finally:
            client.close()
        assert wait_for(lambda: total(scrape(url), "servecmp_shadow_recorded_total") == 2 * n, SLOW_S)
        samples = scrape(url)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(120) == 0, log.read_text()
    stderr = log.read_text()
    assert "Traceback" not in stderr and " ERROR " not in stderr, stderr

    direct_models = httpx.get(vllm_pair.baseline_url + "/models", timeout=60)
    assert proxied_models.status_code == direct_models.status_code == 200
    proxied_ids = sorted(m["id"] for m in proxied_models.json()["data"])
    assert proxied_ids == sorted(m["id"] for m in direct_models.json()["data"])
    assert model in proxied_ids

    rows, counters, runs = load_all(db)
    assert_metrics_equal_store(samples, rows, counters)
    assert (counters["requests"], counters["mirrored"], counters["recorded"]) == (n, n, 2 * n)
    assert [r["mode"] for r in runs] == ["serve"]
    assert all(r["source"] == "live" and r["primary_status"] == 200 and r["other_error"] is None for r in rows)
    cand = sorted((r for r in rows if r["target"] == "candidate"), key=lambda r: r["ts"])
    sec = {r["request_id"]: r for r in rows if r["target"] == "secondary"}
    assert len(cand) == len(sec) == n and {r["request_id"] for r in cand} == set(sec)

    # The client's text is the stored primary answer, request by request (sent one at a time, so
    # the rows in time order are the requests in order).
    for row, text, (_, kind, body) in zip(cand, received, requests, strict=True):
        assert (row["endpoint"], bool(row["stream"])) == (kind, bool(body.get("stream")))
        assert text, f"empty answer to {body}"
        assert text == row["primary_answer"], (body, text, row["primary_answer"])
        assert sec[row["request_id"]]["primary_answer"] == text
    # Teacher forcing ran on every request (vLLM prompt_logprobs): the candidate's KL per token is
    # positive (int8 vs float) and the secondary (the same server) agrees on every top-1 token.
    assert all(r["tf_error"] is None and r["tf_positions"] > 0 and r["kl_mean"] > 0 for r in cand)
    assert all(r["top1_agree"] == 1.0 and r["other_answer"] == r["primary_answer"] for r in sec.values())

    # Non-streamed answers against the baseline called directly, where greedy decoding reproduces.
    direct = openai.OpenAI(base_url=vllm_pair.baseline_url, api_key="x", max_retries=0, timeout=SLOW_S)
    try:
        for text, (call, _, body) in zip(received, requests, strict=True):
            if body.get("stream"):
                continue
            first, second = call(direct, body), call(direct, body)
            if first == second:
                assert text == first, (body, text, first)
    finally:
        direct.close()
