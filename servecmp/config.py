"""The one config loader: `servecmp.toml` → typed sections. CLI flags override file values.

Every section is optional; each command reads only its own. Keys are never stored here: an
endpoint names the environment variable that holds its key (`api_key_env`).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from servecmp.endpoints import EndpointSpec, normalise_url
from servecmp.errors import UserError, first_error
from servecmp.gates import GateConfig

DEFAULT_CONFIG = "servecmp.toml"


class _Section(BaseModel):
    # A typo in a key should be an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid")


class McqConfig(_Section):
    """`[mcq]`: the defaults of `servecmp mcq` (each key is the flag of the same name)."""

    task: str = "mmlu"
    data_dir: str | None = None
    #: "csv", "sample", "hf" or "jsonl"; unset: the task's own (see servecmp.tasks.registry).
    source: str | None = None
    #: Exemplars per prompt (MMLU: the first N of 5 dev rows); unset: the task's own.
    fewshot: int | None = Field(default=None, ge=0)
    fewshot_file: str | None = None
    #: A seeded sample of N items (`--sample`); unset: every item.
    sample: int | None = Field(default=None, ge=1)
    seed: int = 0
    top_k: int = Field(default=20, ge=1)
    #: The API letter items are asked through (--api): auto, completions or chat.
    api: str = "auto"
    runs_dir: str = "runs"
    #: Compare the baseline with `[secondary]` (a replica of it) too: the noise floor (--secondary).
    secondary: bool = False
    #: Ask a seeded sample of N items again on every endpoint after the main pass (--noise-floor).
    noise_floor: int | None = Field(default=None, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _renamed_limit(cls, data: Any) -> Any:
        # `limit` meant a seeded sample before --limit came to mean "the first N" everywhere; reading
        # an old file's `limit` either way would silently change which items a run scores.
        if isinstance(data, dict) and "limit" in data:
            from pydantic_core import PydanticCustomError

            raise PydanticCustomError(
                "renamed_key", "`limit` is now `sample` (a seeded sample of N items); rename the key"
            )
        return data


class CandidateEndpoint(EndpointSpec):
    """One `[[candidates]]` entry: an endpoint plus its name in the run (default: the served model's
    name, or "candidate" when it is the only one)."""

    name: str | None = None


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
    #: The serving engine: vLLM, or llama.cpp's server for a GGUF file (servecmp.serving.llamacpp; the
    #: `llamacpp` extra). llama.cpp reads `model` (the .gguf), `served_name`, `port`, `cpu_cores`,
    #: `max_model_len` (its n_ctx) and `extra_args`.
    engine: Literal["vllm", "llamacpp"] = "vllm"
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


def looks_like_path(model: str) -> bool:
    """A local path rather than a hub name: explicit path syntax or something that exists here."""
    return model.startswith(("/", "./", "../", "~")) or Path(model).expanduser().exists()


def served_name_for(cfg: ServerConfig) -> str:
    """The model name the server answers to: `served_name`, else a local path's last part, else the model."""
    if cfg.served_name:
        return cfg.served_name
    if looks_like_path(cfg.model):
        return Path(cfg.model).expanduser().name
    return cfg.model



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

    #: A URL (normalised to .../v1 at load, so a typo fails here) or "baseline".
    url: str = "https://api.openai.com/v1"
    model: str | None = None
    api_key_env: str | None = None
    requests_per_second: float | None = Field(default=None, gt=0)
    max_concurrency: int = Field(default=4, ge=1)
    timeout_s: float = Field(default=120.0, gt=0)
    max_retries: int = Field(default=4, ge=0)
    max_judge_calls: int | None = Field(default=None, ge=0)
    #: FastChat's max_tokens for an OpenAI judge.
    max_tokens: int = Field(default=2048, ge=1)
    #: Force a parseable rating with vLLM structured outputs; unset: only for the demo judge.
    force_format: bool | None = None
    #: Shared judgment cache directory ("off" disables it); unset: <servecmp cache>/judgments.
    cache_dir: str | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value == "baseline":
            return value
        try:
            return normalise_url(value)
        except UserError as exc:
            # A ValueError, so parse_config reports it as "judge.url: ..." like any other bad key.
            raise ValueError(f"{exc}, or 'baseline' for the offline demo judge") from None


class MtBenchConfig(_Section):
    question_file: str | None = None
    reference_file: str | None = None
    categories: list[str] | None = None
    limit: int | None = Field(default=None, ge=1)
    #: FastChat's default for new tokens per turn.
    max_tokens: int = Field(default=1024, ge=1)
    mode: Literal["single", "pairwise", "both"] = "both"
    show: int = Field(default=5, ge=0)
    runs_dir: str = "runs"


class GenConfig(_Section):
    """`[gen]`: the defaults of `servecmp gen` (each key is the flag of the same name)."""

    task: str = "gsm8k"
    data_dir: str | None = None
    source: str | None = None
    fewshot: int | None = Field(default=None, ge=0)
    sample: int | None = Field(default=None, ge=1)
    seed: int = 0
    api: str = "auto"
    max_tokens: int = Field(default=256, ge=1)
    samples: int = Field(default=1, ge=1)
    temperature: float = Field(default=0.0, ge=0.0)
    top_k: int = Field(default=20, ge=1)
    teacher_forcing: bool = True
    secondary: bool = False
    noise_floor: int | None = Field(default=None, ge=1)
    show: int = Field(default=10, ge=0)
    runs_dir: str = "runs"


class ShadowConfig(_Section):
    """`servecmp shadow`: the proxy in front of the primary, the mirror receiver (collect), and replay.

    The endpoints are the top-level `[baseline]` (the primary: clients get its answers),
    `[candidate]` and `[secondary]` sections, as for every command. Of their settings shadow uses
    `url`, `model` and `api_key_env`: the proxy forwards client traffic as it comes, so the pacing
    settings (`max_concurrency`, `requests_per_second`, `max_retries`) do not apply, and its
    timeouts are `primary_timeout_s` / `candidate_timeout_s` below (a proxy must wait as long as a
    client would, which is not what an evaluation run wants).
    """

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        # An old servecmp.toml should say where its keys went, not just "extra inputs not permitted".
        # UserError is not a ValueError, so pydantic lets it through as the one-line error it is.
        moved_to = {
            "primary": "[baseline] url", "candidate": "[candidate] url", "secondary": "[secondary] url",
            "primary_model": "[baseline] model", "candidate_model": "[candidate] model",
            "secondary_model": "[secondary] model", "primary_api_key_env": "[baseline] api_key_env",
            "candidate_api_key_env": "[candidate] api_key_env", "secondary_api_key_env": "[secondary] api_key_env",
        }
        if isinstance(data, dict):
            moved = [f"[shadow] {k} is now {moved_to[k]}" for k in moved_to if k in data]
            if moved:
                raise UserError(f"servecmp.toml: {', '.join(moved)} (the endpoint sections every command shares)")
        return data

    host: str = "127.0.0.1"
    port: int = Field(default=8100, ge=0, le=65535)
    #: Where comparisons are stored: an SQLite file path, or a postgresql:// URL (the `postgres` extra;
    #: several proxy or collector replicas can share one PostgreSQL database).
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
    # Bounds of the HTTP server in the user's path (`shadow serve`, `shadow collect`); README
    # "Shadow: limits" states them, /metrics shows them (servecmp_shadow_limit).
    #: A request body larger than this is refused (413) as soon as it is known, never read past it.
    max_body_mb: float = Field(default=16.0, gt=0)
    #: Bytes of mirror jobs waiting (request + primary answer); beyond it new ones are dropped, counted.
    queue_mb: float = Field(default=256.0, gt=0)
    #: Client connections at once; requests on connections beyond it are answered 503.
    max_connections: int = Field(default=1000, ge=1)
    #: Connections to the primary (or the baseline replica) at once; more requests wait for one.
    max_upstream_connections: int = Field(default=256, ge=1)
    #: From a connection's start (or the end of its previous answer) to a request's whole head.
    header_timeout_s: float = Field(default=10.0, gt=0)
    #: For a request's whole body, once its head has arrived (408 after it).
    body_timeout_s: float = Field(default=60.0, gt=0)
    #: An idle keep-alive client connection is closed after this long.
    keepalive_s: float = Field(default=5.0, gt=0)


class Config(_Section):
    #: The endpoints every command compares (shadow's primary is the baseline).
    baseline: EndpointSpec | None = None
    candidate: EndpointSpec | None = None
    #: A second replica of the baseline: the noise floor (shadow today).
    secondary: EndpointSpec | None = None
    candidates: list[CandidateEndpoint] = Field(default_factory=list)  # `[[candidates]]`: several, one run (mcq)
    mcq: McqConfig = Field(default_factory=McqConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    mtbench: MtBenchConfig = Field(default_factory=MtBenchConfig)
    shadow: ShadowConfig = Field(default_factory=ShadowConfig)
    gen: GenConfig = Field(default_factory=GenConfig)
    #: `[gate]`: per run kind, the gates its commands apply (see servecmp.gates); `--gate` replaces them.
    gate: GateConfig = Field(default_factory=GateConfig)


def parse_config(data: dict[str, Any], origin: str = "config") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"{origin}: {first_error(exc)}") from exc


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
