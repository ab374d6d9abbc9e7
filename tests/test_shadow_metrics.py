"""`GET /metrics` of the shadow proxy: scraped while recorded traffic is replayed through it, its counts
equal the database's (counters and rows), in-process and with the mirror process; the label sets
are fixed; each app has its own registry."""

from __future__ import annotations

import json
import math
import sqlite3
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from servecmp.shadow.prom import ERROR_CODES, HISTOGRAMS, MEASURE_FIELD, ROUTES, error_bucket
from servecmp.shadow.replay import load_requests
from servecmp.shadow.store import COUNTER_NAMES
from servecmp.shadow.wiring import ShadowEndpoints
from tests.stub_shadow import ServerThread, StubControl, build_stub_app
from tests.test_shadow_proxy import (
    CHAT,
    Proxy,
    _reset_primary,
    candidate,
    candidate_server,
    chat_body,
    make_proxy,
    primary,
    wait_for,
)

#: The proxy tests' fixtures, used here too (named so the imports count as used).
FIXTURES = (_reset_primary, candidate, candidate_server, make_proxy, primary)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
KIND_ROUTE = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}


def scrape(url: str) -> Samples:
    r = httpx.get(url + "/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def total(samples: Samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def recorded_file(path: Path) -> Path:
    """'Recorded traffic': chat and completions, streamed and not, in the JSONL replay reads."""
    lines: list[dict[str, Any]] = []
    for i in range(24):
        stream = i % 3 == 0
        if i % 2:
            lines.append({"url": "/v1/completions", "body": {"model": "stub-model", "prompt": f"Story {i}",
                                                             "stream": stream}})
        else:
            lines.append({"model": "stub-model", "stream": stream,
                          "messages": [{"role": "user", "content": f"question {i}"}]})
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def db_state(db: str) -> tuple[list[dict[str, Any]], dict[str, int]]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        rows = [dict(r) for r in conn.execute("SELECT * FROM pairs")]
        counters = {r[0]: int(r[1]) for r in conn.execute("SELECT name, SUM(value) FROM counters GROUP BY name")}
    finally:
        conn.close()
    return rows, counters


def assert_metrics_equal_store(samples: Samples, rows: list[dict[str, Any]], counters: dict[str, int]) -> None:
    """Every count /metrics exports against the database: counters table and rows."""
    p = "servecmp_shadow"
    for name in COUNTER_NAMES:
        if name.startswith("dropped_"):
            assert total(samples, f"{p}_dropped_total", reason=name[len("dropped_"):]) == counters[name], name
        else:
            assert total(samples, f"{p}_{name}_total") == counters[name], name
    assert counters["recorded"] == len(rows)
    by_route = Counter(KIND_ROUTE[r["endpoint"]] for r in rows)
    for route in ROUTES:
        assert total(samples, f"{p}_recorded_total", route=route) == by_route.get(route, 0)
    for target in ("candidate", "secondary"):
        errors = Counter(error_bucket(r["other_error"]) for r in rows if r["target"] == target and r["other_error"])
        for code in ERROR_CODES:
            assert total(samples, f"{p}_{target}_errors_total", error=code) == errors.get(code, 0), (target, code)
    for hist, fld in MEASURE_FIELD.items():
        values: dict[tuple[str, str], list[float]] = defaultdict(list)
        for r in rows:
            if r[fld] is not None:
                values[(KIND_ROUTE[r["endpoint"]], r["target"])].append(float(r[fld]))
        buckets = HISTOGRAMS[hist][1]
        for route in ROUTES:
            for target in ("candidate", "secondary"):
                vals = values.get((route, target), [])
                labels = {"route": route, "target": target}
                assert total(samples, f"{p}_{hist}_count", **labels) == len(vals), (hist, route, target)
                assert total(samples, f"{p}_{hist}_sum", **labels) == pytest.approx(math.fsum(vals), abs=1e-9)
                # Each bucket holds the values at or below its bound (Prometheus' cumulative "le").
                for b in buckets:
                    le = {**labels, "le": str(float(b))}
                    assert total(samples, f"{p}_{hist}_bucket", **le) == sum(v <= b for v in vals), (hist, b)


def replay_through(proxy: Proxy, requests_path: Path, ctl: StubControl) -> dict[str, int]:
    """Send the recorded requests through the proxy; the candidate fails some on purpose (each fault
    held until that request's comparison is done, so it hits that request only). Returns requests
    sent per route."""
    sent: Counter[str] = Counter()
    with httpx.Client(timeout=30) as client:
        for i, req in enumerate(load_requests(requests_path)):
            ctl.status = 503 if i in (5, 6, 7) else 200
            ctl.garbage = i == 11
            r = client.post(proxy.url + req.path, content=req.body, headers={"Content-Type": "application/json"})
            assert r.status_code == 200
            sent[req.path] += 1
            assert wait_for(lambda i=i: proxy.proxy.counters.get("mirrored") == i + 1, 60)
    ctl.status, ctl.garbage = 200, False
    return dict(sent)


@pytest.mark.parametrize("process", [False, True])
def test_metrics_while_replaying_recorded_traffic_equal_the_store(
    process: bool, tmp_path: Path, primary: tuple[ServerThread, StubControl], candidate: tuple[str, StubControl],
    make_proxy: Any,
) -> None:
    sec_ctl = StubControl()
    with ServerThread(build_stub_app(sec_ctl)) as secondary:
        proxy = make_proxy(candidate[0], secondary=secondary.url, mirror_process=process)
        before = scrape(proxy.url)
        assert total(before, "servecmp_shadow_requests_total") == 0
        sent = replay_through(proxy, recorded_file(tmp_path / "traffic.jsonl"), candidate[1])
        assert httpx.get(proxy.url + "/v1/models").status_code == 200  # not a mirrored route
        n = sum(sent.values())
        # Scraped while the proxy runs: once every comparison is stored and the writer has stored the
        # counters of that moment, /metrics and the database agree exactly.
        assert wait_for(lambda: total(scrape(proxy.url), "servecmp_shadow_recorded_total") == 2 * n, 60)

        def agree() -> bool:
            samples = scrape(proxy.url)
            rows, counters = db_state(proxy.cfg.db)
            return all(total(samples, f"servecmp_shadow_{k}_total") == counters[k]
                       for k in ("requests", "mirrored", "recorded"))

        assert wait_for(agree, 30)
        samples = scrape(proxy.url)
        rows, counters = db_state(proxy.cfg.db)
        proxy.stop()
    assert_metrics_equal_store(samples, rows, counters)
    for route, count in sent.items():
        assert total(samples, "servecmp_shadow_requests_total", route=route) == count
    assert (counters["requests"], counters["mirrored"], counters["recorded"]) == (n, n, 2 * n)
    assert total(samples, "servecmp_shadow_candidate_errors_total", error="http_5xx") == 3
    assert total(samples, "servecmp_shadow_candidate_errors_total", error="garbage") == 1
    assert total(samples, "servecmp_shadow_secondary_errors_total") == 0
    # The secondary is the same stub as the primary: no divergence at all.
    assert total(samples, "servecmp_shadow_edit_distance_bucket", target="secondary", le="0.0") == n
    assert total(samples, "servecmp_shadow_kl_nats_bucket", target="secondary", le="0.0") == n
    # Every proxied request (the /v1/models one under "other") has its added latency observed once.
    latency = {route: total(samples, "servecmp_shadow_added_latency_seconds_count", route=route) for route in ROUTES}
    assert latency == {**{r: float(c) for r, c in sent.items()}, "other": 1.0}
    (info,) = [ls for (name, ls) in samples if name == "servecmp_shadow_run_info"]
    assert dict(info)["mode"] == "serve" and dict(info)["baseline_model"] == primary[0].url + "/v1"
    assert dict(info)["run_id"] == db_runs(proxy.cfg.db)[0]


def db_runs(db: str) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        return [r[0] for r in conn.execute("SELECT run_id FROM runs")]
    finally:
        conn.close()


def test_label_sets_are_fixed_and_each_app_has_its_own_registry(
    primary: tuple[ServerThread, StubControl], candidate: tuple[str, StubControl], make_proxy: Any,
    tmp_path: Path,
) -> None:
    busy = make_proxy(candidate[0], teacher_forced=False)
    idle = Proxy(
        busy.cfg.model_copy(update={"db": str(tmp_path / "idle.db")}),
        ShadowEndpoints.of(primary[0].url, candidate[0], model="int8"),
    )
    try:
        series_before = set(scrape(busy.url))
        for path in ("/v1/embeddings", "/v1/other/thing", "/x" * 40):
            assert httpx.post(busy.url + path, json={}).status_code == 404
        for i in range(3):
            assert httpx.post(busy.url + CHAT, json=chat_body(f"q{i}")).status_code == 200
        assert wait_for(lambda: total(scrape(busy.url), "servecmp_shadow_recorded_total") == 3)
        busy_samples = scrape(busy.url)
        # Traffic, unknown paths included, adds no series: every label set existed at zero before.
        assert set(busy_samples) == series_before
        routes = {dict(ls).get("route") for (_, ls) in busy_samples} - {None}
        assert routes == set(ROUTES)
        idle_samples = scrape(idle.url)
        assert total(idle_samples, "servecmp_shadow_requests_total") == 0  # its own registry
        assert total(busy_samples, "servecmp_shadow_requests_total") == 3
        assert {dict(ls)["candidate_model"] for (_, ls) in idle_samples} == {"int8"}
    finally:
        idle.stop()
