"""What this CPU can serve: x86 feature flags from /proc/cpuinfo, the serving dtype, and the candidate
schemes (parsed from names like `w8a8`, `rtn-int4`, `drop-3`, `prune-40`) with what each needs.

Kept apart from the model build (`modelpair`) and the writers (`quantize`), which both need the
scheme names, so neither imports the other at module level. Standard library only: the CLI parses
scheme names before anything heavy is imported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from servecmp.errors import UserError

#: How a candidate is made from the baseline:
#: - w8a8: int8 weights, one scale per output channel; int8 activations, dynamic per token.
#: - w8a8-tensor: int8 weights, ONE scale per weight tensor; int8 activations, dynamic per token.
#: - w4a16: int4 weights, one scale per group of 64 input columns; float activations.
#: - rtn: weight-only round-to-nearest to N bits (groups of 64), dequantized again and stored as a
#:   float checkpoint: a *simulated* quantization that any CPU serves.
#: - drop: the N decoder layers just before the last one removed.
#: - prune: the P% smallest-magnitude weights of each decoder Linear layer set to zero (dense storage).
Family = Literal["w8a8", "w8a8-tensor", "w4a16", "rtn", "drop", "prune"]

#: The name forms, for help texts and error messages.
SCHEME_FORMS: tuple[str, ...] = ("w8a8", "w8a8-tensor", "w4a16", "rtn-intB", "drop-N", "prune-P")
SCHEME_HELP = "w8a8, w8a8-tensor, w4a16, rtn-intB (B 2-8, simulated), drop-N (layers), prune-P (percent 1-99)"
#: A ladder of candidates from mild to severe, for demos and the paper's comparison.
LADDER: tuple[str, ...] = (
    "w8a8", "w8a8-tensor", "w4a16", "rtn-int6", "rtn-int5", "rtn-int4", "drop-1", "drop-3", "prune-20", "prune-40",
)  # fmt: skip

RTN_BITS = range(2, 9)
PRUNE_PERCENT = range(1, 100)

#: Families whose checkpoint is a plain float one, served in the baseline's dtype.
FLOAT_FAMILIES: frozenset[str] = frozenset({"rtn", "drop", "prune"})

_PARAMETRISED = re.compile(r"^(?:rtn-int(?P<bits>\d+)|drop-(?P<drop>\d+)|prune-(?P<prune>\d+))$")


@dataclass(frozen=True)
class Scheme:
    """One candidate scheme, parsed from its name (see `parse_scheme`)."""

    name: str
    family: Family
    #: Bits (rtn), layers removed (drop) or percent pruned (prune); None for the fixed schemes.
    parameter: int | None = None
    #: True where the checkpoint only imitates the compression's numbers (rtn: fake quantization).
    simulated: bool = False
    #: The CPU feature vLLM's CPU build needs for it ("avx512f"), or None: any x86 CPU vLLM runs on.
    needs: str | None = None

    @property
    def float_checkpoint(self) -> bool:
        """A plain float checkpoint (no quantization_config): vLLM serves it like the baseline."""
        return self.family in FLOAT_FAMILIES

    @property
    def label(self) -> str:
        """The name with "-simulated" appended where it is simulated: served-model and report label."""
        return f"{self.name}-simulated" if self.simulated else self.name

    def describe(self) -> str:
        p = self.parameter
        match self.family:
            case "w8a8":
                return "int8 weights per output channel, int8 activations dynamic per token"
            case "w8a8-tensor":
                return "int8 weights with one scale per tensor, int8 activations dynamic per token"
            case "w4a16":
                return "int4 weights per group of 64 input columns, float activations"
            case "rtn":
                return f"simulated: int{p} round-to-nearest weights (groups of 64), dequantized, float checkpoint"
            case "drop":
                return f"{p} decoder layer{'s' if p != 1 else ''} before the last removed"
            case "prune":
                return f"{p}% smallest-magnitude weights of each decoder Linear layer zeroed (dense storage)"
        raise AssertionError(self.family)  # pragma: no cover


def _unknown(name: str, why: str = "") -> UserError:
    detail = f": {why}" if why else ""
    return UserError(f"unknown candidate scheme {name!r}{detail} (known: {SCHEME_HELP})")


def parse_scheme(name: str | Scheme, num_layers: int | None = None) -> Scheme:
    """The scheme a name stands for; a UserError (one line) for unknown or out-of-range names.

    `num_layers`, when known, bounds `drop-N`: at least the first and the last layer must stay,
    so N <= num_layers - 2.
    """
    if isinstance(name, Scheme):
        scheme = name
    else:
        key = name.strip().lower()
        if key == "w8a8":
            scheme = Scheme("w8a8", "w8a8")
        elif key == "w8a8-tensor":
            scheme = Scheme("w8a8-tensor", "w8a8-tensor")
        elif key == "w4a16":
            scheme = Scheme(key, "w4a16", needs="avx512f")
        else:
            m = _PARAMETRISED.match(key)
            if m is None:
                raise _unknown(name)
            if m["bits"] is not None:
                bits = int(m["bits"])
                if bits not in RTN_BITS:
                    raise _unknown(name, f"rtn needs 2 to 8 bits, not {bits}")
                scheme = Scheme(f"rtn-int{bits}", "rtn", bits, simulated=True)
            elif m["drop"] is not None:
                layers = int(m["drop"])
                if layers < 1:
                    raise _unknown(name, "drop needs at least 1 layer")
                scheme = Scheme(f"drop-{layers}", "drop", layers)
            else:
                percent = int(m["prune"])
                if percent not in PRUNE_PERCENT:
                    raise _unknown(name, f"prune needs a percentage from 1 to 99, not {percent}")
                scheme = Scheme(f"prune-{percent}", "prune", percent)
    too_many = scheme.parameter is not None and num_layers is not None and scheme.parameter > num_layers - 2
    if scheme.family == "drop" and too_many:
        raise UserError(
            f"candidate scheme {scheme.name!r}: the model has {num_layers} layers; drop-N keeps the first "
            f"and the last, so N is at most {num_layers - 2 if num_layers else 0}"
        )
    return scheme


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
    """bfloat16 where the CPU has bf16 instructions; float32 otherwise (emulated bf16 is ~3x slower).

    Every candidate is served in this dtype too (for the quantized ones it is the activations'
    dtype), so a comparison isolates the compression.
    """
    return "bfloat16" if has_native_bf16(flags) else "float32"


def scheme_support(scheme: str | Scheme, flags: frozenset[str], gpu: bool = False) -> tuple[bool, str]:
    """Whether vLLM can serve a candidate of `scheme` here, and why not when it cannot."""
    s = parse_scheme(scheme)
    if s.needs is None or gpu or s.needs in flags:
        return True, ""
    if s.family == "w4a16":
        return False, "W4A16 needs vLLM's cpu_gemm_wna16 kernel: an AVX-512 CPU or a GPU (this has neither)"
    return False, f"{s.name} needs the CPU feature {s.needs} or a GPU (this has neither)"  # pragma: no cover


def describe_cpu(flags: frozenset[str]) -> str:
    isa = "AVX-512" if has_avx512(flags) else ("AVX2" if "avx2" in flags else "no AVX2")
    bf16 = "native bf16" if has_native_bf16(flags) else "no native bf16"
    refused = [s for s in ("w4a16",) if not scheme_support(s, flags)[0]]
    runs = "every candidate scheme runs here" if not refused else f"not here: {', '.join(refused)}"
    return f"{isa}, {bf16} (serving dtype {baseline_serving_dtype(flags)}); {runs}"
