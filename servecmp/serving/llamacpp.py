"""llama.cpp's OpenAI-compatible server (llama-cpp-python, `python -m llama_cpp.server`) as a second
serving engine, for GGUF candidates.

A `ServerConfig` with ``engine = "llamacpp"`` is started, watched and stopped by the same
`servecmp.serving.servers.ServerPair` as a vLLM server (its own process group, a log file in the
run directory, ready when /v1/models lists its name, SIGTERM then SIGKILL); only the command line
differs, built here. The Python package comes from the optional extra ``llamacpp``
(``pip install 'servecmp[llamacpp]'`` = ``llama-cpp-python[server]``); without it a `MissingExtra`
names the extra before anything starts.

What the server does differently from vLLM, as servecmp sees it (servecmp.capabilities probes it):
it takes one prompt per /v1/completions request (no prompt lists), serves top-k logprobs on
completions and chat, and echoes prompt logprobs from another code path than its sampler's (the
probe measures whether the two agree).
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

from servecmp.config import ServerConfig, served_name_for
from servecmp.errors import MissingExtra, UserError

SERVER_MODULE = "llama_cpp.server"
EXTRA = "llamacpp"
MODULE = "llama_cpp"

#: (substring of a llama.cpp server log line, what to tell the user), for `servers.diagnose`.
KNOWN_FAILURES: tuple[tuple[str, str], ...] = (
    ("No module named 'llama_cpp'", f"llama-cpp-python is not installed in this Python: pip install "
                                    f"'servecmp[{EXTRA}]'"),
    ("Failed to load model from file", "llama.cpp could not load the model file (not a GGUF, or a type this "
                                       "build does not know)"),
    ("gguf_init_from_file", "llama.cpp could not read the GGUF file"),
)


def require_llamacpp(feature: str) -> None:
    """MissingExtra naming the `llamacpp` extra when llama-cpp-python is not importable."""
    if importlib.util.find_spec(MODULE) is None:
        raise MissingExtra(feature, MODULE, EXTRA)


def core_count(cores: str | None) -> int | None:
    """How many CPUs a list such as "0", "0-3" or "0,2-3" names (None for no list)."""
    if not cores:
        return None
    n = 0
    for part in cores.split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            n += (int(hi) - int(lo) + 1) if hi else 1
        except ValueError:
            raise UserError(f"cpu_cores {cores!r}: expected a list such as 0-3 or 0,2") from None
    return n


def llamacpp_argv(cfg: ServerConfig, host: str, python: str = sys.executable) -> list[str]:
    """The llama-cpp-python server command for a GGUF file.

    `cpu_cores` pins the server with taskset (when present) and sets its thread counts, as
    VLLM_CPU_OMP_THREADS_BIND does for vLLM, so two servers on one machine do not share cores.
    `max_model_len` is the context (n_ctx). The name clients ask for is `--model_alias`.
    """
    model = str(Path(cfg.model).expanduser())
    argv = [python, "-m", SERVER_MODULE, "--model", model, "--model_alias", served_name_for(cfg),
            "--host", host, "--port", str(cfg.port), "--n_ctx", str(cfg.max_model_len)]
    threads = core_count(cfg.cpu_cores)
    if threads is not None:
        argv += ["--n_threads", str(threads), "--n_threads_batch", str(threads)]
        taskset = shutil.which("taskset")
        if taskset is not None:
            argv = [taskset, "-c", str(cfg.cpu_cores), *argv]
    return argv + list(cfg.extra_args)


def gguf_server(path: Path, *, port: int, served_name: str | None = None, cpu_cores: str | None = None,
                n_ctx: int = 4096) -> ServerConfig:
    """A `ServerConfig` serving one GGUF file with llama.cpp."""
    if not path.is_file():
        raise UserError(f"GGUF file {path} does not exist")
    return ServerConfig(model=str(path), served_name=served_name or path.stem, port=port, engine="llamacpp",
                        cpu_cores=cpu_cores, max_model_len=n_ctx)
