"""The cost of a run (servecmp.mcq.cost): requests per endpoint as the servers counted them,
retries and probes included, summed over a resume; tokens as the records report them."""

from __future__ import annotations

import json
from pathlib import Path

from servecmp.mcq.cost import run_cost
from tests.stub_openai import StubServer, StubState
from tests.test_mcq_cli import only_run_dir, records, servecmp, write_items


def test_requests_count_retries_and_match_what_the_servers_received(tmp_path: Path) -> None:
    data = tmp_path / "items.jsonl"
    write_items(data, 10)
    runs = tmp_path / "runs"
    # The candidate answers its 4th and 5th requests with 503: two retries.
    flaky = StubState(model="cand", script=[None] * 3 + [503, 503])
    with StubServer(StubState(model="base")) as b, StubServer(flaky) as c:
        proc = servecmp("mcq", "--baseline", b.url, "--candidate", c.url, "--task", f"jsonl:{data}",
                        "--runs-dir", str(runs), "--top-k", "24", "--retries", "3", "--json")
        assert proc.returncode == 0, proc.stderr
        received = {"baseline": len(b.state.requests), "candidate": len(c.state.requests)}
    run_dir = only_run_dir(runs)
    costs = {c.endpoint: c for c in run_cost(run_dir)}
    assert {k: v.requests for k, v in costs.items()} == received
    assert costs["candidate"].retries == 2 and costs["baseline"].retries == 0
    recs = records(run_dir)
    for name in ("baseline", "candidate"):
        assert costs[name].prompt_tokens == sum(int(r["prompt_tokens"]) for r in recs  # type: ignore[call-overload]
                                                if r["endpoint"] == name)
    cost_json = next(json.loads(x) for x in _json_objects(proc.stderr) if "cost" in json.loads(x))
    assert {c["endpoint"]: c["requests"] for c in cost_json["cost"]} == received


def _json_objects(text: str) -> list[str]:
    """Top-level JSON objects printed on stderr (rich's print_json spreads each over lines)."""
    out, depth, cur = [], 0, []
    for line in text.splitlines():
        if line.startswith("{") and depth == 0:
            cur = []
        if depth or line.startswith("{"):
            cur.append(line)
            depth += line.count("{") - line.count("}")
            if depth == 0:
                out.append("\n".join(cur))
    return out
