"""deploy/: every manifest parses and fits together, and every vLLM flag is one vLLM accepts.

No Docker engine or cluster here, so this checks by parsing: images, ports, /health probes, GPU
requests, the Job's servecmp command, and each server's argument list run through the installed
vLLM's own OpenAI-server argument parser (and servecmp's arguments through servecmp's).
"""

from __future__ import annotations

import importlib.util
import os
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from servecmp.config import parse_config

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
K8S = DEPLOY / "k8s"
VLLM_IMAGE = re.compile(r"^vllm/vllm-openai:v\d+\.\d+\.\d+$")
VLLM_MODULE = ["python3", "-m", "vllm.entrypoints.openai.api_server"]


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def k8s_docs() -> list[dict[str, Any]]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in load_docs(path)]


def of_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in k8s_docs() if d["kind"] == kind}


def compose() -> dict[str, Any]:
    return load_docs(DEPLOY / "docker-compose.yml")[0]


def vllm_server_args() -> dict[str, list[str]]:
    """Every vLLM server's argument list, from compose and from k8s, keyed by where it is."""
    out = {f"compose:{name}": svc["command"] for name, svc in compose()["services"].items() if name != "servecmp"}
    for name, dep in of_kind("Deployment").items():
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        out[f"k8s:{name}"] = container["args"]
    return out


@pytest.fixture(scope="module")
def vllm_parser() -> Any:
    if importlib.util.find_spec("vllm") is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("vLLM is not installed (CI=true: refusing to skip the flag check)", pytrace=False)
        pytest.skip("vLLM is not installed")
    try:
        from vllm.entrypoints.launchers.cli_args import make_arg_parser
    except ImportError:  # vLLM releases before the launchers package
        from vllm.entrypoints.openai.cli_args import make_arg_parser  # type: ignore[no-redef]
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    # No abbreviations: a manifest should spell each flag in full, even where argparse would guess.
    return make_arg_parser(FlexibleArgumentParser(prog="vllm-openai", allow_abbrev=False))


def test_every_yaml_file_parses_and_k8s_objects_are_well_formed() -> None:
    files = sorted(DEPLOY.rglob("*.yml")) + sorted(DEPLOY.rglob("*.yaml"))
    assert {p.name for p in files} >= {
        "docker-compose.yml", "vllm-baseline.yaml", "vllm-candidate.yaml", "servecmp-config.yaml",
        "servecmp-mcq-job.yaml", "istio-mirror.yaml",
    }  # fmt: skip
    for path in files:
        assert load_docs(path), path
    for doc in k8s_docs():
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"]


def test_compose_runs_two_gpu_vllm_services_with_health_checks() -> None:
    services = compose()["services"]
    assert set(services) == {"baseline", "candidate", "servecmp"}
    host_ports = set()
    for name in ("baseline", "candidate"):
        svc = services[name]
        assert VLLM_IMAGE.match(svc["image"]), svc["image"]
        assert svc["entrypoint"] == VLLM_MODULE
        assert any("/health" in part for part in svc["healthcheck"]["test"])
        (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        assert device.get("device_ids") or device.get("count")
        (port,) = svc["ports"]
        host_ports.add(port.rsplit(":", 2)[-2])
        assert port.endswith(":8000")
    assert len(host_ports) == 2
    gpus = [tuple(services[n]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"])
            for n in ("baseline", "candidate")]
    assert gpus[0] != gpus[1], "each server gets its own GPU"


def test_compose_servecmp_service_compares_the_two_once_they_are_healthy() -> None:
    svc = compose()["services"]["servecmp"]
    assert svc["command"][0] == "mcq"
    assert "--baseline=http://baseline:8000/v1" in svc["command"]
    assert "--candidate=http://candidate:8000/v1" in svc["command"]
    assert svc["depends_on"] == {
        "baseline": {"condition": "service_healthy"},
        "candidate": {"condition": "service_healthy"},
    }
    assert (DEPLOY.parent / svc["build"]["context"].replace("..", ".") / svc["build"]["dockerfile"]).exists()


def test_dockerfile_copies_every_package_servecmp_installs() -> None:
    # servecmp/ plus the top-level folders its links (servecmp/judges, servecmp/prompts) point to.
    pkg = DEPLOY.parent / "servecmp"
    top_level = {"servecmp"} | {p.resolve().name for p in pkg.iterdir() if p.is_symlink()}
    assert top_level == {"servecmp", "judges", "prompts"}
    copied = {line.split()[1] for line in (DEPLOY / "Dockerfile").read_text().splitlines()
              if line.startswith("COPY ")}
    assert top_level <= copied


def test_k8s_deployments_request_a_gpu_and_probe_health_and_services_match() -> None:
    deployments, services = of_kind("Deployment"), of_kind("Service")
    assert set(deployments) == {"vllm-baseline", "vllm-candidate"}
    for name, dep in deployments.items():
        pod = dep["spec"]["template"]
        assert dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        (container,) = pod["spec"]["containers"]
        assert VLLM_IMAGE.match(container["image"])
        assert container["command"] == VLLM_MODULE
        assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"http": 8000}
        for probe in ("readinessProbe", "startupProbe", "livenessProbe"):
            get = container[probe]["httpGet"]
            assert get["path"] == "/health" and get["port"] in ("http", 8000), (name, probe)
        svc = services[name]
        assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        (svc_port,) = svc["spec"]["ports"]
        assert (svc_port["port"], svc_port["targetPort"]) == (8000, "http")


def test_job_runs_servecmp_mcq_against_both_services_with_the_configmap() -> None:
    (job,) = of_kind("Job").values()
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    cmd = container["command"]
    assert cmd[:2] == ["servecmp", "mcq"]
    assert "--baseline=http://vllm-baseline:8000/v1" in cmd
    assert "--candidate=http://vllm-candidate:8000/v1" in cmd
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    (config_flag,) = [a for a in cmd if a.startswith("--config=")]
    assert Path(config_flag.split("=", 1)[1]).parent == Path(mounts["config"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_map = of_kind("ConfigMap")[volumes["config"]["configMap"]["name"]]
    cfg = parse_config(tomllib.loads(config_map["data"]["servecmp.toml"]), "servecmp-config")
    assert cfg.baseline is not None and cfg.candidate is not None
    services = of_kind("Service")
    for endpoint in (cfg.baseline, cfg.candidate):
        host = endpoint.base_url.split("//", 1)[1].split(":", 1)[0]
        assert host in services
    wait = " ".join(pod["initContainers"][0]["command"])
    assert "http://vllm-baseline:8000/health" in wait and "http://vllm-candidate:8000/health" in wait


def test_servecmp_commands_parse_with_servecmp_own_cli() -> None:
    from servecmp._cli import mcq as mcq_cli

    app = typer.Typer()
    mcq_cli.register(app)

    @app.callback()
    def _root() -> None:  # a callback makes typer keep "mcq" as a named subcommand
        pass

    group = typer.main.get_command(app)
    (job,) = of_kind("Job").values()
    commands = [job["spec"]["template"]["spec"]["containers"][0]["command"][1:],
                compose()["services"]["servecmp"]["command"]]
    for argv in commands:
        sub = group.commands[argv[0]]  # type: ignore[attr-defined]
        ctx = sub.make_context(argv[0], list(argv[1:]), resilient_parsing=False)
        assert ctx.params["baseline"].endswith(":8000/v1")


def test_istio_mirrors_a_share_of_baseline_traffic_to_the_candidate() -> None:
    (vs,) = of_kind("VirtualService").values()
    services = of_kind("Service")
    assert vs["spec"]["hosts"] == ["vllm-baseline"]
    (http,) = vs["spec"]["http"]
    (route,) = http["route"]
    assert route["destination"]["host"] == "vllm-baseline"
    # Issue 13: the mirror goes to servecmp's collector (deploy/k8s/shadow/, checked in
    # tests/test_shadow_deploy.py), which compares the candidate's answers instead of discarding them.
    assert http["mirror"]["host"] == "servecmp-shadow-collect" and "vllm-baseline" in services
    assert 0 < http["mirrorPercentage"]["value"] <= 100


def test_every_vllm_argument_is_a_valid_flag_of_the_installed_vllm(vllm_parser: Any) -> None:
    parsed = {}
    for where, args in vllm_server_args().items():
        try:
            parsed[where] = vllm_parser.parse_args(list(args))
        except SystemExit as exc:  # argparse reports the bad flag on stderr and exits 2
            pytest.fail(f"{where}: vLLM rejects {args} (exit {exc.code})")
        ns = parsed[where]
        assert (ns.port, ns.host, ns.max_logprobs) == (8000, "0.0.0.0", 20), where
    for prefix in ("compose", "k8s"):
        base = parsed[f"{prefix}:{'baseline' if prefix == 'compose' else 'vllm-baseline'}"]
        cand = parsed[f"{prefix}:{'candidate' if prefix == 'compose' else 'vllm-candidate'}"]
        assert base.dtype == "bfloat16"
        assert "FP8" in cand.model
        # Mirrored requests carry the baseline's model name: the candidate must answer to it too.
        assert base.served_model_name[0] in cand.served_model_name


@pytest.mark.parametrize("bad", ["--max-logprobz=20", "--max-logprob=20", "--enforce-eager=yes"])
def test_a_bad_or_abbreviated_vllm_flag_is_caught(vllm_parser: Any, bad: str) -> None:
    with pytest.raises(SystemExit):
        vllm_parser.parse_args(["--model=x", bad])
