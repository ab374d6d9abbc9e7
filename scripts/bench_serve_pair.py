"""Measure a running baseline/candidate pair: top-20 divergence on an MMLU prompt and items/s.

    python scripts/bench_serve_pair.py --baseline http://127.0.0.1:8001/v1 \
        --candidate http://127.0.0.1:8002/v1 [--subject astronomy] [--items 12] [--concurrency 4]

Each item is one 5-shot MMLU prompt, one /v1/completions request with max_tokens=1 and
logprobs=20 (how `servecmp mcq` scores letter tasks); both endpoints run at the same time, as
they do in a comparison. Prints the first item's top-5 on each side and the per-endpoint rate.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
LETTERS = "ABCD"


def load_rows(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return [row for row in csv.reader(fh) if len(row) == 6]


def render(row: list[str], with_answer: bool) -> str:
    text = row[0] + "\n" + "".join(f"{LETTERS[i]}. {row[1 + i]}\n" for i in range(4)) + "Answer:"
    return text + (f" {row[5]}\n\n" if with_answer else "")


def prompts(data: Path, subject: str, n: int) -> list[str]:
    dev = load_rows(data / "dev" / f"{subject}_dev.csv")[:5]
    test = load_rows(data / "test" / f"{subject}_test.csv")[:n]
    head = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
    shots = "".join(render(r, True) for r in dev)
    return [head + shots + render(r, False) for r in test]


async def model_name(client: httpx.AsyncClient) -> str:
    resp = await client.get("/models")
    return str(resp.json()["data"][0]["id"])


async def run(url: str, items: list[str], concurrency: int) -> tuple[float, list[dict[str, float]]]:
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, trust_env=False) as client:
        name = await model_name(client)

        async def one(prompt: str) -> dict[str, float]:
            async with sem:
                body = {"model": name, "prompt": prompt, "max_tokens": 1, "logprobs": 20, "temperature": 0}
                resp = await client.post("/completions", json=body)
                resp.raise_for_status()
                return dict(resp.json()["choices"][0]["logprobs"]["top_logprobs"][0])

        t0 = time.perf_counter()
        tops = await asyncio.gather(*(one(p) for p in items))
        return time.perf_counter() - t0, list(tops)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", required=True)
    ap.add_argument("--candidate", required=True)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "mmlu")
    ap.add_argument("--subject", default="astronomy")
    ap.add_argument("--items", type=int, default=12)
    ap.add_argument("--concurrency", type=int, default=4)
    args = ap.parse_args()
    items = prompts(args.data, args.subject, args.items)
    (tb, base), (tc, cand) = await asyncio.gather(
        run(args.baseline, items, args.concurrency), run(args.candidate, items, args.concurrency)
    )
    for label, tops in (("baseline", base), ("candidate", cand)):
        first = sorted(tops[0].items(), key=lambda kv: -kv[1])[:5]
        print(f"{label:9} item 0 top-5: " + ", ".join(f"{tok!r} {lp:.4f}" for tok, lp in first))
    shared = set(base[0]) & set(cand[0])
    diffs = sorted((abs(base[0][t] - cand[0][t]), t) for t in shared)
    print(f"item 0: {len(shared)}/20 tokens in both top-20s; |delta logprob| max {diffs[-1][0]:.4f} "
          f"({diffs[-1][1]!r}), median {diffs[len(diffs) // 2][0]:.4f}")
    agree = sum(max(b, key=b.__getitem__) == max(c, key=c.__getitem__) for b, c in zip(base, cand, strict=True))
    print(f"top-1 token agrees on {agree}/{len(items)} items")
    print(f"baseline  {len(items)} items in {tb:.1f} s = {len(items) / tb:.2f} items/s")
    print(f"candidate {len(items)} items in {tc:.1f} s = {len(items) / tc:.2f} items/s")


if __name__ == "__main__":
    asyncio.run(main())
