"""`servecmp mtbench` end to end against stub endpoints: answers, judgments, report, cache, resume,
failures and the cost guard. The stub's judge rates "[base]" answers 8 and "[cand]" answers 6
(9 for CAND-WINS questions), so every expected number below follows from the three questions."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from servecmp._cli.main import build_app
from servecmp.errors import RunFailed, UserError
from tests.test_mtbench_stub import ChatStub, ChatStubState, settled_count

QUESTIONS = [
    {"question_id": 1, "category": "writing", "turns": ["Write a poem.", "Shorten it."]},
    {"question_id": 2, "category": "math", "turns": ["What is 2+2?", "And 3+3?"], "reference": ["4", "6"]},
    {"question_id": 3, "category": "stem", "turns": ["Explain gravity. CAND-WINS", "More. CAND-WINS"]},
]
# 3 questions x 2 turns: single grading 2 endpoints x 6 = 12 calls, pairwise 2 orders x 6 = 12 calls.
N_JUDGE_CALLS = 24


class Stubs:
    def __init__(self, base: ChatStub, cand: ChatStub, judge: ChatStub, tmp: Path) -> None:
        self.base, self.cand, self.judge, self.tmp = base, cand, judge, tmp
        self.questions = tmp / "questions.jsonl"
        self.questions.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
        self.config = tmp / "servecmp.toml"
        self.write_config()

    def write_config(self, judge_concurrency: int = 4) -> None:
        # No HTTP retries: injected failures should fail at once instead of backing off.
        self.config.write_text(
            "[baseline]\nurl = 'http://unused'\nmax_retries = 0\n[candidate]\nurl = 'http://unused'\nmax_retries = 0\n"
            f"[judge]\nmax_retries = 0\nmax_concurrency = {judge_concurrency}\n"
        )

    def args(self, *extra: str, judge_cache: str | None = None) -> list[str]:
        return [
            "mtbench", "--questions", str(self.questions), "--baseline", self.base.url,
            "--candidate", self.cand.url, "--judge-url", self.judge.url, "--judge-model", "judge-m",
            "--runs-dir", str(self.tmp / "runs"), "--judge-cache", judge_cache or "off",
            "-c", str(self.config), "--json", *extra,
        ]  # fmt: skip


def private_user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The shared judgment cache defaults to the user cache dir; keep tests out of the real one.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setenv("SERVECMP_CACHE_DIR", str(tmp_path / "servecmp-cache"))


@contextmanager
def running_stubs(tmp_path: Path) -> Iterator[Stubs]:
    with (
        ChatStub(ChatStubState(model="base-m", tag="[base]")) as base,
        ChatStub(ChatStubState(model="cand-m", tag="[cand]")) as cand,
        ChatStub(ChatStubState(model="judge-m")) as judge,
    ):
        yield Stubs(base, cand, judge, tmp_path)


@pytest.fixture(autouse=True)
def _private_user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    private_user_cache(tmp_path, monkeypatch)


@pytest.fixture
def stubs(tmp_path: Path) -> Iterator[Stubs]:
    with running_stubs(tmp_path) as s:
        yield s


def invoke(args: list[str]) -> Result:
    app = build_app()
    return CliRunner().invoke(app, args)


def ok(args: list[str]) -> dict[str, Any]:
    result = invoke(args)
    if result.exception is not None:
        raise result.exception
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def only_run(stubs: Stubs) -> Path:
    (run,) = list((stubs.tmp / "runs").iterdir())
    return run


def test_full_run_report_and_files(stubs: Stubs) -> None:
    s = ok(stubs.args())
    assert s["schema"] == "servecmp.mtbench_summary/1" and s["kind"] == "mtbench"
    assert s["complete"] is True
    base, cand = s["endpoints"]["baseline"], s["endpoints"]["candidate"]
    assert (base["model"], cand["model"]) == ("base-m", "cand-m")
    assert base["score"] == {"mean": 8.0, "n": 6}
    assert cand["score"] == {"mean": 7.0, "n": 6}  # (6*4 + 9*2) / 6
    assert cand["turns"] == {"1": {"mean": 7.0, "n": 3}, "2": {"mean": 7.0, "n": 3}}
    assert {k: v["mean"] for k, v in cand["categories"].items()} == {"writing": 6.0, "math": 6.0, "stem": 9.0}
    assert s["delta"]["point"] == pytest.approx(-1.0)  # per question: -2, -2, +1
    assert s["delta"]["n"] == 3
    assert s["wilcoxon"]["n"] == 3 and s["wilcoxon"]["n_nonzero"] == 3
    # Pairwise: the judge prefers [base] in both orders on q1, q2 and [cand] on q3, both turns each.
    assert {k: s["pairwise"][k] for k in ("n", "wins", "ties", "losses", "inconsistent")} == {
        "n": 6, "wins": 2, "ties": 0, "losses": 4, "inconsistent": 0,
    }  # fmt: skip
    assert s["single_judgments"] == {
        "expected": 12, "ok": 12, "unparseable": 0, "out_of_range": 0, "errors": 0, "missing": 0,
    }  # fmt: skip
    assert [d["question_id"] for d in s["largest_drops"]] == [1, 2]
    assert s["largest_drops"][0]["baseline_answers"][0].startswith("[base] turn 1: Write a poem.")
    assert stubs.judge.state.n_chat == N_JUDGE_CALLS
    assert stubs.base.state.n_chat == stubs.cand.state.n_chat == 6

    run = only_run(stubs)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["kind"] == "mtbench" and manifest["finished_at"] is not None
    assert [(e["role"], e["model"]) for e in manifest["endpoints"]] == [
        ("baseline", "base-m"),
        ("candidate", "cand-m"),
    ]
    assert json.loads((run / "summary.json").read_text()) == s
    single = [json.loads(line) for line in (run / "model_judgment" / "judge-m_single.jsonl").open()]
    prompts = {(j["question_id"], j["turn"]): j["judge"][1] for j in single}
    assert prompts == {
        (1, 1): "single-v1", (1, 2): "single-v1-multi-turn",
        (2, 1): "single-math-v1", (2, 2): "single-math-v1-multi-turn",
        (3, 1): "single-v1", (3, 2): "single-v1-multi-turn",
    }  # fmt: skip
    math_t2 = next(j for j in single if (j["question_id"], j["turn"]) == (2, 2))
    assert (
        "### Reference answer:\n4" in math_t2["user_prompt"]
        and "### Reference answer:\n6" in math_t2["user_prompt"]
    )


def test_second_turn_sees_first_answer_and_category_temperatures(stubs: Stubs) -> None:
    ok(stubs.args("--mode", "single", "--max-tokens", "48"))
    requests = stubs.base.state.chat_requests
    second = next(
        r for r in requests if len(r["messages"]) == 3 and r["messages"][0]["content"] == "Write a poem."
    )
    assert second["messages"][1] == {"role": "assistant", "content": "[base] turn 1: Write a poem."}
    assert second["messages"][2] == {"role": "user", "content": "Shorten it."}
    temps = {r["messages"][0]["content"]: r["temperature"] for r in requests}
    assert temps == {"Write a poem.": 0.7, "What is 2+2?": 0.0, "Explain gravity. CAND-WINS": 0.1}
    assert {r["max_tokens"] for r in requests} == {48}


def test_unreadable_judgments_are_kept_and_counted(stubs: Stubs) -> None:
    stubs.questions.write_text(
        json.dumps({"question_id": 7, "category": "writing", "turns": ["NO-RATING a", "b"]}) + "\n"
        + json.dumps({"question_id": 8, "category": "writing", "turns": ["OUT-OF-RANGE a"]}) + "\n"
        + json.dumps({"question_id": 9, "category": "writing", "turns": ["BACKUP a"]}) + "\n"
    )  # fmt: skip
    s = ok(stubs.args("--mode", "single"))
    # q7: 2 turns x 2 endpoints unparseable; q8: 2 out of range; q9: 2 read from the [7] fallback.
    assert s["single_judgments"] == {
        "expected": 8, "ok": 2, "unparseable": 4, "out_of_range": 2, "errors": 0, "missing": 0,
    }  # fmt: skip
    assert s["endpoints"]["baseline"]["score"] == {"mean": 7.0, "n": 1}
    assert s["complete"] is True
    assert "I cannot decide." in s["unparseable_examples"]
    single = [
        json.loads(line) for line in (only_run(stubs) / "model_judgment" / "judge-m_single.jsonl").open()
    ]
    out_of_range = [j for j in single if j["status"] == "out_of_range"]
    assert {(j["score"], j["raw_rating"]) for j in out_of_range} == {(None, "11")}


def test_position_biased_judge_gives_ties_and_full_inconsistency(stubs: Stubs) -> None:
    stubs.judge.state.biased = True
    s = ok(stubs.args("--mode", "pairwise"))
    assert {k: s["pairwise"][k] for k in ("n", "wins", "ties", "losses", "inconsistent")} == {
        "n": 6, "wins": 0, "ties": 6, "losses": 0, "inconsistent": 6,
    }  # fmt: skip
    assert s["pairwise"]["inconsistency_rate"] == 1.0
    assert stubs.judge.state.n_chat == 12


def test_cache_second_run_and_resume_of_finished_run_make_no_judge_calls(stubs: Stubs) -> None:
    cache = str(stubs.tmp / "cache")
    first = ok(stubs.args(judge_cache=cache))
    assert stubs.judge.state.n_chat == N_JUDGE_CALLS
    second = ok(stubs.args(judge_cache=cache))  # a new run directory, same answers, shared cache
    assert stubs.judge.state.n_chat == N_JUDGE_CALLS
    assert second["delta"] == first["delta"]
    runs = sorted((stubs.tmp / "runs").iterdir())
    assert len(runs) == 2
    before = (stubs.base.state.n_chat, stubs.cand.state.n_chat, stubs.judge.state.n_chat)
    again = ok(["mtbench", "--resume", str(runs[0]), "--judge-cache", "off", "--json"])
    assert (stubs.base.state.n_chat, stubs.cand.state.n_chat, stubs.judge.state.n_chat) == before
    assert again["pairwise"] == first["pairwise"]


def test_resume_after_judge_failures_repeats_no_successful_call(stubs: Stubs) -> None:
    stubs.write_config(judge_concurrency=1)  # so no successful answer is still in flight when it stops
    stubs.judge.state.fail_after = 5
    result = invoke(stubs.args())
    # RunFailed: the run stopped with its work saved (exit 3), unlike bad input (UserError, exit 2).
    assert isinstance(result.exception, RunFailed) and result.exception.exit_code == 3
    message = str(result.exception)
    assert "judge" in message and "--resume" in message and "\n" not in message
    run = only_run(stubs)
    failed_calls = settled_count(stubs.judge.state) - 5
    assert failed_calls >= 8  # it stops after 8 errors in a row
    assert not (run / "summary.json").exists()

    stubs.judge.state.fail_after = None
    s = ok(["mtbench", "--resume", str(run), "-c", str(stubs.config), "--json"])
    assert s["complete"] is True
    # Every successful judgment was paid once: 5 before the failure, the rest after. Counted as the
    # stub's 200 answers: a failing request the client abandoned at the stop may reach the stub
    # after the first run returned, so n_chat minus the failures seen then can be one too many.
    assert stubs.judge.state.n_ok == N_JUDGE_CALLS
    assert stubs.base.state.n_chat == stubs.cand.state.n_chat == 6
    assert s["endpoints"]["candidate"]["score"]["mean"] == 7.0


def test_candidate_dying_mid_run_leaves_a_resumable_run(stubs: Stubs) -> None:
    stubs.cand.state.fail_after = 3  # three answer turns, then 503 (no retries configured)
    result = invoke(stubs.args())
    assert isinstance(result.exception, RunFailed) and result.exception.exit_code == 3
    assert str(result.exception).startswith("candidate endpoint failed:")
    assert "--resume" in str(result.exception)
    assert stubs.judge.state.n_chat == 0
    run = only_run(stubs)
    saved = [json.loads(line) for line in (run / "model_answer" / "cand-m.jsonl").open()]
    assert len(saved) <= 1  # 3 successful turns finish at most one two-turn question
    # The baseline may still have had questions in flight when the run stopped (how many depends
    # on scheduling); whatever it saved is kept.
    base_file = run / "model_answer" / "base-m.jsonl"
    saved_base = sum(1 for _ in base_file.open()) if base_file.exists() else 0
    before, before_base = settled_count(stubs.cand.state), settled_count(stubs.base.state)

    stubs.cand.state.fail_after = None
    s = ok(["mtbench", "--resume", str(run), "--json"])
    assert s["complete"] is True
    # Only the unfinished questions are asked again, both turns each, on either endpoint.
    assert stubs.cand.state.n_chat - before == 2 * (3 - len(saved))
    assert stubs.base.state.n_chat - before_base == 2 * (3 - saved_base)


def test_max_judge_calls_then_resume(stubs: Stubs) -> None:
    s = ok(stubs.args("--max-judge-calls", "5"))
    assert stubs.judge.state.n_chat == 5
    assert s["complete"] is False
    s = ok(["mtbench", "--resume", str(only_run(stubs)), "--json"])
    assert s["complete"] is True
    assert stubs.judge.state.n_chat == N_JUDGE_CALLS


def test_paid_judge_without_tty_or_yes_is_refused_before_any_call(
    stubs: Stubs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STUB_JUDGE_KEY", "sk-test-secret")
    args = stubs.args("--judge-key-env", "STUB_JUDGE_KEY")
    result = invoke(args)
    assert isinstance(result.exception, UserError)
    assert "--yes" in str(result.exception)
    assert stubs.base.state.n_chat == stubs.cand.state.n_chat == stubs.judge.state.n_chat == 0
    assert not (stubs.tmp / "runs").exists() or not any((stubs.tmp / "runs").iterdir())

    result = invoke([*args, "--yes"])
    assert result.exception is None, result.output
    assert f"{N_JUDGE_CALLS} judge calls" in result.stderr
    assert stubs.judge.state.n_chat == N_JUDGE_CALLS
    for path in only_run(stubs).rglob("*"):
        if path.is_file():
            assert "sk-test-secret" not in path.read_text(), path


def test_missing_judge_key_fails_before_generation(stubs: Stubs, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STUB_JUDGE_KEY", raising=False)
    result = invoke(stubs.args("--judge-key-env", "STUB_JUDGE_KEY", "--yes"))
    assert isinstance(result.exception, UserError)
    assert "STUB_JUDGE_KEY" in str(result.exception)
    assert stubs.base.state.n_chat == 0


def test_resume_refuses_flags_that_change_the_comparison(stubs: Stubs) -> None:
    ok(stubs.args("--mode", "single"))
    result = invoke(["mtbench", "--resume", str(only_run(stubs)), "--baseline", stubs.base.url])
    assert isinstance(result.exception, UserError)
    assert "with --baseline:" in str(result.exception)


def test_resume_of_a_directory_that_is_not_a_run(tmp_path: Path) -> None:
    result = invoke(["mtbench", "--resume", str(tmp_path)])
    assert isinstance(result.exception, UserError)
    assert "manifest.json not found" in str(result.exception)
