"""deploy/ for shadow traffic: the Istio mirror points at the collector, whose manifest runs a command
servecmp's own CLI accepts; the Grafana dashboard and the Prometheus alerts query only metrics
`/metrics` really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from servecmp.shadow.prom import ShadowCollector, Telemetry, build_registry
from servecmp.shadow.store import Counters

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
METRIC = re.compile(r"\bservecmp_shadow_[a-z0-9_]+")


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def exported_names() -> set[str]:
    collector = ShadowCollector(Counters(), Telemetry(), baseline_model="b", candidate_model="c", run_id="r",
                                mode="serve")
    text = generate_latest(build_registry(collector)).decode()
    return {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_istio_mirrors_to_the_collector_service() -> None:
    (vs,) = [d for d in docs(DEPLOY / "k8s" / "istio-mirror.yaml") if d["kind"] == "VirtualService"]
    collector = {d["kind"]: d for d in docs(DEPLOY / "k8s" / "shadow" / "servecmp-shadow-collect.yaml")}
    (http,) = vs["spec"]["http"]
    (route,) = http["route"]
    assert route["destination"]["host"] == "vllm-baseline"  # clients still get the baseline
    service = collector["Service"]
    port = service["spec"]["ports"][0]["port"]
    assert http["mirror"] == {"host": service["metadata"]["name"], "port": {"number": port}}
    assert 0 < http["mirrorPercentage"]["value"] <= 100
    pod = collector["Deployment"]["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    # No sidecar on the collector: its requests to vllm-baseline would be mirrored back to it.
    assert pod["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    assert collector["Deployment"]["spec"]["replicas"] >= 2


def test_collector_command_parses_with_servecmp_cli() -> None:
    import typer

    from servecmp._cli import shadow as shadow_cli

    collector = {d["kind"]: d for d in docs(DEPLOY / "k8s" / "shadow" / "servecmp-shadow-collect.yaml")}
    (container,) = collector["Deployment"]["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[:2] == ["shadow", "collect"]
    group = typer.main.get_command(shadow_cli.shadow_app)
    sub = group.commands["collect"]  # type: ignore[attr-defined]
    params = sub.make_context("collect", list(args[2:]), resilient_parsing=False).params
    assert (params["baseline"], params["candidate"], params["host"]) == (
        "http://vllm-baseline:8000/v1", "http://vllm-candidate:8000/v1", "0.0.0.0")
    # The database URL (with its password) comes from a Secret, never from the manifest.
    assert params["db"] == "$(SHADOW_DB_URL)"
    (env,) = container["env"]
    assert env["name"] == "SHADOW_DB_URL" and "secretKeyRef" in env["valueFrom"]
    port = container["ports"][0]["containerPort"]
    assert params["port"] == port and container["readinessProbe"]["httpGet"]["path"] == "/metrics"


def test_dashboard_and_alerts_use_exported_metrics_only() -> None:
    names = exported_names()
    assert {"servecmp_shadow_requests_total", "servecmp_shadow_dropped_total",
            "servecmp_shadow_candidate_errors_total", "servecmp_shadow_added_latency_seconds_bucket",
            "servecmp_shadow_kl_nats_sum", "servecmp_shadow_run_info"} <= names
    dashboard = json.loads((DEPLOY / "grafana" / "servecmp-shadow.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    (group,) = docs(DEPLOY / "prometheus" / "servecmp-shadow-alerts.yaml")[0]["groups"]
    rules = group["rules"]
    assert len({r["alert"] for r in rules}) == len(rules) >= 5
    used = {m for e in exprs + [r["expr"] for r in rules] for m in METRIC.findall(e)}
    assert used and used <= names, used - names
    # Every label the queries select on is one the metrics carry.
    for e in exprs + [r["expr"] for r in rules]:
        for label in re.findall(r"([a-z_]+)\s*=~?\s*\"", e):
            assert label in {"baseline_model", "candidate_model", "route", "target", "reason", "error", "le"}, label
