"""Round-to-nearest W8A8 (per channel and per tensor) / W4A16 quantization into compressed-tensors
format (servecmp.serving.quantize).

Expected integers are worked out by hand; the config is checked against what the library's own
ModelCompressor writes and against how vLLM's compressed-tensors loader reads it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from servecmp.serving.quantize import (
    is_quantized_weight,
    max_abs_scales,
    quantization_config,
    quantization_config_json,
    quantize_state_dict,
    scheme_spec,
    write_quantized_checkpoint,
)

W = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0], [127.0, 63.5, -127.0]])


def test_per_channel_scales_are_max_abs_over_127_and_zero_rows_get_one() -> None:
    scales = max_abs_scales(W, 127)
    assert scales.shape == (3, 1)
    assert scales.dtype == torch.float32
    assert scales[:, 0].tolist() == pytest.approx([2 / 127, 1.0, 1.0], rel=1e-7)


def test_group_scales_cover_each_group_of_input_columns() -> None:
    w = torch.tensor([[1.0, -4.0, 0.5, 2.0], [0.0, 0.0, -7.0, 3.5]])
    scales = max_abs_scales(w, 7, group_size=2)
    assert scales.shape == (2, 2)
    assert scales.flatten().tolist() == pytest.approx([4 / 7, 2 / 7, 1.0, 1.0])  # [-7, 3.5] -> 7/7
    with pytest.raises(ValueError, match="group size 3 does not divide the input size 4"):
        max_abs_scales(w, 7, group_size=3)


def test_only_decoder_linear_weights_are_quantized() -> None:
    two_d, one_d = torch.zeros(2, 2), torch.zeros(2)
    assert is_quantized_weight("model.layers.0.self_attn.q_proj.weight", two_d)
    assert is_quantized_weight("model.layers.29.mlp.down_proj.weight", two_d)
    assert not is_quantized_weight("model.layers.0.input_layernorm.weight", one_d)
    assert not is_quantized_weight("model.embed_tokens.weight", two_d)
    assert not is_quantized_weight("lm_head.weight", two_d)
    assert not is_quantized_weight("model.norm.weight", one_d)


def test_w8a8_state_dict_has_hand_computed_int8_weights_and_float32_scales() -> None:
    norm = torch.ones(3, dtype=torch.bfloat16)
    embed = torch.arange(6, dtype=torch.bfloat16).reshape(2, 3)
    state = {
        "model.layers.0.mlp.up_proj.weight": W.to(torch.bfloat16),
        "model.layers.0.post_attention_layernorm.weight": norm,
        "model.embed_tokens.weight": embed,
    }
    out = quantize_state_dict(state, scheme_spec("w8a8"))
    assert sorted(out) == [
        "model.embed_tokens.weight",
        "model.layers.0.mlp.up_proj.weight",
        "model.layers.0.mlp.up_proj.weight_scale",
        "model.layers.0.post_attention_layernorm.weight",
    ]
    q = out["model.layers.0.mlp.up_proj.weight"]
    assert q.dtype == torch.int8
    # 1/(2/127)=63.5 -> 64 (half to even), -2 -> -127, 0.5 -> 31.75 -> 32; 63.5/1 -> 64
    assert q.tolist() == [[64, -127, 32], [0, 0, 0], [127, 64, -127]]
    scale = out["model.layers.0.mlp.up_proj.weight_scale"]
    assert scale.dtype == torch.float32 and scale.shape == (3, 1)
    assert torch.equal(out["model.embed_tokens.weight"], embed)
    assert torch.equal(out["model.layers.0.post_attention_layernorm.weight"], norm)


def test_w8a8_reconstruction_error_is_at_most_half_a_step() -> None:
    w = torch.randn(64, 96, generator=torch.Generator().manual_seed(0))
    out = quantize_state_dict({"model.layers.3.self_attn.o_proj.weight": w}, scheme_spec("w8a8"))
    q = out["model.layers.3.self_attn.o_proj.weight"].to(torch.float32)
    s = out["model.layers.3.self_attn.o_proj.weight_scale"]
    assert q.abs().max().item() == 127
    assert ((q * s - w).abs() <= s / 2 + 1e-6).all()


def test_w4a16_packs_int4_groups_with_scales_in_the_checkpoint_dtype() -> None:
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    w = torch.randn(2, 128, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    out = quantize_state_dict({"model.layers.0.mlp.gate_proj.weight": w}, scheme_spec("w4a16"))
    assert sorted(k.rsplit(".", 1)[1] for k in out) == ["weight_packed", "weight_scale", "weight_shape"]
    packed = out["model.layers.0.mlp.gate_proj.weight_packed"]
    scale = out["model.layers.0.mlp.gate_proj.weight_scale"]
    assert packed.dtype == torch.int32 and packed.shape == (2, 16)  # 8 nibbles per int32
    assert scale.dtype == torch.bfloat16 and scale.shape == (2, 2)
    assert out["model.layers.0.mlp.gate_proj.weight_shape"].tolist() == [2, 128]
    # Independent computation: round(w / s) clamped to [-8, 7] with the bf16-rounded group scale.
    s = scale.to(torch.float32).repeat_interleave(64, dim=1)
    expected = torch.clamp(torch.round(w.to(torch.float32) / s), -8, 7).to(torch.int8)
    assert torch.equal(unpack_from_int32(packed, 4, torch.Size([2, 128])), expected)


def test_quantization_config_is_w8a8_int_quantized() -> None:
    import compressed_tensors

    cfg = quantization_config_json(quantization_config(scheme_spec("w8a8")))
    assert cfg["quant_method"] == "compressed-tensors"
    assert cfg["format"] == "int-quantized"
    assert cfg["quantization_status"] == "compressed"
    assert cfg["ignore"] == ["lm_head"]
    assert cfg["version"] == compressed_tensors.__version__
    group = cfg["config_groups"]["group_0"]
    assert group["targets"] == ["Linear"]
    w, a = group["weights"], group["input_activations"]
    assert (w["num_bits"], w["type"], w["strategy"], w["symmetric"], w["dynamic"]) == (8, "int", "channel", True, False)
    assert (a["num_bits"], a["type"], a["strategy"], a["symmetric"], a["dynamic"]) == (8, "int", "token", True, True)
    json.dumps(cfg)  # plain JSON, no torch dtypes left in it


def test_config_matches_what_the_library_model_compressor_writes(tmp_path: Path) -> None:
    import transformers  # noqa: F401 - compressed_tensors' ModelCompressor needs it imported first
    from compressed_tensors.compressors import ModelCompressor

    qconfig = quantization_config(scheme_spec("w8a8"))
    (tmp_path / "config.json").write_text("{}")
    ModelCompressor(quantization_config=qconfig).update_config(str(tmp_path))
    theirs = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert quantization_config_json(qconfig) == theirs


def test_vllm_reads_the_config_as_its_int8_w8a8_and_wna16_schemes() -> None:
    pytest.importorskip("vllm")
    from vllm.model_executor.layers.quantization.compressed_tensors.compressed_tensors import (
        CompressedTensorsConfig,
    )
    from vllm.model_executor.layers.quantization.compressed_tensors.schemes import (
        CompressedTensorsW8A8Int8,
        CompressedTensorsWNA16,
    )

    cases: tuple[tuple[str, type], ...] = (
        ("w8a8", CompressedTensorsW8A8Int8),
        ("w8a8-tensor", CompressedTensorsW8A8Int8),
        ("w4a16", CompressedTensorsWNA16),
    )
    for name, expected in cases:
        spec = scheme_spec(name)
        ct = CompressedTensorsConfig.from_config(quantization_config_json(quantization_config(spec)))
        args = ct.target_scheme_map["Linear"]
        scheme = ct._get_scheme_from_parts(args["weights"], args.get("input_activations"), layer_name="x")
        assert isinstance(scheme, expected), name
        assert ct.ignore == ["lm_head"]
        if name.startswith("w8a8"):  # dynamic per-token activations; weights per channel or per tensor
            assert isinstance(scheme, CompressedTensorsW8A8Int8)
            assert not scheme.is_static_input_scheme
            assert scheme.strategy == ("tensor" if name == "w8a8-tensor" else "channel")


def test_write_quantized_checkpoint_copies_sidecars_and_adds_the_config(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    save_file(
        {"model.layers.0.self_attn.q_proj.weight": W, "model.norm.weight": torch.ones(3)},
        str(src / "model.safetensors"),
    )
    (src / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 3}))
    (src / "tokenizer.json").write_text("{}")
    (src / "chat_template.jinja").write_text("{{ messages }}")
    write_quantized_checkpoint(src, dst, "w8a8")
    config = json.loads((dst / "config.json").read_text())
    assert config["model_type"] == "llama" and config["hidden_size"] == 3
    assert config["quantization_config"]["format"] == "int-quantized"
    assert (dst / "tokenizer.json").read_text() == "{}"
    assert (dst / "chat_template.jinja").read_text() == "{{ messages }}"
    tensors = load_file(str(dst / "model.safetensors"))
    assert tensors["model.layers.0.self_attn.q_proj.weight"].tolist() == [[64, -127, 32], [0, 0, 0], [127, 64, -127]]
    assert torch.equal(tensors["model.norm.weight"], torch.ones(3))
