"""What this CPU can serve: x86 feature flags from /proc/cpuinfo, the serving dtype, and which
candidate schemes vLLM's CPU build has kernels for here.

Kept apart from the model build (`modelpair`) and the quantizer (`quantize`), which both need the
scheme names, so neither imports the other at module level.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from servecmp.errors import UserError

#: Candidate quantization schemes the embedded pair can be built with (see servecmp.serving.quantize).
SchemeName = Literal["w8a8", "w4a16"]
SCHEME_NAMES: tuple[SchemeName, ...] = ("w8a8", "w4a16")


def read_cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The x86 feature flags of /proc/cpuinfo (empty where there is no such file)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def has_native_bf16(flags: frozenset[str]) -> bool:
    return "avx512_bf16" in flags or "amx_bf16" in flags


def has_avx512(flags: frozenset[str]) -> bool:
    return "avx512f" in flags


def baseline_serving_dtype(flags: frozenset[str]) -> str:
    """bfloat16 where the CPU has bf16 instructions; float32 otherwise (emulated bf16 is ~3x slower)."""
    return "bfloat16" if has_native_bf16(flags) else "float32"


def scheme_support(scheme: SchemeName, flags: frozenset[str], gpu: bool = False) -> tuple[bool, str]:
    """Whether vLLM can serve a candidate of `scheme` here, and why not when it cannot."""
    if scheme == "w8a8" or gpu:
        return True, ""
    if scheme == "w4a16":
        if has_avx512(flags):
            return True, ""
        return False, "W4A16 needs vLLM's cpu_gemm_wna16 kernel: an AVX-512 CPU or a GPU (this has neither)"
    raise UserError(f"unknown candidate scheme {scheme!r} (known: {', '.join(SCHEME_NAMES)})")


def describe_cpu(flags: frozenset[str]) -> str:
    isa = "AVX-512" if has_avx512(flags) else ("AVX2" if "avx2" in flags else "no AVX2")
    bf16 = "native bf16" if has_native_bf16(flags) else "no native bf16"
    runnable = [s for s in SCHEME_NAMES if scheme_support(s, flags)[0]]
    return f"{isa}, {bf16}; candidate schemes that run here: {', '.join(runnable)}"
