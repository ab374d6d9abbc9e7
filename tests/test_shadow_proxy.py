"""The shadow proxy against local stub servers with fault injection.

Every test runs real HTTP on 127.0.0.1: a stub primary, a stub candidate (faults switched per test),
and the proxy (its own asyncio server, as `servecmp shadow serve` runs it) in a thread. Ordering is
checked with events (the candidate held by a gate), never with wall-clock thresholds.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from servecmp.config import ShadowConfig
from servecmp.shadow.proxy import build_proxy
from servecmp.shadow.server import AppServer
from servecmp.shadow.wiring import ShadowEndpoints
from tests.stub_shadow import ServerThread, StubControl, answer_tokens, build_stub_app, free_port, render_chat


def render_chat_prompt(content: str) -> str:
    return render_chat([{"role": "user", "content": content}])

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


@pytest.fixture(scope="module")
def primary() -> Iterator[tuple[ServerThread, StubControl]]:
    ctl = StubControl()
    with ServerThread(build_stub_app(ctl)) as server:
        yield server, ctl


@pytest.fixture(scope="module")
def candidate_server() -> Iterator[tuple[ServerThread, StubControl]]:
    ctl = StubControl(model="cand-model")
    with ServerThread(build_stub_app(ctl)) as server:
        yield server, ctl


@pytest.fixture
def candidate(candidate_server: tuple[ServerThread, StubControl]) -> Iterator[tuple[str, StubControl]]:
    server, ctl = candidate_server
    fresh = StubControl(model="cand-model", variant=1)
    for name in ("variant", "delay_s", "status", "garbage", "drop", "tokenize", "gate"):
        setattr(ctl, name, getattr(fresh, name))
    ctl.received.clear()
    ctl.answered.clear()
    ctl.authorizations.clear()
    ctl.paths.clear()
    yield server.url, ctl
    if ctl.gate is not None:
        ctl.gate.set()


@pytest.fixture(autouse=True)
def _reset_primary(primary: tuple[ServerThread, StubControl]) -> None:
    _, ctl = primary
    ctl.status, ctl.garbage, ctl.drop, ctl.gate, ctl.tail_delay_s = 200, False, False, None, 0.0
    ctl.authorizations.clear()
    ctl.paths.clear()


class AppThread:
    """An `AppServer` (the proxy, the collector) on its own event loop in a thread, bound to
    127.0.0.1 on a free port."""

    def __init__(self, app: Any, **server: Any) -> None:
        self.server = AppServer(app, **server)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self._started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self.thread.start()
        if not self._started.wait(30) or self._error is not None:
            raise RuntimeError(f"proxy thread failed to start: {self._error!r}")

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            await self.server.start(sock=self.sock)
        except BaseException as exc:
            self._error = exc
            self._started.set()
            raise
        self._started.set()
        await self._stop.wait()
        await self.server.stop(5.0)

    def stop(self) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(30)
        self.sock.close()


class Proxy:
    """A proxy on a thread; `stop()` drains the mirror and closes the database."""

    def __init__(self, cfg: ShadowConfig, endpoints: ShadowEndpoints, rng: random.Random | None = None) -> None:
        self.cfg = cfg
        self.proxy = build_proxy(cfg, endpoints, rng=rng)
        self.server = AppThread(self.proxy)
        self.url = self.server.url
        self._stopped = False

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self.server.stop()

    def rows(self) -> list[dict[str, Any]]:
        conn = sqlite3.connect(self.cfg.db)
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute("SELECT * FROM pairs ORDER BY ts, id")]
        finally:
            conn.close()

    def counters(self) -> dict[str, int]:
        conn = sqlite3.connect(self.cfg.db)
        try:
            return {k: int(v) for k, v in conn.execute("SELECT name, SUM(value) FROM counters GROUP BY name")}
        finally:
            conn.close()


@pytest.fixture
def make_proxy(tmp_path: Path, primary: tuple[ServerThread, StubControl]) -> Iterator[Any]:
    started: list[Proxy] = []

    def make(candidate_url: str, rng: random.Random | None = None, *, secondary: str | None = None,
             candidate_key_env: str | None = None, **kw: Any) -> Proxy:
        settings: dict[str, Any] = {"db": str(tmp_path / "shadow.db"), "mirror_process": False}
        settings.update(kw)
        endpoints = ShadowEndpoints.of(primary[0].url, candidate_url, secondary, api_key_env=candidate_key_env)
        p = Proxy(ShadowConfig(**settings), endpoints, rng)
        started.append(p)
        return p

    yield make
    for p in started:
        p.stop()


def chat_body(content: str = "What is the weather?", **extra: Any) -> dict[str, Any]:
    return {"model": "stub-model", "messages": [{"role": "user", "content": content}], **extra}


def completion_body(prompt: str = "Once upon a time", **extra: Any) -> dict[str, Any]:
    return {"model": "stub-model", "prompt": prompt, **extra}


def wait_for(condition: Any, timeout_s: float = 10.0) -> bool:
    """Poll until ``condition()`` holds (a bound for a hung test, not a timing assertion)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def down_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # bound once, then closed: connection refused


def post(url: str, path: str, body: dict[str, Any], **kw: Any) -> httpx.Response:
    return httpx.post(url + path, content=json.dumps(body).encode(),
                      headers={"content-type": "application/json", **kw.pop("headers", {})}, timeout=10, **kw)


FAULTS = ["healthy", "down", "http_500", "garbage", "dropped"]


def _apply(fault: str, ctl: StubControl) -> None:
    if fault == "http_500":
        ctl.status = 500
    elif fault == "garbage":
        ctl.garbage = True
    elif fault == "dropped":
        ctl.drop = True


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("fault", FAULTS)
def test_client_gets_primary_bytes_whatever_the_candidate_does(
    fault: str, stream: bool, primary: tuple[ServerThread, StubControl], candidate: tuple[str, StubControl],
    make_proxy: Any,
) -> None:
    cand_url, ctl = candidate
    _apply(fault, ctl)
    proxy = make_proxy(down_url() if fault == "down" else cand_url)
    for path, body in ((CHAT, chat_body(stream=stream)), (COMPLETIONS, completion_body(stream=stream))):
        direct = post(primary[0].url, path, body)
        proxied = post(proxy.url, path, body)
        assert proxied.status_code == direct.status_code == 200
        assert proxied.content == direct.content
        assert proxied.headers["content-type"] == direct.headers["content-type"]
    proxy.stop()
    rows = proxy.rows()
    assert [r["endpoint"] for r in rows] == ["chat", "completions"]
    expected_error = {"healthy": None, "down": "connect", "http_500": "http_500", "garbage": "garbage",
                      "dropped": "dropped"}[fault]
    assert [r["other_error"] for r in rows] == [expected_error, expected_error]
    assert all(r["primary_status"] == 200 and r["primary_error"] is None for r in rows)
    if fault == "healthy":
        assert all(r["exact_match"] == 0 and r["edit_distance"] > 0 for r in rows)  # variant 1 diverges
    else:
        assert all(r["exact_match"] is None for r in rows)


def test_openai_sdk_sees_the_same_answers(
    primary: tuple[ServerThread, StubControl], candidate: tuple[str, StubControl], make_proxy: Any
) -> None:
    proxy = make_proxy(candidate[0])
    results = []
    for base in (primary[0].url, proxy.url):
        client = openai.OpenAI(base_url=base + "/v1", api_key="sk-client", max_retries=0)
        full = client.chat.completions.create(model="stub-model", messages=[{"role": "user", "content": "hi"}],
                                              logprobs=True, top_logprobs=3)
        chunks = client.chat.completions.create(model="stub-model", stream=True,
                                                messages=[{"role": "user", "content": "hi"}])
        results.append((full.model_dump(), [c.model_dump() for c in chunks]))
        client.close()
    (direct_full, direct_chunks), (proxied_full, proxied_chunks) = results
    assert proxied_full == direct_full
    assert proxied_chunks == direct_chunks
    assert len(direct_chunks) == 8  # one chunk per answer token: the stream was not collapsed
    proxy.stop()
    rows = proxy.rows()
    assert [bool(r["stream"]) for r in rows] == [False, True]
    # The non-streamed request asked for logprobs: the text measures use those tokens, and the
    # teacher-forced measure takes the primary's top-k from its own response.
    assert (rows[0]["tokenisation"], rows[0]["tf_source"]) == ("logprobs", "response")
    assert (rows[1]["tokenisation"], rows[1]["tf_source"]) == ("regex", "prompt_logprobs")


def test_primary_failures_pass_through(
    primary: tuple[ServerThread, StubControl], candidate: tuple[str, StubControl], make_proxy: Any
) -> None:
    proxy = make_proxy(candidate[0])
    pctl = primary[1]
    pctl.status = 503
    direct = post(primary[0].url, CHAT, chat_body())
    proxied = post(proxy.url, CHAT, chat_body())
    assert (proxied.status_code, proxied.content) == (direct.status_code, direct.content)
    assert proxied.status_code == 503
    pctl.status, pctl.garbage = 200, True
    direct = post(primary[0].url, CHAT, chat_body())
    proxied = post(proxy.url, CHAT, chat_body())
    assert (proxied.status_code, proxied.content) == (200, direct.content)
    proxy.stop()
    rows = proxy.rows()
    assert [(r["primary_status"], r["primary_error"]) for r in rows] == [(503, "http_503"), (200, "garbage")]


@pytest.mark.parametrize("stream", [False, True])
def test_primary_dropping_the_connection_drops_the_client(
    stream: bool, primary: tuple[ServerThread, StubControl], candidate: tuple[str, StubControl], make_proxy: Any
) -> None:
    proxy = make_proxy(candidate[0])
    primary[1].drop = True
    for base in (primary[0].url, proxy.url):
        with pytest.raises(httpx.RemoteProtocolError):
            post(base, CHAT, chat_body(stream=stream))
    primary[1].drop = False
    assert post(proxy.url, CHAT, chat_body()).status_code == 200  # the proxy is fine afterwards
    proxy.stop()
    assert proxy.counters()["primary_dropped"] == 1
    assert len(proxy.rows()) == 1  # a cut answer is not compared


def test_unreachable_primary_gives_502_json(tmp_path: Path, candidate: tuple[str, StubControl]) -> None:
    cfg = ShadowConfig(db=str(tmp_path / "s.db"), mirror_process=False)
    proxy = Proxy(cfg, ShadowEndpoints.of(down_url(), candidate[0]))
    try:
        r = post(proxy.url, CHAT, chat_body())
        assert r.status_code == 502
        assert r.json()["error"]["type"] == "bad_gateway"
    finally:
        proxy.stop()
    assert proxy.counters()["primary_unreachable"] == 1


def test_models_passthrough_and_unknown_paths(
    primary: tuple[ServerThread, StubControl], candidate: tuple[str, StubControl], make_proxy: Any
) -> None:
    proxy = make_proxy(candidate[0])
    assert httpx.get(proxy.url + "/v1/models").content == httpx.get(primary[0].url + "/v1/models").content
    r = httpx.get(proxy.url + "/v1/embeddings")
    assert r.status_code == 404 and "error" in r.json()


def test_response_is_sent_before_the_slow_candidate_answers(
    primary: tuple[ServerThread, StubControl], candidate: tuple[str, StubControl], make_proxy: Any
) -> None:
    cand_url, ctl = candidate
    ctl.gate = threading.Event()  # the candidate holds every generation until released
    proxy = make_proxy(cand_url)
    for stream in (False, True):
        body = chat_body(stream=stream)
        r = post(proxy.url, CHAT, body)
        assert r.content == post(primary[0].url, CHAT, body).content
    assert ctl.received.wait(10)  # the mirror did reach the candidate...
    assert not ctl.answered.is_set()  # ...and it had not answered while the client already had both responses
    ctl.gate.set()
    proxy.stop()
    rows = proxy.rows()
    assert len(rows) == 2 and all(r["other_error"] is None for r in rows)


def test_queue_overflow_is_counted(candidate: tuple[str, StubControl], make_proxy: Any) -> None:
    cand_url, ctl = candidate
    ctl.gate = threading.Event()
    proxy = make_proxy(cand_url, queue_size=2, mirror_concurrency=1, teacher_forced=False)
    assert post(proxy.url, CHAT, chat_body("q0")).status_code == 200
    assert ctl.received.wait(10)  # job 0 is with the candidate: the one worker is busy
    for i in range(1, 6):
        assert post(proxy.url, CHAT, chat_body(f"q{i}")).status_code == 200
    # q1, q2 queued; q3..q5 dropped (the hand-off runs just after each response is sent).
    assert wait_for(lambda: proxy.proxy.counters.get("dropped_queue_full") == 3)
    ctl.gate.set()
    proxy.stop()
    assert proxy.counters()["dropped_queue_full"] == 3
    assert proxy.counters()["mirrored"] == 3
    assert len(proxy.rows()) == 3


def test_process_mirror_overflow_and_records(
    primary: tuple[ServerThread, StubControl], candidate: tuple[str, StubControl], make_proxy: Any
) -> None:
    cand_url, ctl = candidate
    ctl.gate = threading.Event()
    proxy = make_proxy(cand_url, queue_size=2, mirror_concurrency=1, mirror_process=True, teacher_forced=False)
    body = chat_body("q0", stream=True)
    assert post(proxy.url, CHAT, body).content == post(primary[0].url, CHAT, body).content
    assert ctl.received.wait(60)  # the mirror process has started and taken job 0
    for i in range(1, 6):
        assert post(proxy.url, CHAT, chat_body(f"q{i}")).status_code == 200
    wait_for(lambda: proxy.proxy.counters.get("dropped_queue_full") >= 3)
    dropped = proxy.proxy.counters.get("dropped_queue_full")
    ctl.gate.set()
    proxy.stop()
    counters = proxy.counters()
    rows = proxy.rows()
    # Normally q1, q2 wait in the queue and q3..q5 are dropped. (Should job 0 fail on its own,
    # e.g. a connect timeout on a starved machine, its slot frees early and one more is taken.)
    assert dropped == counters["dropped_queue_full"] >= 2
    assert counters["mirrored"] + counters["dropped_queue_full"] == 6
    assert len(rows) == counters["mirrored"]
    if all(r["other_error"] is None for r in rows):
        assert dropped == 3


def test_authorization_goes_to_the_primary_only(
    primary: tuple[ServerThread, StubControl], candidate: tuple[str, StubControl], make_proxy: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CAND_KEY", "sk-candidate-own")
    cand_url, ctl = candidate
    proxy = make_proxy(cand_url, candidate_key_env="CAND_KEY")
    r = post(proxy.url, CHAT, chat_body(), headers={"Authorization": "Bearer sk-client-secret"})
    assert r.status_code == 200
    proxy.stop()
    assert "Bearer sk-client-secret" in primary[1].authorizations
    assert ctl.paths and set(ctl.authorizations) == {"Bearer sk-candidate-own"}
    # The teacher-forced scoring request to the primary carries no client key either.
    assert list(primary[1].authorizations).count("Bearer sk-client-secret") == 1
    db_bytes = b"".join(p.read_bytes() for p in Path(proxy.cfg.db).parent.glob("shadow.db*"))
    assert b"sk-client-secret" not in db_bytes and b"sk-candidate-own" not in db_bytes


@pytest.mark.parametrize("hash_only", [True, False])
def test_hash_only_stores_no_text(hash_only: bool, candidate: tuple[str, StubControl], make_proxy: Any) -> None:
    marker = "zebra-marker-8231 private words"
    proxy = make_proxy(candidate[0], hash_only=hash_only)
    r = post(proxy.url, CHAT, chat_body(marker))
    answer = r.json()["choices"][0]["message"]["content"]
    proxy.stop()
    db_bytes = b"".join(p.read_bytes() for p in Path(proxy.cfg.db).parent.glob("shadow.db*"))
    (row,) = proxy.rows()
    if hash_only:
        assert b"zebra-marker-8231" not in db_bytes
        assert answer.encode() not in db_bytes
        assert row["prompt"] is None and row["request_json"] is None and row["primary_answer"] is None
        assert row["prompt_sha256"] and row["primary_sha256"] and row["edit_distance"] is not None
    else:  # the same check finds the text when it is stored
        assert b"zebra-marker-8231" in db_bytes
        assert answer.encode() in db_bytes


@pytest.mark.parametrize("rate", [0.0, 0.5])
def test_sampling(rate: float, candidate: tuple[str, StubControl], make_proxy: Any) -> None:
    proxy = make_proxy(candidate[0], sample_rate=rate, teacher_forced=False, rng=random.Random(7))
    n = 20
    for i in range(n):
        assert post(proxy.url, CHAT, chat_body(f"s{i}")).status_code == 200
    proxy.stop()
    reference = random.Random(7)
    expected = sum(reference.random() < rate for _ in range(n))
    assert len(proxy.rows()) == expected
    assert proxy.counters()["sampled_out"] == n - expected
    assert proxy.counters()["requests"] == n


def test_database_size_cap(tmp_path: Path, candidate: tuple[str, StubControl], make_proxy: Any) -> None:
    cap_mb = 0.1
    proxy = make_proxy(candidate[0], max_db_mb=cap_mb, teacher_forced=False)
    big = "lorem ipsum " * 400  # ~5 KB per prompt, stored twice (prompt and request body)
    for i in range(60):
        assert post(proxy.url, CHAT, chat_body(f"{i} {big}")).status_code == 200
    proxy.stop()
    counters = proxy.counters()
    stored = len(proxy.rows())
    assert 0 < stored < 60
    assert counters["dropped_db_full"] == 60 - stored
    assert Path(proxy.cfg.db).stat().st_size <= cap_mb * 1024 * 1024


def test_secondary_measures_the_noise_floor(
    primary: tuple[ServerThread, StubControl], candidate: tuple[str, StubControl], make_proxy: Any
) -> None:
    sec_ctl = StubControl()
    with ServerThread(build_stub_app(sec_ctl)) as secondary:
        proxy = make_proxy(candidate[0], secondary=secondary.url)
        for i in range(3):
            assert post(proxy.url, COMPLETIONS, completion_body(f"p{i}")).status_code == 200
        proxy.stop()
    rows = proxy.rows()
    sec = [r for r in rows if r["target"] == "secondary"]
    cand = [r for r in rows if r["target"] == "candidate"]
    assert len(sec) == len(cand) == 3
    assert all(r["exact_match"] == 1 and r["kl_mean"] == 0.0 and r["top1_agree"] == 1.0 for r in sec)
    # The variant-1 stub changes about a third of the words; for some prompts none of them.
    expected = [int(answer_tokens(f"p{i}", 0, 8) == answer_tokens(f"p{i}", 1, 8)) for i in range(3)]
    assert [r["exact_match"] for r in cand] == expected
    assert all(r["kl_mean"] > 0 and r["dp_mean"] < 0 for r in cand)  # the candidate is less sure


def test_teacher_forced_measures_hand_values(candidate: tuple[str, StubControl], make_proxy: Any) -> None:
    # The stubs put probabilities (0.6, 0.2, 0.1, 0.05, 0.02) (primary) and (0.5, 0.25, 0.1, 0.06,
    # 0.03) (candidate) on the same five tokens, the answer's own token first, at every position.
    proxy = make_proxy(candidate[0], top_k=20)
    post(proxy.url, CHAT, chat_body("no logprobs asked"))
    post(proxy.url, CHAT, chat_body("three asked", logprobs=True, top_logprobs=3))
    proxy.stop()
    via_prompt_logprobs, via_response = proxy.rows()
    L = math.log
    # All five tokens shared; rest buckets 0.03 vs 0.06.
    kl5 = (0.6 * L(0.6 / 0.5) + 0.2 * L(0.2 / 0.25) + 0.05 * L(0.05 / 0.06) + 0.02 * L(0.02 / 0.03)
           + 0.03 * L(0.03 / 0.06))
    assert via_prompt_logprobs["tf_source"] == "prompt_logprobs"
    assert via_prompt_logprobs["tf_positions"] == 8
    assert via_prompt_logprobs["kl_mean"] == pytest.approx(kl5)
    assert via_prompt_logprobs["kl_max"] == pytest.approx(kl5)
    # The primary's own top-3 from its response: three shared tokens; rest buckets 0.1 vs 0.15.
    kl3 = 0.6 * L(0.6 / 0.5) + 0.2 * L(0.2 / 0.25) + 0.1 * L(0.1 / 0.15)
    assert via_response["tf_source"] == "response"
    assert via_response["kl_mean"] == pytest.approx(kl3)
    for row in (via_prompt_logprobs, via_response):
        assert row["top1_agree"] == 1.0
        assert row["dp_mean"] == pytest.approx(0.5 - 0.6)
        assert row["dp_max_abs"] == pytest.approx(0.1)


def test_candidate_without_tokenize_skips_teacher_forcing(
    candidate: tuple[str, StubControl], make_proxy: Any
) -> None:
    cand_url, ctl = candidate
    ctl.tokenize = False  # not a vLLM server
    proxy = make_proxy(cand_url)
    for i in range(2):
        post(proxy.url, CHAT, chat_body(f"t{i}"))
    proxy.stop()
    rows = proxy.rows()
    assert [r["tf_error"] for r in rows] == ["no_tokenize", "no_tokenize"]
    assert all(r["edit_distance"] is not None for r in rows)  # the text measures are still there
    assert list(ctl.paths).count("/tokenize") == 1  # asked once, then teacher forcing is off


def test_a_failing_comparison_is_counted_and_logged_without_payload(
    candidate: tuple[str, StubControl], make_proxy: Any, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = make_proxy(candidate[0])
    comparer = proxy.proxy.mirror.parts.comparer

    async def broken(job: Any) -> Any:
        raise ValueError(f"cannot handle {job.body!r}")  # a message quoting the request

    comparer.compare = broken
    marker = "giraffe-secret-5521"
    with caplog.at_level("ERROR", logger="servecmp.shadow"):
        assert post(proxy.url, CHAT, chat_body(marker)).status_code == 200
        proxy.stop()
    assert proxy.counters()["mirror_failures"] == 1
    assert "ValueError at" in caplog.text and "comparison failed" in caplog.text
    assert marker not in caplog.text


@pytest.mark.parametrize("stream", [False, True])
def test_client_hanging_up_is_passed_on_and_counted(
    stream: bool, primary: tuple[ServerThread, StubControl], candidate: tuple[str, StubControl], make_proxy: Any
) -> None:
    pctl = primary[1]
    pctl.gate = threading.Event()  # the primary holds the request
    pctl.received.clear()
    proxy = make_proxy(candidate[0])
    body = json.dumps(chat_body("bye", stream=stream)).encode()
    port = int(proxy.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        assert pctl.received.wait(10)  # the proxy forwarded it; now the client goes away
    assert wait_for(lambda: proxy.proxy.counters.get("client_disconnected") == 1)
    pctl.gate.set()
    pctl.gate = None
    assert post(proxy.url, CHAT, chat_body("next")).status_code == 200
    proxy.stop()
    assert [r["prompt"] for r in proxy.rows()] == ['[{"content":"next","role":"user"}]']


@pytest.mark.parametrize("process", [False, True])
def test_jobs_left_at_shutdown_are_counted(
    process: bool, candidate: tuple[str, StubControl], make_proxy: Any
) -> None:
    cand_url, ctl = candidate
    ctl.gate = threading.Event()  # never released before the proxy stops
    proxy = make_proxy(cand_url, queue_size=3, mirror_concurrency=1, mirror_process=process,
                       teacher_forced=False, drain_timeout_s=0.2)
    assert post(proxy.url, CHAT, chat_body("first")).status_code == 200
    assert ctl.received.wait(60)
    for i in range(4):
        assert post(proxy.url, CHAT, chat_body(f"later {i}")).status_code == 200
    proxy.stop()  # 1 being compared + 3 queued are given up; 1 was dropped on arrival
    counters = proxy.counters()
    assert (counters["dropped_queue_full"], counters["dropped_shutdown"], counters["mirrored"]) == (1, 4, 0)
    assert proxy.rows() == []


def test_teacher_forcing_can_spare_the_primary(
    primary: tuple[ServerThread, StubControl], candidate: tuple[str, StubControl], make_proxy: Any
) -> None:
    proxy = make_proxy(candidate[0], tf_score_primary=False)
    post(proxy.url, CHAT, chat_body("plain"))
    post(proxy.url, CHAT, chat_body("with logprobs", logprobs=True, top_logprobs=3))
    proxy.stop()
    plain, with_logprobs = proxy.rows()
    assert (plain["tf_error"], plain["kl_mean"]) == ("no_primary_topk", None)
    assert (with_logprobs["tf_source"], with_logprobs["tf_error"]) == ("response", None)
    # The primary saw the two client requests and nothing else.
    assert list(primary[1].paths) == [CHAT, CHAT]


def test_a_client_leaving_right_after_done_is_still_compared(
    primary: tuple[ServerThread, StubControl], candidate: tuple[str, StubControl], make_proxy: Any
) -> None:
    # What the openai SDK does: stop at "data: [DONE]" and close, here before the primary has ended
    # its chunked body (the stub waits 5 s after [DONE]).
    primary[1].tail_delay_s = 5.0
    proxy = make_proxy(candidate[0], teacher_forced=False)
    body = json.dumps(chat_body("until done", stream=True)).encode()
    port = int(proxy.url.rsplit(":", 1)[1])
    received = b""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        while b"data: [DONE]" not in received:
            chunk = sock.recv(65536)
            assert chunk, "the proxy closed before [DONE]"
            received += chunk
    assert wait_for(lambda: proxy.proxy.counters.get("mirrored") == 1)
    primary[1].tail_delay_s = 0.0
    assert post(proxy.url, CHAT, chat_body("next")).status_code == 200  # no half-read connection was pooled
    proxy.stop()
    counters = proxy.counters()
    assert (counters["client_disconnected"], counters["mirrored"], counters["recorded"]) == (0, 2, 2)
    first = proxy.rows()[0]
    assert (first["stream"], first["primary_error"], first["other_error"]) == (1, None, None)
    assert first["primary_answer"] == "".join(answer_tokens(render_chat_prompt("until done"), 0, 8))
