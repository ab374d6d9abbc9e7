"""`servecmp mtbench` with several candidates against one baseline, on stub endpoints.

The stub judge (tests/test_mtbench_stub.py) rates an answer tagged "[base]" 8 and one tagged "[cand]"
6 (9 on the CAND-WINS question); any other tag is rated 8. So with the three questions of
test_mtbench_cli (q3 is CAND-WINS), per question (mean over its two turns), candidate − baseline:

- cand-a ("[cand]"): q1 6-8 = -2, q2 6-8 = -2, q3 9-8 = +1  ->  ΔMT-Bench = -3/3 = -1.0
- cand-b ("[oth]"):  8-8 = 0 on every question                ->  ΔMT-Bench = 0.0

Pairwise, the judge prefers the "[base]" answer except on CAND-WINS: each candidate wins q3's two
turns and loses the other four (W/T/L 2/0/4).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from servecmp import correlate as corr
from servecmp.endpoints import normalise_url
from servecmp.errors import RunFailed, UserError
from servecmp.mtbench.manifest import read_manifest
from servecmp.mtbench.run import load_result, load_summary
from tests.test_mtbench_cli import QUESTIONS, invoke, ok, private_user_cache
from tests.test_mtbench_stub import ChatStub, ChatStubState

N_TURNS = sum(len(q["turns"]) for q in QUESTIONS)  # 6
# Single grading: baseline once + each candidate (3 x 6); pairwise: 2 candidates x 6 turns x 2 orders.
N_JUDGE_CALLS = 3 * N_TURNS + 2 * N_TURNS * 2


class Multi:
    def __init__(self, base: ChatStub, a: ChatStub, b: ChatStub, judge: ChatStub, tmp: Path) -> None:
        self.base, self.a, self.b, self.judge, self.tmp = base, a, b, judge, tmp
        self.questions = tmp / "questions.jsonl"
        self.questions.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
        self.config = tmp / "servecmp.toml"
        self.config.write_text("[judge]\nmax_retries = 0\nmax_concurrency = 1\n")

    def args(self, *extra: str) -> list[str]:
        return [
            "mtbench", "--questions", str(self.questions), "--baseline", self.base.url,
            "--candidate", self.a.url, "--candidate", self.b.url,
            "--candidate-name", "int8", "--candidate-name", "fp8",
            "--judge-url", self.judge.url, "--judge-model", "judge-m", "--retries", "0",
            "--runs-dir", str(self.tmp / "runs"), "--judge-cache", "off", "-c", str(self.config), "--json",
            *extra,
        ]  # fmt: skip

    def run_dir(self) -> Path:
        (run,) = list((self.tmp / "runs").iterdir())
        return run


@contextmanager
def multi_stubs(tmp_path: Path) -> Iterator[Multi]:
    with (
        ChatStub(ChatStubState(model="base-m", tag="[base]")) as base,
        ChatStub(ChatStubState(model="cand-a", tag="[cand]")) as a,
        ChatStub(ChatStubState(model="cand-b", tag="[oth]")) as b,
        ChatStub(ChatStubState(model="judge-m")) as judge,
    ):
        yield Multi(base, a, b, judge, tmp_path)


@pytest.fixture(autouse=True)
def _private_user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    private_user_cache(tmp_path, monkeypatch)


@pytest.fixture
def m(tmp_path: Path) -> Iterator[Multi]:
    with multi_stubs(tmp_path) as s:
        yield s


def _saved_questions(run: Path, stem: str) -> set[int]:
    path = run / "model_answer" / f"{stem}.jsonl"
    if not path.is_file():
        return set()
    return {json.loads(line)["question_id"] for line in path.read_text().splitlines() if line.strip()}


def _by_name(out: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["endpoint"]["name"]: c for c in out["candidates"]}


def test_two_candidates_baseline_once_files_judgments_and_deltas(m: Multi) -> None:
    out = ok(m.args())
    assert out["schema"] == "servecmp.mtbench_comparison/1" and out["complete"] is True
    # The baseline answered each question once (one request per turn), as did each candidate.
    assert (m.base.state.n_chat, m.a.state.n_chat, m.b.state.n_chat) == (N_TURNS, N_TURNS, N_TURNS)
    assert m.judge.state.n_chat == N_JUDGE_CALLS

    run = m.run_dir()
    files = sorted(p.name for p in (run / "model_answer").iterdir())
    assert files == ["base-m.jsonl", "cand-a.jsonl", "cand-b.jsonl"]
    for stem, tag in (("base-m", "[base]"), ("cand-a", "[cand]"), ("cand-b", "[oth]")):
        rows = [json.loads(line) for line in (run / "model_answer" / f"{stem}.jsonl").read_text().splitlines()]
        assert len(rows) == len(QUESTIONS) and all(tag in r["choices"][0]["turns"][0] for r in rows)

    # Judgments per candidate: single grades of all three answer files, pairs against each candidate.
    single = [json.loads(x) for x in (run / "model_judgment" / "judge-m_single.jsonl").read_text().splitlines()]
    assert sorted({(j["model"]) for j in single}) == ["base-m", "cand-a", "cand-b"]
    assert len(single) == 3 * N_TURNS
    pairs = [json.loads(x) for x in (run / "model_judgment" / "judge-m_pair.jsonl").read_text().splitlines()]
    assert sorted(p["model_2"] for p in pairs) == ["cand-a"] * N_TURNS + ["cand-b"] * N_TURNS
    assert {p["model_1"] for p in pairs} == {"base-m"}

    c = _by_name(out)
    assert c["int8"]["endpoint"]["model"] == "cand-a" and c["fp8"]["endpoint"]["model"] == "cand-b"
    assert c["int8"]["summary"]["delta"]["point"] == pytest.approx(-1.0)
    assert c["fp8"]["summary"]["delta"]["point"] == pytest.approx(0.0)
    assert c["fp8"]["summary"]["delta"]["low"] == pytest.approx(0.0) == c["fp8"]["summary"]["delta"]["high"]
    for name in ("int8", "fp8"):
        p = c[name]["summary"]["pairwise"]
        assert (p["wins"], p["ties"], p["losses"]) == (2, 0, 4)
        assert c[name]["summary"]["endpoints"]["baseline"]["score"]["mean"] == 8.0
    # Leaderboard: best Δ first.
    assert [(r["name"], r["wins"], r["ties"], r["losses"]) for r in out["leaderboard"]] == [
        ("fp8", 2, 0, 4), ("int8", 2, 0, 4)
    ]
    assert out["leaderboard"][1]["delta"]["point"] == pytest.approx(-1.0)
    assert out["leaderboard"][0]["loss_share"] == pytest.approx(4 / 6)

    # The manifest records every candidate (version 3); summary.json is the comparison; report agrees.
    manifest = read_manifest(run)
    assert manifest.version == 3
    assert [(e.role, e.name, e.model, e.answer_file) for e in manifest.endpoints] == [
        ("baseline", None, "base-m", "base-m"), ("candidate", "int8", "cand-a", "cand-a"),
        ("candidate", "fp8", "cand-b", "cand-b"),
    ]  # fmt: skip
    assert json.loads((run / "summary.json").read_text()) == out
    assert load_result(run).model_dump(mode="json") == out
    assert load_summary(run).delta.point == pytest.approx(-1.0)  # the first candidate's
    report = invoke(["report", str(run), "--json"])
    assert report.exit_code == 0, report.output
    assert json.loads(report.stdout) == out
    text = invoke(["report", str(run)])
    assert text.exit_code == 0, text.output
    assert "int8" in text.stdout and "fp8" in text.stdout and "-1.00" in text.stdout


def test_gates_are_decided_per_candidate(m: Multi) -> None:
    ok(m.args())
    run = m.run_dir()
    # Every candidate's whole interval is <= 1.5 (int8's Δ per question are -2, -2, +1): exit 0.
    passed = invoke(["report", str(run), "--json", "--gate", "delta_mtbench<=1.5"])
    assert passed.exit_code == 0, passed.output
    verdict = json.loads(passed.stdout)["verdict"]
    assert (verdict["status"], verdict["exit_code"]) == ("pass", 0)
    assert [(v["candidate"], v["status"]) for v in verdict["candidates"]] == [("int8", "pass"), ("fp8", "pass")]
    # fp8's interval is [0, 0]: it fails >= 0.5 whatever int8 does; exit 1.
    failed = invoke(["report", str(run), "--json", "--gate", "delta_mtbench>=0.5"])
    assert failed.exit_code == 1, failed.output
    statuses = {v["candidate"]: v["status"] for v in json.loads(failed.stdout)["verdict"]["candidates"]}
    assert statuses["fp8"] == "fail"
    # fp8 passes >= -0.5 ([0, 0]); int8's interval spans -0.5: inconclusive, none fails: exit 4.
    unsure = invoke(["report", str(run), "--json", "--gate", "delta_mtbench>=-0.5"])
    assert unsure.exit_code == 4, unsure.output
    statuses = {v["candidate"]: v["status"] for v in json.loads(unsure.stdout)["verdict"]["candidates"]}
    assert statuses == {"int8": "inconclusive", "fp8": "pass"}
    # The gate on a new run itself: the same per-candidate decision and exit code.
    rerun = invoke(m.args("--gate", "delta_mtbench>=0.5"))
    assert rerun.exit_code == 1, rerun.output
    assert json.loads(rerun.stdout)["verdict"]["exit_code"] == 1


def test_resume_of_an_interrupted_two_candidate_run_repeats_no_successful_call(m: Multi) -> None:
    # fp8's endpoint fails after two answer turns; the run stops with its work saved.
    m.b.state.fail_after = 2
    first = invoke(m.args())
    assert isinstance(first.exception, RunFailed), first.output
    run = m.run_dir()
    saved = {stem: _saved_questions(run, stem) for stem in ("base-m", "cand-a", "cand-b")}
    m.b.state.fail_after = None
    # The judge then fails part-way through judging.
    m.judge.state.fail_after = 10
    second = invoke(["mtbench", "--resume", str(run), "--json", "--yes"])
    assert isinstance(second.exception, RunFailed), second.output
    judged_before = m.judge.state.n_chat
    assert judged_before > 10 and saved["cand-b"] != {q["question_id"] for q in QUESTIONS}
    m.judge.state.fail_after = None
    out = ok(["mtbench", "--resume", str(run), "--json", "--yes"])
    assert out["complete"] is True

    def answered(state: ChatStubState) -> list[str]:
        return [json.dumps(b["messages"]) for b in state.chat_requests]

    # An answer saved by the interrupted run (per question and endpoint) is never asked for again.
    for stub, stem in ((m.base, "base-m"), (m.a, "cand-a"), (m.b, "cand-b")):
        firsts = [b["messages"][0]["content"] for b in stub.state.chat_requests if len(b["messages"]) == 1]
        for q in QUESTIONS:
            if q["question_id"] in saved[stem]:
                assert firsts.count(q["turns"][0]) == 1, (stem, q["question_id"])
        assert _saved_questions(run, stem) == {q["question_id"] for q in QUESTIONS}
    # Judge: the 10 calls that succeeded before the failure are not repeated; in all, every judgment once.
    judge_asked = answered(m.judge.state)
    ok_first = judge_asked[:10]
    assert not set(ok_first) & set(judge_asked[judged_before:])
    assert len(set(judge_asked)) == N_JUDGE_CALLS
    assert _by_name(out)["int8"]["summary"]["delta"]["point"] == pytest.approx(-1.0)
    manifest = read_manifest(run)
    assert manifest.finished_at is not None and [e.name for e in manifest.candidates] == ["int8", "fp8"]


def test_correlate_reads_a_two_candidate_run_as_two_rows(m: Multi) -> None:
    ok(m.args())
    runs = corr.read_runs(m.run_dir())
    assert [(r.kind, r.candidate.model, r.delta_mtbench) for r in runs] == [
        ("mtbench", "cand-a", pytest.approx(-1.0)), ("mtbench", "cand-b", pytest.approx(0.0))
    ]
    assert {r.baseline.model for r in runs} == {"base-m"}
    assert [r.candidate.url for r in runs] == [normalise_url(m.a.url), normalise_url(m.b.url)]
    # Paired with MCQ facts by candidate model+URL, each candidate is its own row.
    rows, _ = corr.pair_runs(runs)
    assert [r.candidate.model for r in rows] == ["cand-a", "cand-b"]


def test_candidates_from_servecmp_toml(m: Multi) -> None:
    m.config.write_text(
        "[judge]\nmax_retries = 0\nmax_concurrency = 1\n"
        f"[[candidates]]\nname = 'int8'\nurl = '{m.a.url}'\nmax_retries = 0\n"
        f"[[candidates]]\nurl = '{m.b.url}'\nmax_retries = 0\n"
    )
    args = [a for a in m.args() if a not in (m.a.url, m.b.url)]
    args = [a for i, a in enumerate(args) if a != "--candidate" and (i == 0 or args[i - 1] != "--candidate-name")
            and a != "--candidate-name"]
    out = ok(args)
    # An unnamed [[candidates]] entry is named after its model.
    assert [c["endpoint"]["name"] for c in out["candidates"]] == ["int8", "cand-b"]
    assert m.base.state.n_chat == N_TURNS
    assert _by_name(out)["int8"]["summary"]["delta"]["point"] == pytest.approx(-1.0)


def test_one_candidate_keeps_the_role_name_and_todays_layout(m: Multi) -> None:
    args = m.args()
    i = args.index("--candidate", args.index("--candidate") + 1)
    del args[i : i + 2]  # only int8
    j = args.index("--candidate-name", args.index("--candidate-name") + 1)
    del args[j : j + 2]
    out = ok(args)
    assert out["schema"] == "servecmp.mtbench_summary/1"
    assert out["delta"]["point"] == pytest.approx(-1.0)
    manifest = read_manifest(m.run_dir())
    assert manifest.version == 2 and [e.name for e in manifest.endpoints] == [None, None]
    assert "name" not in json.loads((m.run_dir() / "manifest.json").read_text())["endpoints"][1]


def test_resume_refuses_candidate_flags(m: Multi) -> None:
    m.b.state.fail_after = 0
    first = invoke(m.args())
    assert isinstance(first.exception, RunFailed)
    again = invoke(["mtbench", "--resume", str(m.run_dir()), "--candidate-name", "x"])
    assert isinstance(again.exception, UserError) and "with --candidate-name:" in str(again.exception)


def test_the_baseline_itself_as_a_control_candidate(m: Multi) -> None:
    args = m.args()
    args[args.index(m.b.url)] = m.base.url  # fp8 is the baseline server itself: a zero-difference control
    out = ok(args)
    files = sorted(p.name for p in (m.run_dir() / "model_answer").iterdir())
    assert files == ["base-m-baseline.jsonl", "base-m-fp8.jsonl", "cand-a.jsonl"]
    control = _by_name(out)["fp8"]["summary"]
    assert control["delta"]["point"] == 0.0 and control["endpoints"]["candidate"]["score"]["mean"] == 8.0
    # Asked once as the baseline and once as the candidate.
    assert m.base.state.n_chat == 2 * N_TURNS
    text = invoke(["report", str(m.run_dir())])
    assert text.exit_code == 0, text.output
    assert "MT-Bench: 2 candidates against baseline base-m" in text.stdout and "0/6/0" in text.stdout
