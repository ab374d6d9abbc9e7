"""The pure parts of servecmp.serving.servers: launch commands, environments, names, redaction, diagnoses."""

from __future__ import annotations

import sys
from pathlib import Path

from servecmp.config import ServerConfig
from servecmp.serving.servers import (
    diagnose,
    launch_argv,
    redact_argv,
    served_name_for,
    server_env,
    url_host,
    vllm_argv,
)


def test_cpu_server_command_is_the_module_form_with_eager_and_logprobs(tmp_path: Path) -> None:
    cfg = ServerConfig(model=str(tmp_path / "ckpt"), port=8001, dtype="float32", extra_args=["--seed", "1"])
    assert vllm_argv(cfg, "127.0.0.1", python="/py") == [
        "/py", "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(tmp_path / "ckpt"),
        "--served-model-name", "ckpt",
        "--host", "127.0.0.1",
        "--port", "8001",
        "--dtype", "float32",
        "--max-model-len", "4096",
        "--max-logprobs", "20",
        "--enforce-eager",
        "--seed", "1",
    ]  # fmt: skip


def test_gpu_server_compiles_by_default_and_passes_quantization() -> None:
    cfg = ServerConfig(model="org/model-fp8", port=9000, device="gpu", quantization="fp8", served_name="cand")
    argv = vllm_argv(cfg, "0.0.0.0", python="/py")
    assert "--enforce-eager" not in argv
    assert argv[argv.index("--quantization") + 1] == "fp8"
    assert argv[argv.index("--model") + 1] == "org/model-fp8"
    assert argv[argv.index("--served-model-name") + 1] == "cand"
    forced = vllm_argv(cfg.model_copy(update={"enforce_eager": True}), "0.0.0.0", python="/py")
    assert "--enforce-eager" in forced


def test_command_override_fills_placeholders(tmp_path: Path) -> None:
    cfg = ServerConfig(model=str(tmp_path), served_name="m", port=1234,
                       command=["run", "--listen={host}:{port}", "{model}", "{served_name}", "{other}"])
    assert launch_argv(cfg, "127.0.0.1") == ["run", "--listen=127.0.0.1:1234", str(tmp_path), "m", "{other}"]


def test_environment_binds_cores_and_sizes_the_kv_cache_on_cpu_only() -> None:
    cpu = ServerConfig(model="m", port=1, cpu_cores="1", kv_cache_gib=3, env={"EXTRA": "x"})
    env = server_env(cpu, {"PATH": "/bin", "VLLM_CPU_KVCACHE_SPACE": "9"})
    assert env == {
        "PATH": "/bin", "PYTHONUNBUFFERED": "1", "VLLM_CPU_KVCACHE_SPACE": "3",
        "VLLM_CPU_OMP_THREADS_BIND": "1", "EXTRA": "x",
    }  # fmt: skip
    gpu = ServerConfig(model="m", port=1, device="gpu", env={"CUDA_VISIBLE_DEVICES": "1"})
    assert server_env(gpu, {}) == {"PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": "1"}


def test_served_name_defaults_to_the_checkpoint_dir_or_the_hub_name(tmp_path: Path) -> None:
    assert served_name_for(ServerConfig(model=str(tmp_path / "my-ckpt"), port=1)) == "my-ckpt"
    assert served_name_for(ServerConfig(model="meta-llama/Llama-3.1-8B-Instruct", port=1)) == (
        "meta-llama/Llama-3.1-8B-Instruct"
    )
    assert served_name_for(ServerConfig(model="./x/y", port=1, served_name="z")) == "z"


def test_api_keys_never_reach_the_servers_file() -> None:
    argv = [sys.executable, "--api-key", "sk-secret", "--port", "1", "--api-key=sk-two"]
    assert redact_argv(argv) == [sys.executable, "--api-key", "***", "--port", "1", "--api-key=***"]


def test_known_failures_are_recognised_in_a_log_tail() -> None:
    assert diagnose("ValueError: No available memory for the cache blocks. Try") == (
        "not enough memory for the KV cache: lower kv_cache_gib (VLLM_CPU_KVCACHE_SPACE) or max_model_len "
        "in the serve.<role> section, or free memory"
    )
    assert diagnose("OSError: [Errno 98] Address already in use") == "its port is already in use"
    assert diagnose("RuntimeError: something else") is None


def test_wildcard_bind_addresses_are_reached_on_loopback() -> None:
    assert url_host("0.0.0.0") == "127.0.0.1"
    assert url_host("::") == "[::1]"
    assert url_host("10.0.0.5") == "10.0.0.5"
    assert url_host("fe80::1") == "[fe80::1]"
