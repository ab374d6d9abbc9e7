"""The local candidate ladder: scheme names, each scheme's exact output, the cache, the serving settings.

A tiny synthetic Llama (4 layers, hidden 64, float32) stands in for SmolLM2-135M; expected values
are worked out by hand or recomputed independently of servecmp.serving.quantize.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from servecmp.errors import UserError
from servecmp.serving import modelpair
from servecmp.serving.cpu import LADDER, SCHEME_HELP, Scheme, parse_scheme, scheme_support
from servecmp.serving.modelpair import EmbeddedPair, embedded_servers, ensure_embedded_pair
from servecmp.serving.quantize import (
    drop_layers,
    magnitude_prune,
    prune_count,
    quantize_state_dict,
    rtn_fake_quantize,
    scheme_spec,
    write_candidate_checkpoint,
)

ROOT = Path(__file__).resolve().parents[1]
LAYERS = 4
LINEAR_SUFFIXES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def tiny_llama(out_dir: Path, dtype: torch.dtype = torch.float32, seed: int = 0) -> None:
    """A 4-layer, hidden-64 Llama with tied embeddings (as SmolLM2), saved as one safetensors file."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        num_hidden_layers=LAYERS, hidden_size=64, intermediate_size=128, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=256, max_position_embeddings=128, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model = model.to(dtype=dtype)  # type: ignore[call-arg]  # transformers' typing of .to
    with torch.no_grad():  # norms at 1 would hide a norm that got changed by mistake
        for p in model.parameters():
            if p.ndim == 1:
                p.copy_(torch.rand_like(p) + 0.5)
    model.save_pretrained(out_dir)
    (out_dir / "tokenizer.json").write_text("{}")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "base"
    tiny_llama(out)
    return out


def build(base: Path, tmp_path: Path, name: str) -> tuple[Path, dict[str, object]]:
    out = tmp_path / name
    out.mkdir()
    return out, write_candidate_checkpoint(base, out, name)


def logits_of(model_dir: Path) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        return model(torch.tensor([[1, 5, 9, 200, 3]])).logits


def module_weight(model: torch.nn.Module, name: str) -> torch.Tensor:
    weight = model.get_submodule(name).weight
    assert isinstance(weight, torch.Tensor)
    return weight.detach()


def is_linear(name: str) -> bool:
    return name.startswith("model.layers.") and name.endswith(".weight") and any(s in name for s in LINEAR_SUFFIXES)


# --- names -------------------------------------------------------------------------------------


def test_names_parse_into_family_parameter_simulated_and_needs() -> None:
    assert parse_scheme("w8a8") == Scheme("w8a8", "w8a8")
    assert parse_scheme("W8A8-Tensor") == Scheme("w8a8-tensor", "w8a8-tensor")
    assert parse_scheme("w4a16") == Scheme("w4a16", "w4a16", needs="avx512f")
    assert parse_scheme("rtn-int4") == Scheme("rtn-int4", "rtn", 4, simulated=True)
    assert parse_scheme("drop-03") == Scheme("drop-3", "drop", 3)
    assert parse_scheme("prune-40") == Scheme("prune-40", "prune", 40)
    assert parse_scheme("drop-28", num_layers=30).parameter == 28
    assert parse_scheme("rtn-int6").label == "rtn-int6-simulated"
    assert parse_scheme("prune-40").label == "prune-40"
    assert [parse_scheme(n).name for n in LADDER] == list(LADDER)
    assert {parse_scheme(n).float_checkpoint for n in ("rtn-int5", "drop-1", "prune-1")} == {True}
    assert {parse_scheme(n).float_checkpoint for n in ("w8a8", "w8a8-tensor", "w4a16")} == {False}


@pytest.mark.parametrize(
    ("name", "layers", "message"),
    [
        ("w2a2", None, "unknown candidate scheme 'w2a2' (known: w8a8, w8a8-tensor, w4a16, rtn-intB"),
        ("drop-0", None, "drop needs at least 1 layer"),
        ("drop-30", 30, "the model has 30 layers; drop-N keeps the first and the last, so N is at most 28"),
        ("drop-29", 30, "N is at most 28"),
        ("prune-100", None, "prune needs a percentage from 1 to 99, not 100"),
        ("prune-0", None, "prune needs a percentage from 1 to 99, not 0"),
        ("rtn-int9", None, "rtn needs 2 to 8 bits, not 9"),
        ("rtn-int1", None, "rtn needs 2 to 8 bits, not 1"),
        ("drop-", None, "unknown candidate scheme 'drop-'"),
        ("prune-2.5", None, "unknown candidate scheme 'prune-2.5'"),
    ],
)
def test_bad_names_are_one_line_user_errors(name: str, layers: int | None, message: str) -> None:
    with pytest.raises(UserError) as info:
        parse_scheme(name, num_layers=layers)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_the_cli_help_text_lists_the_same_forms() -> None:
    from servecmp._cli.serve import SCHEME_HELP as CLI_HELP

    assert CLI_HELP == SCHEME_HELP


def test_the_serve_cli_module_imports_nothing_heavy() -> None:
    code = (
        "import sys, servecmp._cli.serve; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('rich', 'torch', 'pydantic') "
        "or m.startswith('servecmp.serving') or m == 'servecmp.config'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["models", "build", "--candidate-scheme", "drop-0"], "drop needs at least 1 layer"),
        (["models", "build", "--candidate-scheme", "drop-30"], "the model has 30 layers"),
        (["models", "build", "--candidate-scheme", "prune-100"], "prune needs a percentage from 1 to 99"),
        (["serve", "--candidate-scheme", "rtn-int9"], "rtn needs 2 to 8 bits, not 9"),
    ],
)
def test_bad_names_on_the_command_line_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    env = {**os.environ, "SERVECMP_CACHE_DIR": str(tmp_path / "cache"), "COLUMNS": "300"}
    proc = subprocess.run([sys.executable, "-m", "servecmp", *args], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=120)  # fmt: skip
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("servecmp: error:") and message in lines[0], proc.stderr
    assert not (tmp_path / "cache").exists()  # refused before building anything


def test_a_scheme_this_cpu_cannot_serve_is_refused_before_building_or_starting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from servecmp._cli.serve import resolve_servers
    from servecmp.config import ServeConfig

    def no_build(**kwargs: object) -> EmbeddedPair:
        raise AssertionError("built a pair it cannot serve")

    monkeypatch.setattr(modelpair, "ensure_embedded_pair", no_build)
    with pytest.raises(UserError, match=r"^candidate scheme w4a16: W4A16 needs vLLM's cpu_gemm_wna16 kernel"):
        resolve_servers(ServeConfig(), scheme="w4a16", flags=frozenset({"avx2"}))
    for name in ("w8a8-tensor", "rtn-int4", "drop-3", "prune-40"):
        assert scheme_support(name, frozenset({"avx2"})) == (True, "")


# --- w8a8-tensor -------------------------------------------------------------------------------


def test_w8a8_tensor_has_one_scale_max_abs_over_127() -> None:
    w = torch.tensor([[0.5, -1.27], [0.254, 0.0]])
    out = quantize_state_dict({"model.layers.0.mlp.down_proj.weight": w}, scheme_spec("w8a8-tensor"))
    scale = out["model.layers.0.mlp.down_proj.weight_scale"]
    assert scale.dtype == torch.float32 and scale.shape == (1,)
    assert scale.item() == pytest.approx(1.27 / 127, rel=1e-7)  # 0.01
    q = out["model.layers.0.mlp.down_proj.weight"]
    assert q.dtype == torch.int8
    assert q.tolist() == [[50, -127], [25, 0]]  # 0.5/0.01, -1.27/0.01, 0.254/0.01 = 25.4 -> 25


def test_w8a8_tensor_rounds_half_to_even_and_an_all_zero_tensor_gets_scale_one() -> None:
    w = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0], [127.0, 63.5, -127.0]])  # scale 127/127 = 1
    out = quantize_state_dict({"model.layers.0.mlp.up_proj.weight": w}, scheme_spec("w8a8-tensor"))
    assert out["model.layers.0.mlp.up_proj.weight"].tolist() == [[1, -2, 0], [0, 0, 0], [127, 64, -127]]
    zero = quantize_state_dict({"model.layers.0.mlp.up_proj.weight": torch.zeros(2, 2)}, scheme_spec("w8a8-tensor"))
    assert zero["model.layers.0.mlp.up_proj.weight_scale"].tolist() == [1.0]


def test_w8a8_tensor_checkpoint_loads_as_int_times_scale(base: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM
    from transformers.utils.quantization_config import CompressedTensorsConfig

    out, info = build(base, tmp_path, "w8a8-tensor")
    cfg = json.loads((out / "config.json").read_text())["quantization_config"]["config_groups"]["group_0"]
    assert cfg["weights"]["strategy"] == "tensor" and cfg["input_activations"]["strategy"] == "token"
    assert cfg["input_activations"]["dynamic"] is True
    assert info["simulated"] is False and info["format"] == "int-quantized"
    tensors = load_file(str(out / "model.safetensors"))
    original = load_file(str(base / "model.safetensors"))
    name = "model.layers.1.self_attn.o_proj"
    scale = tensors[f"{name}.weight_scale"]
    assert scale.shape == (1,)
    assert scale.item() == pytest.approx(original[f"{name}.weight"].abs().max().item() / 127, rel=1e-7)
    # The library's own decompression (run_compressed=False) reads int8 * the one scale back.
    model = AutoModelForCausalLM.from_pretrained(out, quantization_config=CompressedTensorsConfig(run_compressed=False))
    loaded = module_weight(model, name)
    assert torch.allclose(loaded, tensors[f"{name}.weight"].to(torch.float32) * scale, rtol=0, atol=1e-7)
    assert torch.isfinite(logits_of(out)).all()


# --- rtn ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [4, 5, 6])
def test_rtn_values_lie_on_the_grid_of_each_group(bits: int) -> None:
    w = torch.randn(8, 128, generator=torch.Generator().manual_seed(bits))
    w[3, :64] = 0.0  # an all-zero group stays zero
    deq = rtn_fake_quantize(w, bits)
    assert deq.dtype == w.dtype and deq.shape == w.shape
    qmax = 2 ** (bits - 1) - 1
    for row in range(8):
        for g in range(2):
            cols = slice(64 * g, 64 * (g + 1))
            group, fq = w[row, cols], deq[row, cols]
            scale = group.abs().max().item() / qmax
            if scale == 0:
                assert (fq == 0).all()
                continue
            assert fq.unique().numel() <= 2**bits
            k = fq / scale
            assert torch.allclose(k, k.round(), atol=1e-4)  # an integer multiple of the scale
            assert k.round().abs().max().item() == qmax  # the largest weight lands on ±qmax
            assert ((fq - group).abs() <= scale / 2 + 1e-6).all()


def test_rtn_int4_is_exactly_what_the_w4a16_checkpoint_dequantizes_to(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM
    from transformers.utils.quantization_config import CompressedTensorsConfig

    src = tmp_path / "bf16"
    tiny_llama(src, torch.bfloat16, seed=3)
    rtn, info = build(src, tmp_path, "rtn-int4")
    w4, _ = build(src, tmp_path, "w4a16")
    assert info["simulated"] is True and info["format"] == "float" and info["group_size"] == 64
    assert "quantization_config" not in json.loads((rtn / "config.json").read_text())
    fake = load_file(str(rtn / "model.safetensors"))
    original = load_file(str(src / "model.safetensors"))
    real = AutoModelForCausalLM.from_pretrained(
        w4, dtype=torch.bfloat16, quantization_config=CompressedTensorsConfig(run_compressed=False)
    )
    for name, tensor in original.items():
        if is_linear(name):
            assert fake[name].dtype == torch.bfloat16
            assert torch.equal(fake[name], module_weight(real, name[: -len(".weight")])), name
        else:
            assert torch.equal(fake[name], tensor), name  # embeddings and norms untouched
    assert torch.isfinite(logits_of(rtn)).all()


# --- drop --------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2])
def test_drop_keeps_the_last_layer_and_renumbers(base: Path, tmp_path: Path, n: int) -> None:
    out, info = build(base, tmp_path, f"drop-{n}")
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == LAYERS - n
    assert info["dropped_layers"] == list(range(LAYERS - 1 - n, LAYERS - 1))
    original = load_file(str(base / "model.safetensors"))
    dropped = load_file(str(out / "model.safetensors"))
    layer_ids = {int(k.split(".")[2]) for k in dropped if k.startswith("model.layers.")}
    assert layer_ids == set(range(LAYERS - n))
    per_layer = {k.split(".", 3)[3] for k in original if k.startswith("model.layers.0.")}
    new_last = LAYERS - n - 1
    for suffix in per_layer:
        last = original[f"model.layers.{LAYERS - 1}.{suffix}"]
        assert torch.equal(dropped[f"model.layers.{new_last}.{suffix}"], last)
        for i in range(new_last):
            assert torch.equal(dropped[f"model.layers.{i}.{suffix}"], original[f"model.layers.{i}.{suffix}"])
    for name in ("model.embed_tokens.weight", "model.norm.weight"):
        assert torch.equal(dropped[name], original[name])
    assert len(dropped) == len(original) - n * len(per_layer)
    assert torch.isfinite(logits_of(out)).all()


def test_drop_refuses_to_remove_the_first_or_last_layer_and_shrinks_layer_types() -> None:
    state = {f"model.layers.{i}.mlp.up_proj.weight": torch.full((1, 1), float(i)) for i in range(4)}
    config = {"num_hidden_layers": 4, "layer_types": ["a", "b", "c", "d"]}
    new_state, new_config, dropped = drop_layers(state, config, 2)
    assert dropped == [1, 2] and new_config["layer_types"] == ["a", "d"]
    assert {k: v.item() for k, v in new_state.items()} == {
        "model.layers.0.mlp.up_proj.weight": 0.0, "model.layers.1.mlp.up_proj.weight": 3.0,
    }  # fmt: skip
    assert config["num_hidden_layers"] == 4  # the input is not modified
    with pytest.raises(ValueError, match="N must be from 1 to 2"):
        drop_layers(state, config, 3)


# --- prune -------------------------------------------------------------------------------------


def test_prune_count_rounds_half_up() -> None:
    assert prune_count(10, 25) == 3  # 2.5 -> 3
    assert prune_count(10, 24) == 2  # 2.4 -> 2
    assert prune_count(576 * 1536, 20) == 176947  # 176947.2


def test_prune_ties_go_to_the_earlier_entry_in_row_major_order() -> None:
    w = torch.tensor([[1.0, -1.0, 2.0], [1.0, 0.5, -3.0]])
    assert magnitude_prune(w, 50).tolist() == [[0.0, 0.0, 2.0], [1.0, 0.0, -3.0]]  # 0.5, then two of the 1s
    assert magnitude_prune(w, 67).tolist() == [[0.0, 0.0, 2.0], [0.0, 0.0, -3.0]]  # round(4.02) = 4


@pytest.mark.parametrize("percent", [20, 40])
def test_prune_zeroes_exactly_the_smallest_weights_of_each_linear(base: Path, tmp_path: Path, percent: int) -> None:
    out, info = build(base, tmp_path, f"prune-{percent}")
    original = load_file(str(base / "model.safetensors"))
    pruned = load_file(str(out / "model.safetensors"))
    assert pruned.keys() == original.keys()
    total = 0
    for name, w in original.items():
        p = pruned[name]
        if not is_linear(name):
            assert torch.equal(p, w), name  # embeddings (= tied LM head) and norms kept
            continue
        k = round(percent / 100 * w.numel())
        total += k
        assert int((w == 0).sum()) == 0 and int((p == 0).sum()) == k, name
        kept = p != 0
        assert torch.equal(p[kept], w[kept])  # survivors unchanged
        assert w[~kept].abs().max() <= w[kept].abs().min()  # the zeroed ones are the smallest
    assert info["weights_zeroed"] == total and info["linear_weights_changed"] == LAYERS * 7
    assert torch.isfinite(logits_of(out)).all()


# --- the cache and the servers -------------------------------------------------------------------


@pytest.fixture
def tiny_embedded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[int]:
    """Replace the GGUF conversion by the tiny Llama; returns a list counting conversions."""
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    calls: list[int] = []

    def convert(_: Path, out_dir: Path) -> None:
        calls.append(1)
        tiny_llama(out_dir)

    monkeypatch.setattr(modelpair, "convert_gguf", convert)
    monkeypatch.setattr(modelpair, "find_gguf", lambda: gguf)
    return calls


def test_every_rung_is_built_once_from_one_shared_baseline(tmp_path: Path, tiny_embedded: list[int]) -> None:
    cache = tmp_path / "cache"
    names = ("w8a8-tensor", "rtn-int4", "drop-1", "prune-20")
    pairs = [ensure_embedded_pair(cache, candidate_scheme=n, log=lambda m: None) for n in names]
    assert len(tiny_embedded) == 1
    assert {p.baseline_dir for p in pairs} == {cache / "models" / "recipe-1" / "smollm2-135m-instruct-bf16"}
    assert [p.candidate_dir.name for p in pairs] == [f"smollm2-135m-instruct-{n}" for n in names]
    assert [p.candidate_name for p in pairs] == [
        "smollm2-135m-instruct-w8a8-tensor", "smollm2-135m-instruct-rtn-int4-simulated",
        "smollm2-135m-instruct-drop-1", "smollm2-135m-instruct-prune-20",
    ]  # fmt: skip
    record = json.loads((pairs[1].candidate_dir / "servecmp-build.json").read_text())
    assert record["simulated"] is True and record["scheme"] == "rtn-int4" and record["recipe"] == 1
    assert "simulated" in record["what"]
    mtimes = [(p.candidate_dir / "model.safetensors").stat().st_mtime_ns for p in pairs]
    again = [ensure_embedded_pair(cache, candidate_scheme=n, log=lambda m: None) for n in names]
    assert again == pairs and len(tiny_embedded) == 1
    assert [(p.candidate_dir / "model.safetensors").stat().st_mtime_ns for p in pairs] == mtimes
    # drop-N is bounded by the built baseline's own layer count (4 here), before building anything
    with pytest.raises(UserError, match="the model has 4 layers"):
        ensure_embedded_pair(cache, candidate_scheme="drop-3", log=lambda m: None)
    assert not (cache / "models" / "recipe-1" / "smollm2-135m-instruct-drop-3").exists()


@pytest.mark.parametrize("flags", [frozenset({"avx2"}), frozenset({"avx512f", "avx512_bf16"})])
def test_float_candidates_are_served_in_the_baseline_dtype(tmp_path: Path, flags: frozenset[str]) -> None:
    for name in ("rtn-int4", "drop-3", "prune-40", "w8a8-tensor"):
        pair = EmbeddedPair(tmp_path / "b", tmp_path / name, name)
        servers = embedded_servers(pair, flags=flags, cores=[0, 1])
        b, c = servers["baseline"], servers["candidate"]
        assert b.dtype == c.dtype == ("bfloat16" if "avx512_bf16" in flags else "float32")
        assert c.quantization is None  # vLLM reads a quantized one's config; float ones have none
        assert c.served_name == pair.candidate_name
    served = embedded_servers(EmbeddedPair(tmp_path / "b", tmp_path / "c", "rtn-int4"), flags=flags)
    assert served["candidate"].served_name == "smollm2-135m-instruct-rtn-int4-simulated"
