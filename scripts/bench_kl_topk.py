"""The top-k next-token KL estimators against exact full-vocabulary KL, on a real served pair.

    python scripts/bench_kl_topk.py --serve [--n 60] [--cache /tmp/kl_full.npz]
    python scripts/bench_kl_topk.py --baseline URL --candidate URL [--n 60] [--cache FILE]
    python scripts/bench_kl_topk.py --cache FILE              # analyse a cached collection only

1. Collect (skipped when --cache names an existing file): for N items of the vendored MMLU sample
   (5-shot, seeded sample), ask each endpoint once for the WHOLE next-token distribution at the
   answer position: ``max_tokens=1, logprobs=V`` with ``return_tokens_as_token_ids`` (so two token
   ids that decode to the same string stay apart). The servers must allow it: ``--max-logprobs V``
   (V = 49152 for the embedded SmolLM2 pair). ``--serve`` starts the embedded pair (baseline and
   W8A8 candidate, from the user cache) itself on ports 8011/8012 with that limit, and stops it when
   the collection is done. The distributions are saved to --cache (npz) so the analysis can be
   rerun without a server.
2. Analyse: exact KL(b‖c), KL(c‖b) and JS per item from the full rows; then, truncating both rows
   to their top k (as an endpoint with ``logprobs=k`` would return them), the guaranteed lower
   bound (`topk_kl`) and the tighter estimate (`topk_kl_tight`). Prints the per-item table at
   --k-items (default 20: servecmp's default --top-k), the ratio of the mean estimate to the exact
   mean with the per-item errors, and the table over k = 5, 10, 20, 50, 100.

Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

VOCAB = 49152
KS = (5, 10, 20, 50, 100)
SERVE_PORTS = {"baseline": 8011, "candidate": 8012}


def sample_items(n: int, seed: int) -> list[Any]:
    from servecmp.tasks.mmlu import load_sample

    items = load_sample(task="mmlu")
    rng = np.random.default_rng(seed)
    idx = sorted(rng.choice(len(items), size=min(n, len(items)), replace=False).tolist())
    return [items[i] for i in idx]


def full_row(client: httpx.Client, url: str, model: str, prompt: str, vocab: int) -> npt.NDArray[np.float64]:
    """The endpoint's whole next-token distribution after `prompt` as a dense logprob row by token id."""
    body = {"model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0.0, "logprobs": vocab,
            "return_tokens_as_token_ids": True}
    r = client.post(f"{url}/completions", json=body)
    r.raise_for_status()
    top = r.json()["choices"][0]["logprobs"]["top_logprobs"][0]
    row = np.full(vocab, -np.inf)
    for key, lp in top.items():
        row[int(key.rsplit(":", 1)[1])] = lp
    return row


def served_model(client: httpx.Client, url: str) -> str:
    return str(client.get(f"{url}/models").json()["data"][0]["id"])


def collect(urls: dict[str, str], n: int, seed: int, vocab: int) -> dict[str, Any]:
    items = sample_items(n, seed)
    rows: dict[str, list[npt.NDArray[np.float64]]] = {"baseline": [], "candidate": []}
    t0 = time.monotonic()
    with httpx.Client(timeout=600.0) as client:
        models = {role: served_model(client, url) for role, url in urls.items()}
        for i, item in enumerate(items):
            for role, url in urls.items():
                rows[role].append(full_row(client, url, models[role], item.prompt, vocab))
            print(f"  item {i + 1}/{len(items)} {item.item_id} ({time.monotonic() - t0:.0f} s)", file=sys.stderr)
    return {"base": np.array(rows["baseline"]), "cand": np.array(rows["candidate"]),
            "item_ids": np.array([it.item_id for it in items]),
            "models": np.array([models["baseline"], models["candidate"]])}


def serve_and_collect(n: int, seed: int, vocab: int) -> dict[str, Any]:
    """Start the embedded pair with max_logprobs = vocab on SERVE_PORTS, collect, stop it."""
    from servecmp.serving.modelpair import embedded_servers, ensure_embedded_pair
    from servecmp.serving.servers import ServerPair

    pair = ensure_embedded_pair(candidate_scheme="w8a8")
    cfgs = embedded_servers(pair, baseline_port=SERVE_PORTS["baseline"], candidate_port=SERVE_PORTS["candidate"])
    cfgs = {role: c.model_copy(update={"max_logprobs": vocab}) for role, c in cfgs.items()}
    with tempfile.TemporaryDirectory(prefix="bench-kl-") as d, ServerPair(cfgs, run_dir=Path(d)) as sp:
        return collect({role: h.url for role, h in sp.handles.items()}, n, seed, vocab)


def topk_lists(rows: npt.NDArray[np.float64], k: int) -> list[dict[str, float]]:
    """Each row's k most likely tokens, as an endpoint with logprobs=k returns them."""
    idx = np.argsort(-rows, axis=1, kind="stable")[:, :k]
    return [{str(j): float(r[j]) for j in ix} for r, ix in zip(rows, idx, strict=True)]


def analyse(data: dict[str, Any], k_items: int) -> None:
    from servecmp.metrics.kl import exact_divergences, topk_kl, topk_kl_tight

    base, cand = np.asarray(data["base"]), np.asarray(data["cand"])
    ids = [str(x) for x in data["item_ids"]]
    n = len(ids)
    mass_b = np.exp(base).sum(axis=1)
    mass_c = np.exp(cand).sum(axis=1)
    print(f"items: {n}; vocabulary: {base.shape[1]}; models: {', '.join(map(str, data['models']))}")
    print(f"total probability mass returned per row: baseline {mass_b.min():.6f}-{mass_b.max():.6f}, "
          f"candidate {mass_c.min():.6f}-{mass_c.max():.6f} (full distributions)")
    ex = exact_divergences(base, cand)
    print(f"exact next-token divergences, mean over items (nats): KL(b‖c) {ex.kl_bc.mean():.6f}, "
          f"KL(c‖b) {ex.kl_cb.mean():.6f}, JS {ex.js.mean():.6f}")

    results: dict[int, dict[str, Any]] = {}
    for k in sorted({*KS, k_items}):
        pb, pc = topk_lists(base, k), topk_lists(cand, k)
        lb = topk_kl(pb, pc)
        tt = topk_kl_tight(pb, pc)
        results[k] = {"lb": lb, "tight": tt}

    r = results[k_items]
    lb, tt = r["lb"], r["tight"]
    print(f"\nper item at k = {k_items}, KL(b‖c) in nats (err = tight − exact; rel = tight / exact; "
          "tail = the tight estimate's tail term):")
    print(f"{'item':<32} {'exact':>9} {'bound':>9} {'tight':>9} {'err':>10} {'rel':>6} {'tail':>9} "
          f"{'p_R':>8} {'shared':>6}")
    for i in range(n):
        rel = tt.kl_bc[i] / ex.kl_bc[i] if ex.kl_bc[i] > 0 else float("nan")
        print(f"{ids[i]:<32} {ex.kl_bc[i]:9.6f} {lb.kl_hat[i]:9.6f} {tt.kl_bc[i]:9.6f} "
              f"{tt.kl_bc[i] - ex.kl_bc[i]:+10.2e} {rel:6.3f} {tt.tail[i]:9.2e} {lb.p_rest[i]:8.5f} "
              f"{lb.n_shared[i]:6d}")

    print("\nKL(b‖c) estimates against exact, by k (mean over items; ratio = mean estimate / exact mean;"
          " per-item |error| in nats):")
    print("(bound: the guaranteed lower bound; cells: the tight estimate without its tail term; tight: with it;"
          " rel err = |estimate / exact − 1| of the tight estimate per item)")
    head = (f"{'k':>4} {'exact mean':>10} {'bound':>7} {'cells':>7} {'tight':>7} {'median|err|':>11} "
            f"{'max|err|':>9} {'median rel':>10} {'max rel':>8} {'p_R mean':>9} {'p_R max':>8}")
    print(head)
    for k in KS:
        lb, tt = results[k]["lb"], results[k]["tight"]
        err = np.abs(tt.kl_bc - ex.kl_bc)
        pos = ex.kl_bc > 0
        rel = np.abs(tt.kl_bc[pos] / ex.kl_bc[pos] - 1)
        m = ex.kl_bc.mean()
        print(f"{k:>4} {m:10.6f} {lb.kl_hat.mean() / m:7.3f} {(tt.kl_bc - tt.tail).mean() / m:7.3f} "
              f"{tt.kl_bc.mean() / m:7.3f} {np.median(err):11.2e} {err.max():9.2e} {np.median(rel):10.4f} "
              f"{rel.max():8.4f} {lb.p_rest.mean():9.5f} {lb.p_rest.max():8.5f}")
    # llama.cpp's block from the full distributions (exact KL, exact Δp of the baseline's top token)
    # beside the one the MCQ report computes from the top-k lists.
    from servecmp.metrics.kl_report import kl_report, llama_cpp_text, top_token_probs

    top_b = base.argmax(axis=1)
    rows = np.arange(n)
    exact_block = kl_report(ex.kl_bc, np.exp(base[rows, top_b]), np.exp(cand[rows, top_b]),
                            cand.argmax(axis=1) == top_b)
    pb, pc = topk_lists(base, k_items), topk_lists(cand, k_items)
    tp = top_token_probs(pb, pc)
    topk_block = kl_report(results[k_items]["tight"].kl_bc, tp.p_base, tp.p_cand, tp.same_top)
    print(f"\nllama.cpp's block: exact (full distributions) | from the top-{k_items} lists as the MCQ report "
          f"computes it ({int(tp.imputed.sum())} items with an imputed Δp)")
    for left, right in zip(llama_cpp_text(exact_block).splitlines(), llama_cpp_text(topk_block).splitlines(),
                           strict=True):
        print(f"{left:<44} | {right}")

    print("\nthe other direction and JS (tight estimate / exact, mean over items):")
    print(f"{'k':>4} {'KL(c‖b) exact':>13} {'tight':>9} {'ratio':>6} {'JS exact':>9} {'tight':>9} {'ratio':>6}")
    for k in KS:
        tt = results[k]["tight"]
        print(f"{k:>4} {ex.kl_cb.mean():13.6f} {tt.kl_cb.mean():9.6f} {tt.kl_cb.mean() / ex.kl_cb.mean():6.3f} "
              f"{ex.js.mean():9.6f} {tt.js.mean():9.6f} {tt.js.mean() / ex.js.mean():6.3f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", help="a served baseline allowing logprobs=V (…/v1)")
    ap.add_argument("--candidate", help="a served candidate allowing logprobs=V (…/v1)")
    ap.add_argument("--serve", action="store_true", help="start the embedded pair on ports 8011/8012 and stop it")
    ap.add_argument("--n", type=int, default=60, help="items of the vendored MMLU sample (default 60)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vocab", type=int, default=VOCAB)
    ap.add_argument("--cache", type=Path, help="npz of collected distributions: read if present, else written")
    ap.add_argument("--k-items", type=int, default=20, help="k of the per-item table (default 20)")
    args = ap.parse_args(argv)

    if args.cache is not None and args.cache.is_file():
        with np.load(args.cache) as z:
            data = {key: z[key] for key in z.files}
    else:
        if args.serve:
            data = serve_and_collect(args.n, args.seed, args.vocab)
        elif args.baseline and args.candidate:
            data = collect({"baseline": args.baseline, "candidate": args.candidate}, args.n, args.seed, args.vocab)
        else:
            ap.error("give --serve, or --baseline and --candidate, or an existing --cache")
        if args.cache is not None:
            np.savez_compressed(args.cache, **data)
            print(f"saved {args.cache}", file=sys.stderr)
    analyse(data, args.k_items)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
