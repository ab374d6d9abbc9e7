"""`servecmp shadow collect`, the mirror receiver: a stub mirror sender plays Envoy/Istio (copies of
requests, Host rewritten with ``-shadow``, the answer ignored); the collector answers 202 at once,
sends each copy to a baseline replica, the candidate and the secondary, and records and measures
exactly as the proxy does. The end-to-end test runs the command against the real vLLM pair."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from servecmp.config import ShadowConfig
from servecmp.shadow.collect import build_receiver
from servecmp.shadow.store import load_all
from servecmp.shadow.wiring import ShadowEndpoints
from tests.stub_shadow import ServerThread, StubControl, build_stub_app, free_port
from tests.test_shadow_metrics import assert_metrics_equal_store, scrape, total
from tests.test_shadow_proxy import CHAT, COMPLETIONS, AppThread, chat_body, completion_body, wait_for

ROOT = Path(__file__).resolve().parents[1]


def mirror_send(url: str, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
    """What Envoy's request mirror sends: the client's request with ``-shadow`` appended to Host
    (Envoy's shadow host rewrite), fire-and-forget; the response is returned only so tests can
    check it came at once."""
    hdrs = {"Host": "vllm-baseline-shadow:8000", "Content-Type": "application/json", "x-request-id": "mirror-1",
            **(headers or {})}
    return httpx.post(url + path, content=json.dumps(body).encode(), headers=hdrs, timeout=30)


Stubs = tuple[ServerThread, StubControl, ServerThread, StubControl, ServerThread, StubControl]


@pytest.fixture
def stubs() -> Iterator[Stubs]:
    pctl, cctl, sctl = StubControl(), StubControl(variant=1, model="cand-model"), StubControl()
    with ServerThread(build_stub_app(pctl)) as p, ServerThread(build_stub_app(cctl)) as c, \
            ServerThread(build_stub_app(sctl)) as s:
        yield p, pctl, c, cctl, s, sctl
        for ctl in (pctl, cctl, sctl):
            if ctl.gate is not None:
                ctl.gate.set()


class Collector:
    def __init__(self, cfg: ShadowConfig, endpoints: ShadowEndpoints, **kw: Any) -> None:
        self.cfg = cfg
        self.receiver = build_receiver(cfg, endpoints, **kw)
        self.server = AppThread(self.receiver)
        self.url = self.server.url

    def stop(self) -> None:
        self.server.stop()


def test_collector_answers_at_once_and_records_like_the_proxy(tmp_path: Path, stubs: Stubs,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    p, pctl, c, cctl, s, _ = stubs
    monkeypatch.setenv("COLLECT_TEST_CAND_KEY", "sk-cand-own-77")
    pctl.gate = threading.Event()  # the baseline replica holds every request...
    cctl.gate = threading.Event()  # ...and so does the candidate
    endpoints = ShadowEndpoints.of(p.url, c.url, s.url, api_key_env="COLLECT_TEST_CAND_KEY")
    col = Collector(ShadowConfig(db=str(tmp_path / "c.db"), mirror_process=False), endpoints)
    try:
        bodies = [(CHAT, chat_body("mirrored 0")), (COMPLETIONS, completion_body("mirrored 1", stream=True)),
                  (CHAT, chat_body("mirrored 2", stream=True, logprobs=True, top_logprobs=3))]
        for path, body in bodies:
            r = mirror_send(col.url, path, body, {"Authorization": "Bearer sk-client-9"})
            assert (r.status_code, r.json()) == (202, {"status": "accepted"})
        # Every 202 came while neither the baseline replica nor the candidate had answered anything.
        assert pctl.received.wait(10) and not pctl.answered.is_set() and not cctl.answered.is_set()
        pctl.gate.set()
        cctl.gate.set()
        assert wait_for(lambda: total(scrape(col.url), "servecmp_shadow_recorded_total") == 6, 60)
        rows, counters, runs = load_all(col.cfg.db)

        def agree() -> bool:
            samples = scrape(col.url)
            return all(total(samples, f"servecmp_shadow_{k}_total") == load_all(col.cfg.db)[1][k]
                       for k in ("requests", "mirrored", "recorded"))

        assert wait_for(agree, 30)
        samples = scrape(col.url)
        rows, counters, runs = load_all(col.cfg.db)
    finally:
        col.stop()
    assert_metrics_equal_store(samples, rows, counters)
    assert [r["mode"] for r in runs] == ["collect"]
    assert (counters["requests"], counters["mirrored"], counters["recorded"]) == (3, 3, 6)
    assert {r["source"] for r in rows} == {"mirror"}
    cand = [r for r in rows if r["target"] == "candidate"]
    sec = [r for r in rows if r["target"] == "secondary"]
    assert all(r["exact_match"] == 1 and r["kl_mean"] == 0.0 for r in sec)  # a replica of the baseline
    assert all(r["kl_mean"] > 0 and r["edit_distance"] is not None for r in cand)
    assert {(r["endpoint"], r["stream"]): r["tf_source"] for r in cand} == {
        ("chat", 0): "prompt_logprobs", ("completions", 1): "prompt_logprobs", ("chat", 1): "response"}
    # The mirrored request's key went to the baseline replica only; the candidate got its own.
    assert "Bearer sk-client-9" in pctl.authorizations
    assert set(cctl.authorizations) == {"Bearer sk-cand-own-77"}


def test_collector_bounds_baseline_requests_in_flight(tmp_path: Path, stubs: Stubs) -> None:
    p, pctl, c, _, _, _ = stubs
    pctl.gate = threading.Event()
    col = Collector(ShadowConfig(db=str(tmp_path / "c.db"), mirror_process=False, teacher_forced=False),
                    ShadowEndpoints.of(p.url, c.url), max_in_flight=2)
    try:
        for i in range(5):
            assert mirror_send(col.url, CHAT, chat_body(f"burst {i}")).status_code == 202
        assert total(scrape(col.url), "servecmp_shadow_dropped_total", reason="queue_full") == 3
        pctl.gate.set()
        assert wait_for(lambda: total(scrape(col.url), "servecmp_shadow_recorded_total") == 2)
        assert httpx.get(col.url + "/v1/models").status_code == 404  # only generation routes are collected
        wrong = httpx.get(col.url + CHAT)
        assert (wrong.status_code, wrong.headers["allow"]) == (405, "POST")
    finally:
        col.stop()
    _, counters, _ = load_all(col.cfg.db)
    assert (counters["requests"], counters["dropped_queue_full"], counters["recorded"]) == (5, 3, 2)


def test_collect_command_builds_the_receiver(tmp_path: Path, stubs: Stubs, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    import servecmp.shadow.server
    from servecmp._cli.main import build_app

    p, _, c, _, _, _ = stubs
    served: list[Any] = []
    monkeypatch.setattr(servecmp.shadow.server, "run_app", lambda app, **kw: served.append((app, kw)))
    for flag, note in (("--max-pending", ""), ("--max-in-flight", "servecmp: --max-in-flight is deprecated; "
                                                                  "use --max-pending\n")):
        res = CliRunner().invoke(build_app(), ["shadow", "collect", "--baseline", p.url, "--candidate", c.url,
                                               "--db", str(tmp_path / "c.db"), "--in-process", "--port", "8777",
                                               flag, "9"])
        assert res.exit_code == 0, res.output
        (receiver, kw) = served[-1]
        try:
            assert (kw["port"], kw["host"], receiver.max_in_flight, receiver.primary.url) == (
                8777, "127.0.0.1", 9, p.url)
            assert f"run {receiver.run_id}" in res.output
            assert res.stderr.startswith(note)
        finally:
            receiver.mirror.parts.writer.close()


# ---- end to end: the real vLLM pair ------------------------------------------------------------


def interrupt(proc: subprocess.Popen[Any]) -> None:
    """Ctrl-C for a servecmp process started in its own session; its whole group is killed if it has
    not stopped after 120 s (a hung test must not leave servers behind)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


@pytest.mark.vllm
def test_collect_against_the_real_vllm_pair(vllm_pair: Any, tmp_path: Path) -> None:
    """`servecmp shadow collect` as a process (mirror process, teacher forcing) with the vLLM pair:
    the baseline server is both the baseline replica and the secondary (the noise floor)."""
    db = tmp_path / "collect.db"
    port = free_port()
    log = tmp_path / "collect.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "servecmp", "shadow", "collect", "--baseline", vllm_pair.baseline_url,
         "--candidate", vllm_pair.candidate_url, "--secondary", vllm_pair.baseline_url, "--port", str(port),
         "--db", str(db)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log.open("wb"), start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    prompts = ["What is the capital of France?", "Name three primary colours.", "What is 12 times 12?",
               "Say hello in Spanish."]
    try:
        def ready() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                return httpx.get(url + "/metrics", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_for(ready, 180)
        for i, prompt in enumerate(prompts):
            body = {"model": vllm_pair.baseline_model, "messages": [{"role": "user", "content": prompt}],
                    "max_tokens": 24, "temperature": 0, "stream": i % 2 == 1}
            r = mirror_send(url, CHAT, body)
            assert r.status_code == 202
        n = len(prompts)
        assert wait_for(lambda: total(scrape(url), "servecmp_shadow_recorded_total") == 2 * n, 600)
        samples = scrape(url)
    finally:
        interrupt(proc)
    assert proc.returncode == 0, log.read_text()
    rows, counters, runs = load_all(db)
    assert_metrics_equal_store(samples, rows, counters)
    assert (counters["requests"], counters["mirrored"], counters["recorded"]) == (n, n, 2 * n)
    assert [r["mode"] for r in runs] == ["collect"]
    cand = [r for r in rows if r["target"] == "candidate"]
    sec = [r for r in rows if r["target"] == "secondary"]
    assert len(cand) == len(sec) == n
    assert all(r["source"] == "mirror" and r["primary_status"] == 200 and r["other_error"] is None for r in rows)
    # Teacher forcing ran on every request (vLLM prompt_logprobs): the candidate's KL per token is
    # positive (int8 vs float) and the secondary (the same server) agrees on every top-1 token.
    assert all(r["tf_error"] is None and r["tf_positions"] > 0 and r["kl_mean"] > 0 for r in cand)
    assert all(r["top1_agree"] == 1.0 for r in sec)
    assert {r["other_answer"] == r["primary_answer"] for r in sec} == {True}
