"""deploy/nginx/: Debian's nginx (nginx-light) in front of a primary, mirroring to `shadow collect`.

The recipe the README recommends for production: the load balancer mirrors, servecmp is never in
the user's path. Checked with the real software: nginx from its Debian package, started from the
template in deploy/nginx/ (a throwaway instance: its own prefix, pid and temp paths, stopped by its
PID), in front of the stub primary (fast) and of the real vLLM pair (mark vllm), with the collector.

No nginx: the tests skip locally and FAIL when CI=true (scripts/setup_system.sh installs it).
"""

from __future__ import annotations

import os
import shutil
import signal
import string
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from servecmp.config import ShadowConfig
from servecmp.shadow.collect import build_receiver
from servecmp.shadow.store import load_all
from servecmp.shadow.wiring import ShadowEndpoints
from tests.stub_shadow import ServerThread, StubControl, free_port
from tests.test_shadow_collect import ROOT, interrupt
from tests.test_shadow_metrics import scrape, total
from tests.test_shadow_proxy import (
    CHAT,
    COMPLETIONS,
    AppThread,
    _reset_primary,
    candidate,
    candidate_server,
    chat_body,
    completion_body,
    post,
    primary,
    wait_for,
)

FIXTURES = (_reset_primary, candidate, candidate_server, primary)
TEMPLATE = ROOT / "deploy" / "nginx" / "servecmp-mirror.conf.template"


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if found is None:
        msg = "nginx is not installed (apt-get install nginx-light; scripts/setup_system.sh does)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{msg} (CI=true: refusing to skip)", pytrace=False)
        pytest.skip(msg)
    return found


def hostport(url: str) -> str:
    return url.split("//", 1)[1].split("/", 1)[0]


@contextmanager
def nginx_front(tmp: Path, primary_url: str, collector_url: str) -> Iterator[str]:
    """nginx from the deploy/ template, in the foreground in ``tmp``; yields its URL."""
    binary = nginx_binary()
    port = free_port()
    site = string.Template(TEMPLATE.read_text()).safe_substitute(
        LISTEN=f"127.0.0.1:{port}", PRIMARY=hostport(primary_url), COLLECTOR=hostport(collector_url))
    (tmp / "servecmp.conf").write_text(site)
    (tmp / "nginx.conf").write_text(f"""
worker_processes 1;
error_log {tmp}/error.log warn;
pid {tmp}/nginx.pid;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  include {tmp}/servecmp.conf;
}}
""")
    check = subprocess.run([binary, "-t", "-c", str(tmp / "nginx.conf"), "-p", str(tmp)], capture_output=True,
                           text=True, check=False)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen([binary, "-c", str(tmp / "nginx.conf"), "-p", str(tmp), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, (tmp / "error.log").read_text()
        try:
            httpx.get(url + "/", timeout=1)
            return True
        except httpx.HTTPError:
            return False

    try:
        assert wait_for(up, 30)
        yield url
    finally:
        proc.send_signal(signal.SIGQUIT)  # graceful stop
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_nginx_mirrors_to_the_collector_and_clients_get_the_primarys_bytes(
    tmp_path: Path, primary: tuple[ServerThread, StubControl], candidate: tuple[str, StubControl]
) -> None:
    cfg = ShadowConfig(db=str(tmp_path / "c.db"), mirror_process=False, teacher_forced=False)
    collector = AppThread(build_receiver(cfg, ShadowEndpoints.of(primary[0].url, candidate[0])))
    requests = [(CHAT, chat_body("one")), (CHAT, chat_body("two", stream=True)),
                (COMPLETIONS, completion_body("three")), (COMPLETIONS, completion_body("four", stream=True))]
    try:
        with nginx_front(tmp_path, primary[0].url, collector.url) as front:
            for path, body in requests:
                via, direct = post(front, path, body), post(primary[0].url, path, body)
                assert (via.status_code, via.content) == (direct.status_code, direct.content) == (200, direct.content)
                assert via.headers["content-type"] == direct.headers["content-type"]
            assert wait_for(lambda: total(scrape(collector.url), "servecmp_shadow_recorded_total") == len(requests))
    finally:
        collector.stop()
    rows, counters, runs = load_all(tmp_path / "c.db")
    assert (counters["requests"], counters["mirrored"], counters["recorded"]) == (4, 4, 4)
    assert [r["mode"] for r in runs] == ["collect"]
    assert sorted((r["endpoint"], bool(r["stream"])) for r in rows) == [
        ("chat", False), ("chat", True), ("completions", False), ("completions", True)]
    assert all(r["source"] == "mirror" and r["primary_status"] == 200 and r["other_error"] is None
               and r["edit_distance"] is not None for r in rows)


@pytest.mark.vllm
def test_nginx_mirroring_the_real_vllm_pair_to_shadow_collect(vllm_pair: Any, tmp_path: Path) -> None:
    """nginx → the vLLM baseline (clients), mirror → `servecmp shadow collect` (a process) → the
    baseline again and the int8 candidate: the client's answers are the baseline's own, and every
    mirrored request is recorded with its measures."""
    db = tmp_path / "collect.db"
    port = free_port()
    log = tmp_path / "collect.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "servecmp", "shadow", "collect", "--baseline", vllm_pair.baseline_url,
         "--candidate", vllm_pair.candidate_url, "--port", str(port), "--db", str(db), "--no-teacher-forced"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log.open("wb"), start_new_session=True,
    )
    collector = f"http://127.0.0.1:{port}"
    model = vllm_pair.baseline_model
    base = {"model": model, "temperature": 0, "max_tokens": 16}
    bodies = [{**base, "messages": [{"role": "user", "content": "What is the capital of France?"}]},
              {**base, "stream": True, "messages": [{"role": "user", "content": "Name three primary colours."}]},
              {**base, "prompt": "The three largest cities of Italy are"}]
    received: list[str] = []
    try:
        def ready() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                return httpx.get(collector + "/metrics", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_for(ready, 180)
        primary_root = vllm_pair.baseline_url.removesuffix("/v1")
        with nginx_front(tmp_path, primary_root, collector) as front:
            client = openai.OpenAI(base_url=front + "/v1", api_key="x", max_retries=0, timeout=600)
            try:
                for i, body in enumerate(bodies):
                    if "prompt" in body:
                        received.append(client.completions.create(**body).choices[0].text)
                    elif body.get("stream"):
                        received.append("".join(c.choices[0].delta.content or ""
                                                for c in client.chat.completions.create(**body) if c.choices))
                    else:
                        received.append(client.chat.completions.create(**body).choices[0].message.content or "")
                    # One at a time: the two cores are not oversubscribed, and a direct call later
                    # decodes under the same conditions.
                    assert wait_for(lambda i=i: total(scrape(collector), "servecmp_shadow_recorded_total") == i + 1,
                                    600)
                via_models = httpx.get(front + "/v1/models", timeout=60)
            finally:
                client.close()
        samples = scrape(collector)
    finally:
        interrupt(proc)
    assert proc.returncode == 0, log.read_text()
    direct_models = httpx.get(vllm_pair.baseline_url + "/models", timeout=60)
    # (vLLM stamps each answer: "created" and the permission id differ per call; the models do not.)
    assert (via_models.status_code, [m["id"] for m in via_models.json()["data"]]) == (
        200, [m["id"] for m in direct_models.json()["data"]])
    n = len(bodies)
    rows, counters, runs = load_all(db)
    assert (counters["requests"], counters["mirrored"], counters["recorded"]) == (n, n, n)
    assert total(samples, "servecmp_shadow_recorded_total") == n
    assert [r["mode"] for r in runs] == ["collect"]
    rows = sorted(rows, key=lambda r: r["ts"])
    assert [(r["endpoint"], bool(r["stream"])) for r in rows] == [("chat", False), ("chat", True),
                                                                   ("completions", False)]
    assert all(r["source"] == "mirror" and r["primary_status"] == 200 and r["other_error"] is None
               and r["edit_distance"] is not None and r["other_answer"] for r in rows)
    # The client's answers are the baseline's: what the collector's own baseline call returned for
    # the same request (greedy decoding; checked where two direct calls agree, as elsewhere).
    direct = openai.OpenAI(base_url=vllm_pair.baseline_url, api_key="x", max_retries=0, timeout=600)
    try:
        for text, body, row in zip(received, bodies, rows, strict=True):
            assert text, body
            if body.get("stream"):
                continue
            call = direct.completions.create if "prompt" in body else direct.chat.completions.create
            first, second = (call(**body) for _ in range(2))
            a, b = ((x.choices[0].text if "prompt" in body else x.choices[0].message.content) for x in (first, second))
            if a == b:
                assert text == a == row["primary_answer"], (body, text, a)
    finally:
        direct.close()
