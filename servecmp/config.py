"""The one config loader: `servecmp.toml` → typed sections. CLI flags override file values.

Every section is optional; each command reads only its own. Keys are never stored here: an
endpoint names the environment variable that holds its key (`api_key_env`).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from servecmp.client import EndpointSpec
from servecmp.errors import UserError

DEFAULT_CONFIG = "servecmp.toml"


class _Section(BaseModel):
    # A typo in a key should be an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid")


class EndpointConfig(_Section):
    url: str
    model: str | None = None
    api_key_env: str | None = None
    timeout_s: float = 120.0
    max_concurrency: int = 4
    requests_per_second: float | None = None
    max_retries: int = 4

    def spec(self) -> EndpointSpec:
        return EndpointSpec(
            base_url=self.url,
            model=self.model,
            api_key_env=self.api_key_env,
            timeout_s=self.timeout_s,
            max_concurrency=self.max_concurrency,
            requests_per_second=self.requests_per_second,
            max_retries=self.max_retries,
        )


class McqConfig(_Section):
    task: str = "mmlu"
    data_dir: str | None = None
    limit: int | None = None
    seed: int = 0
    top_k: int = 20
    runs_dir: str = "runs"


class ServerConfig(_Section):
    """One vLLM server that `servecmp serve` starts."""

    model: str
    served_name: str | None = None
    port: int
    dtype: str = "auto"
    quantization: str | None = None
    device: str = "cpu"
    #: CPU only: the cores this server's compute threads bind to (VLLM_CPU_OMP_THREADS_BIND).
    cpu_cores: str | None = None
    kv_cache_gib: int = 1
    max_model_len: int = 2048
    max_logprobs: int = 20
    enforce_eager: bool = True
    extra_args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)


class ServeConfig(_Section):
    baseline: ServerConfig | None = None
    candidate: ServerConfig | None = None
    host: str = "127.0.0.1"
    startup_timeout_s: float = 900.0


class JudgeConfig(_Section):
    url: str = "https://api.openai.com/v1"
    model: str = "gpt-4"
    api_key_env: str | None = "OPENAI_API_KEY"
    requests_per_second: float | None = None
    max_concurrency: int = 4
    max_judge_calls: int | None = None


class MtBenchConfig(_Section):
    question_file: str | None = None
    reference_file: str | None = None
    max_tokens: int = 1024
    runs_dir: str = "runs"


class ShadowConfig(_Section):
    primary: str | None = None
    candidate: str | None = None
    secondary: str | None = None
    candidate_api_key_env: str | None = None
    secondary_api_key_env: str | None = None
    host: str = "127.0.0.1"
    port: int = 8100
    db: str = "shadow.db"
    sample_rate: float = 1.0
    hash_only: bool = False
    max_db_mb: float | None = None
    queue_size: int = 1000


class Config(_Section):
    baseline: EndpointConfig | None = None
    candidate: EndpointConfig | None = None
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
