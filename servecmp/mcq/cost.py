"""The cost of a run: requests and tokens per endpoint.

Requests are counted by the endpoint clients (`servecmp.endpoints.CallStats`): every attempt sent,
so a retried request counts once per attempt, and the capability probe and model lookup count too.
Each invocation of a run (the first and every resume) appends one line per endpoint to `COST`, so
the run's total is the sum over its lines. Tokens are the usage the servers reported in the records
(a failed attempt reports none). A stored baseline's records were paid for by the run that made
them: their tokens are shown as stored, not as this run's.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel

from servecmp.endpoints import EndpointClient
from servecmp.mcq.records import RECORDS
from servecmp.runstore import JsonlAppender, iter_jsonl

#: <run>/cost.jsonl: one line per endpoint per invocation.
COST = "cost.jsonl"


def append_cost(run_dir: Path, clients: Mapping[str, EndpointClient]) -> None:
    """This invocation's request counts, one line per endpoint."""
    out = JsonlAppender(run_dir / COST, sync_every=1)
    try:
        for name, c in clients.items():
            out.append({"endpoint": name, "requests": c.stats.requests, "retries": c.stats.retries,
                        "failures": c.stats.failures})
    finally:
        out.close()


class EndpointCost(BaseModel):
    endpoint: str
    #: Attempts sent by this run, retries and probes included (0 for a stored baseline).
    requests: int
    retries: int
    prompt_tokens: int
    completion_tokens: int
    #: True when the records were joined from a stored baseline (their tokens were spent by that run).
    stored: bool = False


def run_cost(run_dir: Path, stored_baseline: bool = False) -> list[EndpointCost]:
    """Every endpoint's requests and tokens over the run's invocations, baseline first; empty for a
    run from before the cost was recorded (its request counts are unknown)."""
    if not (run_dir / COST).exists():
        return []
    req: dict[str, list[int]] = {}
    for line in iter_jsonl(run_dir / COST):
        r = req.setdefault(str(line["endpoint"]), [0, 0])
        r[0] += int(line["requests"])
        r[1] += int(line["retries"])
    tok: dict[str, list[int]] = {}
    for rec in iter_jsonl(run_dir / RECORDS):
        t = tok.setdefault(str(rec["endpoint"]), [0, 0])
        t[0] += int(rec.get("prompt_tokens", 0))
        t[1] += int(rec.get("completion_tokens", 0))
    names = sorted(set(req) | set(tok), key=lambda n: (n != "baseline", n))
    return [EndpointCost(endpoint=n, requests=req.get(n, [0, 0])[0], retries=req.get(n, [0, 0])[1],
                         prompt_tokens=tok.get(n, [0, 0])[0], completion_tokens=tok.get(n, [0, 0])[1],
                         stored=stored_baseline and n == "baseline") for n in names]


def cost_lines(costs: list[EndpointCost]) -> list[str]:
    out = []
    for c in costs:
        if c.stored:
            out.append(f"  {c.endpoint}: stored, not asked by this run ({c.prompt_tokens:,} prompt + "
                       f"{c.completion_tokens:,} completion tokens spent by the stored run)")
        else:
            out.append(f"  {c.endpoint}: {c.requests:,} requests ({c.retries:,} of them retries), "
                       f"{c.prompt_tokens:,} prompt + {c.completion_tokens:,} completion tokens")
    return out
