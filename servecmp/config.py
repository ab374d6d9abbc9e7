"""The one config loader: `servecmp.toml` → typed sections. CLI flags override file values.

Every section is optional; each command reads only its own. Keys are never stored here: an
endpoint names the environment variable that holds its key (`api_key_env`).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from servecmp.endpoints import EndpointSpec
from servecmp.errors import UserError

DEFAULT_CONFIG = "servecmp.toml"


class _Section(BaseModel):
    # A typo in a key should be an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid")


class McqConfig(_Section):
    task: str = "mmlu"
    data_dir: str | None = None
    limit: int | None = None
    seed: int = 0
    top_k: int = 20
    runs_dir: str = "runs"


class ServerConfig(_Section):
    """One vLLM server that `servecmp serve` starts (`[serve.baseline]` / `[serve.candidate]`)."""

    #: A checkpoint directory (or GGUF file), or a model name vLLM resolves from its hub.
    model: str
    #: The name clients ask for; defaults to the checkpoint directory's name (or `model`).
    served_name: str | None = None
    port: int = Field(ge=1, le=65535)
    dtype: str = "auto"
    quantization: str | None = None
    device: Literal["cpu", "gpu"] = "cpu"
    #: CPU only: the cores this server's compute threads bind to (VLLM_CPU_OMP_THREADS_BIND),
    #: e.g. "0" or "0-3". Two servers on one machine should get disjoint sets.
    cpu_cores: str | None = None
    #: CPU only: KV-cache size in GiB (VLLM_CPU_KVCACHE_SPACE).
    kv_cache_gib: int = Field(default=1, ge=1)
    # 4096 holds every MMLU 5-shot prompt (the longest, high_school_european_history, is ~3,150
    # SmolLM2 tokens); 2048 would refuse a few percent of them.
    max_model_len: int = Field(default=4096, ge=16)
    max_logprobs: int = Field(default=20, ge=0)
    #: None: eager on CPU (torch.compile warm-up triples start-up time there), compiled on GPU.
    enforce_eager: bool | None = None
    extra_args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    #: Replaces the whole launch command (default: this Python's `-m vllm.entrypoints.openai.api_server`
    #: plus the flags above). `{host}`, `{port}`, `{model}` and `{served_name}` are filled in.
    command: list[str] | None = None


class ServeConfig(_Section):
    baseline: ServerConfig | None = None
    candidate: ServerConfig | None = None
    host: str = "127.0.0.1"
    startup_timeout_s: float = Field(default=900.0, gt=0)
    #: How long a server gets to exit after SIGTERM before its process group is killed.
    stop_timeout_s: float = Field(default=20.0, gt=0)
    #: Where `servecmp serve` creates its run directory (server logs, servers.json).
    runs_dir: str = "runs"


class JudgeConfig(_Section):
    """The MT-Bench judge: any OpenAI-compatible chat endpoint, or "baseline" (the offline demo judge).

    Unset `model` means gpt-4 on api.openai.com, else the one model the endpoint lists. Unset
    `api_key_env` means OPENAI_API_KEY on api.openai.com, else no key.
    """

    url: str = "https://api.openai.com/v1"
    model: str | None = None
    api_key_env: str | None = None
    requests_per_second: float | None = None
    max_concurrency: int = 4
    timeout_s: float = 120.0
    max_retries: int = 4
    max_judge_calls: int | None = None
    #: FastChat's max_tokens for an OpenAI judge.
    max_tokens: int = 2048
    #: Force a parseable rating with vLLM structured outputs; unset: only for the demo judge.
    force_format: bool | None = None
    #: Shared judgment cache directory ("off" disables it); unset: <servecmp cache>/judgments.
    cache_dir: str | None = None


class MtBenchConfig(_Section):
    question_file: str | None = None
    reference_file: str | None = None
    categories: list[str] | None = None
    limit: int | None = None
    #: FastChat's default for new tokens per turn.
    max_tokens: int = 1024
    #: "single", "pairwise" or "both" (checked by `servecmp mtbench`).
    mode: str = "both"
    show: int = 5
    runs_dir: str = "runs"


class ShadowConfig(_Section):
    """`servecmp shadow`: the proxy in front of the primary, and replay. URLs may end in /v1 or not."""

    primary: str | None = None
    candidate: str | None = None
    secondary: str | None = None
    #: Model names put in mirrored requests; unset: the endpoint's only model, else the client's.
    candidate_model: str | None = None
    secondary_model: str | None = None
    #: The primary gets the client's own Authorization; this key is only for requests servecmp makes
    #: itself (replay, teacher-forced scoring on the primary).
    primary_api_key_env: str | None = None
    candidate_api_key_env: str | None = None
    secondary_api_key_env: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8100, ge=0, le=65535)
    db: str = "shadow.db"
    sample_rate: float = Field(default=1.0, ge=0.0, le=1.0)
    hash_only: bool = False
    max_db_mb: float | None = Field(default=None, gt=0)
    #: Mirror jobs waiting for a worker; when full, new ones are dropped and counted.
    queue_size: int = Field(default=1000, ge=1)
    #: Comparisons in flight at once (each calls the candidate and the secondary).
    mirror_concurrency: int = Field(default=8, ge=1)
    #: Run comparisons in a separate process (off the proxy's event loop and GIL).
    mirror_process: bool = True
    #: Niceness added to the mirror process, so the proxy gets the CPU first on a busy machine.
    mirror_nice: int = Field(default=10, ge=0, le=19)
    writer_queue_size: int = Field(default=10000, ge=1)
    primary_timeout_s: float = Field(default=600.0, gt=0)
    #: Whole-exchange limit for a mirrored request (a slow candidate is cut off and recorded).
    candidate_timeout_s: float = Field(default=60.0, gt=0)
    #: Responses larger than this are passed through but not compared.
    max_capture_mb: float = Field(default=8.0, gt=0)
    #: Score the primary's answer under the candidate/secondary with vLLM prompt_logprobs.
    teacher_forced: bool = True
    top_k: int = Field(default=20, ge=1)
    #: Answer positions scored per request (prompt_logprobs is costly on CPU).
    tf_max_tokens: int = Field(default=256, ge=1)
    #: Ask the primary for prompt_logprobs when the client asked for no logprobs (an extra prefill
    #: on the primary per compared request); off: score only requests that carry logprobs.
    tf_score_primary: bool = True
    drain_timeout_s: float = Field(default=10.0, ge=0)


class Config(_Section):
    #: The endpoints every command compares (shadow's primary is the baseline).
    baseline: EndpointSpec | None = None
    candidate: EndpointSpec | None = None
    #: A second replica of the baseline: the noise floor (shadow today).
    secondary: EndpointSpec | None = None
    mcq: McqConfig = Field(default_factory=McqConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    mtbench: MtBenchConfig = Field(default_factory=MtBenchConfig)
    shadow: ShadowConfig = Field(default_factory=ShadowConfig)


def parse_config(data: dict[str, Any], origin: str = "config") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise UserError(f"{origin}: {loc}: {first['msg']}") from exc


def load_config(path: str | Path | None) -> Config:
    """Load `path`, or ./servecmp.toml when it exists, or defaults."""
    if path is None:
        if not Path(DEFAULT_CONFIG).exists():
            return Config()
        path = DEFAULT_CONFIG
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UserError(f"config file {p} not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"config file {p} is not valid TOML: {exc}") from exc
    return parse_config(data, str(p))
