"""`servecmp gen --resume` after kill -9: nothing finished is lost, nothing is stored twice, and the
resumed run's summary is the one an uninterrupted run gives."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from tests.gen_stub import GenStub, GenStubState
from tests.test_mcq_cli import ROOT, servecmp

N = 10


def _task(path: Path) -> Path:
    path.write_text("".join(json.dumps({"id": f"i{i}", "prompt": f"P{i}", "reference": str(i)}) + "\n"
                            for i in range(N)))
    return path


def _states(delay: float) -> tuple[GenStubState, GenStubState]:
    base = GenStubState(model="base", answers={f"P{i}": f"answer {i}" for i in range(N)}, delay_s=delay)
    cand = GenStubState(model="cand", answers={f"P{i}": f"answer {i if i % 3 else i + 1}" for i in range(N)},
                        delay_s=delay)
    return base, cand


def _generations(state: GenStubState) -> Counter[str]:
    return Counter(r["body"]["prompt"] for r in state.requests
                   if r["path"] == "/v1/completions" and isinstance(r["body"].get("prompt"), str)
                   and r["body"]["prompt"].startswith("P"))


def test_kill_9_then_resume(tmp_path: Path) -> None:
    task = _task(tmp_path / "task.jsonl")
    runs = tmp_path / "runs"
    base, cand = _states(0.15)
    with GenStub(base) as b, GenStub(cand) as c:
        proc = subprocess.Popen(
            [sys.executable, "-m", "servecmp", "gen", "--baseline", b.url, "--candidate", c.url, "--task",
             f"jsonl:{task}", "--runs-dir", str(runs), "--concurrency", "1", "--top-k", "5"],
            cwd=ROOT, env={**os.environ, "COLUMNS": "200"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        records = None
        while time.time() < deadline:
            dirs = list(runs.iterdir()) if runs.exists() else []
            records = dirs[0] / "records.jsonl" if dirs else None
            if records is not None and records.exists() and len(records.read_bytes().splitlines()) >= 6:
                break
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert records is not None
        before = [json.loads(x) for x in records.read_text().splitlines() if x.strip()]
        assert 6 <= len(before) < 2 * N
        resumed = servecmp("gen", "--resume", str(records.parent), "--json")
        assert resumed.returncode == 0, resumed.stderr
        gen_b, gen_c = _generations(b.state), _generations(c.state)

    after = [json.loads(x) for x in records.read_text().splitlines()]
    keys = Counter((r["endpoint"], r["item_id"], r["sample"]) for r in after)
    # Every item of both endpoints, each stored once; what was stored before the kill is kept as is.
    assert set(keys) == {(e, f"i{i}", 0) for e in ("baseline", "candidate") for i in range(N)}
    assert max(keys.values()) == 1
    assert after[: len(before)] == before
    # Asked again: at most the one item in flight per endpoint when the process died.
    assert sum(gen_b.values()) <= N + 1 and sum(gen_c.values()) <= N + 1
    s = json.loads(resumed.stdout)
    assert s["run"]["complete"] is True and s["run"]["n_items"] == N
    k = s["candidates"][0]["correctness"][0]
    # The candidate answers i+1 on items 0, 3, 6, 9: four correct→wrong flips.
    assert (k["flips"]["correct_to_wrong"], k["flips"]["wrong_to_correct"]) == (4, 0)
    assert s["candidates"][0]["teacher_forcing"]["n"] == N
    manifest = json.loads((records.parent / "manifest.json").read_text())
    assert manifest["finished_at"] is not None
