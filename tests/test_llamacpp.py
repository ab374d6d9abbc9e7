"""llama.cpp as a second engine: the server's command line and lifecycle, a GGUF type built with
llama.cpp's quantizer and served, the capability probe against it, and a vLLM-vs-llama.cpp run."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from servecmp.config import ServerConfig
from servecmp.errors import MissingExtra, UserError
from servecmp.serving.llamacpp import core_count, gguf_server, llamacpp_argv
from servecmp.serving.servers import ServerHandle, ServerPair, preflight, read_servers_file
from tests._llamacpp import LlamaServer, llamacpp_server, require_llamacpp
from tests.conftest import VllmPair
from tests.stub_openai import free_port

__all__ = ["llamacpp_server"]  # the fixture, imported for pytest


# --- no llama.cpp needed --------------------------------------------------------------------------


def test_the_command_line_pins_cores_and_names_the_model(tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    cfg = gguf_server(gguf, port=8123, served_name="small", cpu_cores="0,2-3", n_ctx=2048)
    server = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "small",
              "--host", "127.0.0.1", "--port", "8123", "--n_ctx", "2048", "--n_threads", "3", "--n_threads_batch", "3"]
    taskset = shutil.which("taskset")
    assert llamacpp_argv(cfg, "127.0.0.1") == ([taskset, "-c", "0,2-3", *server] if taskset else server)
    assert llamacpp_argv(cfg.model_copy(update={"cpu_cores": None}), "127.0.0.1") == server[:-4]
    assert (core_count("0"), core_count("0-3"), core_count("0,2-3"), core_count(None)) == (1, 4, 3, None)
    with pytest.raises(UserError, match="cpu_cores 'a-b'"):
        core_count("a-b")


def test_a_missing_extra_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def without_llama(name: str, *args: Any) -> Any:
        return None if name == "llama_cpp" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_llama)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    handle = ServerHandle("candidate", gguf_server(gguf, port=free_port()), "127.0.0.1", tmp_path / "c.log")
    with pytest.raises(MissingExtra) as err:
        preflight({"candidate": handle})
    assert err.value.extra == "llamacpp"
    assert str(err.value) == ("the candidate server (llama.cpp, m.gguf) needs the Python package 'llama_cpp': "
                              "pip install 'servecmp[llamacpp]'")
    from servecmp.serving.gguf import quantize

    with pytest.raises(MissingExtra, match=r"building a GGUF quant needs .*servecmp\[llamacpp\]"):
        quantize(gguf, tmp_path / "out.gguf", "Q8_0", log=tmp_path / "q.log")


def test_a_missing_gguf_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"^GGUF file .*nope.gguf does not exist$"):
        gguf_server(tmp_path / "nope.gguf", port=1)


# --- a real llama.cpp --------------------------------------------------------------------------


def test_a_gguf_type_is_built_with_the_types_llama_cpp_gave_it() -> None:
    """Q8_0 (32-wide blocks) applies to every weight matrix; Q3_K_M (256-wide) only to the ffn_down
    matrices, whose rows are 1536 wide, and falls back for the 576-wide rest. Expected counts come
    from the source file's own shapes."""
    require_llamacpp()
    from servecmp.serving.gguf import ensure_gguf, fallback_count, tensor_types, type_counts
    from servecmp.serving.modelpair import find_gguf

    source = tensor_types(find_gguf())
    matrices = [t for t in source if t.type != "F32"]
    vectors = [t for t in source if t.type == "F32"]
    assert type_counts(ensure_gguf("q8_0")) == {"Q8_0": len(matrices), "F32": len(vectors)}

    q3 = ensure_gguf("q3_k")
    got = {t.name: t.type for t in tensor_types(q3)}
    k_quant = {name for name, kind in got.items() if kind.endswith("_K")}
    assert k_quant == {t.name for t in matrices if t.row % 256 == 0} == {
        t.name for t in matrices if t.name.endswith("ffn_down.weight")}
    assert len(k_quant) == 30
    # llama.cpp counts every tensor it had to give another type (the 180 576-wide block matrices).
    assert fallback_count(q3.with_suffix(".log")) == "180 of 272 tensor(s) required fallback quantization"
    assert sum(1 for t in matrices if t.row % 256 and t.name.startswith("blk.")) == 180


def test_lifecycle_ready_logs_and_clean_stop(tmp_path: Path) -> None:
    require_llamacpp()
    import psutil

    from servecmp.serving.gguf import ensure_gguf

    cfg = gguf_server(ensure_gguf("q8_0"), port=free_port(), served_name="q8")
    pair = ServerPair({"candidate": cfg}, run_dir=tmp_path, show_progress=False)
    with pair:
        h = pair.handles["candidate"]
        assert h.pid is not None and h.ready_after_s is not None
        models = httpx.get(f"{h.url}/models", timeout=10, trust_env=False).json()
        assert [m["id"] for m in models["data"]] == ["q8"]
        info = read_servers_file(tmp_path)["candidate"]
        assert info["served_name"] == "q8" and "llama_cpp.server" in info["argv"]
        pid = h.pid
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert "Uvicorn running on" in (tmp_path / "candidate.log").read_text()


def test_a_file_that_is_not_gguf_fails_in_one_line(tmp_path: Path) -> None:
    require_llamacpp()
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"this is not a gguf file" * 100)
    pair = ServerPair({"candidate": gguf_server(bad, port=free_port())}, run_dir=tmp_path / "run",
                      show_progress=False, startup_timeout_s=120)
    with pytest.raises(UserError) as err:
        pair.start()
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("candidate server exited during start-up (exit code ")
    assert "llama.cpp could not" in message


def probe(url: str, model: str, prompt: str, options: tuple[str, ...]) -> Any:
    from servecmp.capabilities import probe_capabilities
    from servecmp.endpoints import EndpointClient, EndpointSpec

    async def go() -> Any:
        async with EndpointClient(EndpointSpec(base_url=url, model=model)) as c:
            return await probe_capabilities(c, 20, prompt=prompt, continuations=options)

    return asyncio.run(go())


#: One exemplar: on the zero-shot question the model's first token is end-of-text, for which
#: llama-cpp-python returns no logprobs at all.
PROMPT = ("The following are multiple choice questions (with answers) about astronomy.\n\n"
          "Which star is closest to Earth?\nA. Sirius\nB. Vega\nC. The Sun\nD. Polaris\nAnswer: C\n\n"
          "Which planet is closest to the Sun?\nA. Venus\nB. Mercury\nC. Earth\nD. Mars\nAnswer:")


def test_probe_finds_llama_cpp_echo_disagrees_with_its_top_k(llamacpp_server: LlamaServer) -> None:
    """llama-cpp-python serves completions and chat top-k, echo and /extras/tokenize, but the logprobs
    it echoes for prompt tokens are not those its sampler reports for the same token at the same
    position (measured: " B" -10.6 by echo vs -1.9 in the top-k; "Answer" after a newline, certain
    in this format, -23.5 by echo). The probe reports the paths as disagreeing, so servecmp never
    fills a missing option from llama.cpp's echo."""
    caps = probe(llamacpp_server.url, llamacpp_server.model, PROMPT, (" A", " B", " C", " D"))
    assert (caps.completions, caps.chat_logprobs, caps.echo, caps.tokenize, caps.top_k) == (True, True, True, True,
                                                                                            20)
    assert caps.path_gap_options == 4 and caps.paths_agree is False and caps.path_gap_nats > 1

    client = httpx.Client(timeout=120, trust_env=False)
    base = f"{llamacpp_server.url}/completions"
    body = {"model": llamacpp_server.model, "max_tokens": 1, "temperature": 0}
    top = client.post(base, json={**body, "prompt": PROMPT, "logprobs": 20}).json()
    top_b = top["choices"][0]["logprobs"]["top_logprobs"][0][" B"]
    echo = client.post(base, json={**body, "prompt": PROMPT + " B", "logprobs": 1, "echo": True}).json()
    lp = echo["choices"][0]["logprobs"]
    i = lp["text_offset"].index(len(PROMPT))
    assert lp["tokens"][i] == " B"
    assert abs(lp["token_logprobs"][i] - top_b) > 1
    # The top-k path is the sampler's distribution: repeated, it gives the same numbers.
    again = client.post(base, json={**body, "prompt": PROMPT, "logprobs": 20}).json()
    assert again["choices"][0]["logprobs"]["top_logprobs"][0][" B"] == pytest.approx(top_b, abs=1e-6)


@pytest.mark.vllm
def test_vllm_baseline_against_llama_cpp_candidate(vllm_pair: VllmPair, llamacpp_server: LlamaServer,
                                                   tmp_path: Path) -> None:
    """Cross-engine: the vLLM baseline (the Q4_1 weights dequantized) against llama.cpp serving a
    Q8_0 requantization of them. Both answer through completions; the llama.cpp side's echo is
    not used (its paths disagree), and the run says so."""
    from tests.test_mcq_vllm import _servecmp

    runs = tmp_path / "runs"
    proc = _servecmp("mcq", "--baseline", vllm_pair.baseline_url, "--candidate", llamacpp_server.url,
                     "--task", "mmlu-sample", "--sample", "6", "--api", "completions", "--runs-dir", str(runs),
                     "--json")
    assert proc.returncode == 0, proc.stderr
    assert "warning: candidate's top-k and echoed prompt logprobs differ" in " ".join(proc.stderr.split())
    (run_dir,) = list(runs.iterdir())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["endpoint_apis"] == {"baseline": "completions", "candidate": "completions"}
    assert manifest["capabilities"]["candidate"]["echo"] is True
    recs = [json.loads(x) for x in (run_dir / "records.jsonl").read_text().splitlines()]
    assert Counter(r["endpoint"] for r in recs) == {"baseline": 6, "candidate": 6}
    for r in recs:
        assert len(r["topk"]) == 20 and all(math.isfinite(x) for x in r["option_logprobs"])
        if r["endpoint"] == "candidate":
            assert r["echo_options"] == 0  # never mixed with the disagreeing echo path
    summary = json.loads(proc.stdout)
    assert summary["flips"]["n"] == 6 and summary["option_kl"]["mean"] >= 0


def test_config_accepts_the_engine() -> None:
    cfg = ServerConfig.model_validate({"model": "/m.gguf", "port": 9000, "engine": "llamacpp"})
    assert cfg.engine == "llamacpp"
    with pytest.raises(ValueError, match="engine"):
        ServerConfig.model_validate({"model": "/m.gguf", "port": 9000, "engine": "tgi"})


def test_serve_candidate_gguf_takes_a_file_or_a_ladder_type(tmp_path: Path) -> None:
    from servecmp.serving.gguf import gguf_candidate

    like = ServerConfig(model="/vllm/ckpt", port=8002, cpu_cores="1", max_model_len=3000)
    gguf = tmp_path / "mine.gguf"
    gguf.write_bytes(b"GGUF")
    cfg = gguf_candidate(str(gguf), like)
    assert (cfg.engine, cfg.model, cfg.served_name, cfg.port, cfg.cpu_cores, cfg.max_model_len) == (
        "llamacpp", str(gguf), "mine", 8002, "1", 3000)
    with pytest.raises(UserError, match=r"^GGUF type 'q9_9': expected one of f16, q8_0, "):
        gguf_candidate("q9_9", like)
    require_llamacpp()
    built = gguf_candidate("Q8_0", like)
    assert (built.served_name, Path(built.model).name) == ("smollm2-135m-instruct-q8_0",
                                                           "smollm2-135m-instruct-q8_0.gguf")
