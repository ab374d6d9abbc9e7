"""scripts/bench_decide.py's replay against the real thing: the looks a stored-baseline
--until-decided run takes are a function of a full run's records, so replaying them from a fixed
full run on the same stub servers must stop where a live sequential run on those servers stops,
at the same requests, with the same statuses.

The data are tests/test_decide_sequential.py's hand example (60 items, baseline and candidate the
same model, no flip): the gate flips<=20% is decided (PASS) at the 40-item look.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

from servecmp.gates import parse_gates
from tests.stub_openai import StubServer, StubState
from tests.test_mcq_cli import only_run_dir, records, servecmp, write_items

ROOT = Path(__file__).resolve().parents[1]


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_decide", ROOT / "scripts" / "bench_decide.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_replay_of_a_full_run_stops_where_the_live_sequential_run_stops(tmp_path: Path) -> None:
    data = tmp_path / "items.jsonl"
    write_items(data, 60)
    task = ["--task", f"jsonl:{data}", "--top-k", "5"]
    with StubServer(StubState(model="base")) as b, StubServer(StubState(model="base")) as a:
        full = servecmp("mcq", "--baseline", b.url, "--candidate", a.url, *task, "--runs-dir", str(tmp_path / "full"))
        assert full.returncode == 0, full.stderr
        prof = servecmp("mcq", "--baseline", b.url, "--baseline-only", *task, "--runs-dir", str(tmp_path / "prof"))
        assert prof.returncode == 0, prof.stderr
        seq = servecmp("mcq", "--baseline-run", str(only_run_dir(tmp_path / "prof")), "--candidate", a.url,
                       "--runs-dir", str(tmp_path / "seq"), "--until-decided", "--batch", "10",
                       "--gate", "flips<=20%")
        assert seq.returncode == 0, seq.stdout + seq.stderr
    bench = _bench()
    gates = parse_gates(["flips<=20%"], "mcq")
    full_dir, seq_dir = only_run_dir(tmp_path / "full"), only_run_dir(tmp_path / "seq")
    row = bench.replay(full_dir, "candidate", gates, 10)
    looks = json.loads((seq_dir / "looks.json").read_text())["looks"]
    live_items = looks[-1]["position"]
    live_requests = sum(int(r["n_requests"]) for r in records(seq_dir)  # type: ignore[call-overload]
                        if r["endpoint"] == "candidate")
    assert (row["items"], row["sequential"]) == (live_items, looks[-1]["candidates"]["candidate"]["statuses"])
    assert (row["items"], row["sequential"]) == (40, ["pass"])
    assert row["requests_sequential"] == live_requests
    full_requests = sum(int(r["n_requests"]) for r in records(full_dir))  # type: ignore[call-overload]
    assert row["requests_full"] == full_requests
    # The fixed run's verdict is what `servecmp report` gives on it; here PASS (0 flips in 60 items).
    assert bench.bench_run(full_dir, gates, 10)[0]["fixed"] == ["pass"]
