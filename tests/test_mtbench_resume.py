"""The MT-Bench run directory as a record: the typed manifest (version 2), what --resume restores
from it and what it refuses, version-1 manifests, the summary recomputed from disk with no key, and
the command line's flags (--mode choices, key-variable flags, fast --help).

Uses the stub trio of test_mtbench_cli (judge rates "[base]" 8, "[cand]" 6)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from servecmp.config import parse_config
from servecmp.endpoints import EndpointSpec
from servecmp.errors import RunFailed, RunInterrupted, UserError
from servecmp.judges.prompts import load_judge_prompts
from servecmp.mtbench import questions as qm
from servecmp.mtbench import run as mtrun
from servecmp.mtbench.render import render
from servecmp.mtbench.run import load_summary
from servecmp.mtbench.rundir import MtRunPaths
from servecmp.mtbench.settings import ACCEPTED_ON_RESUME, MtBenchOptions, new_settings, resumed_settings
from servecmp.records import RunManifest
from tests.test_mtbench_cli import Stubs, invoke, ok, only_run, private_user_cache, running_stubs
from tests.test_mtbench_stub import settled_count

ROOT = Path(__file__).resolve().parents[1]
ACCEPTED = (
    "--mode, --concurrency, --rps, --timeout, --retries, --judge-rps, --max-judge-calls, --judge-cache, "
    "--show, --json, --yes, -c/--config"
)


@pytest.fixture(autouse=True)
def _private_user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    private_user_cache(tmp_path, monkeypatch)


@pytest.fixture
def stubs(tmp_path: Path) -> Iterator[Stubs]:
    with running_stubs(tmp_path) as s:
        yield s


def manifest_of(run: Path) -> dict[str, Any]:
    return dict(json.loads((run / "manifest.json").read_text()))


def all_run_text(run: Path) -> str:
    return "".join(p.read_text() for p in run.rglob("*") if p.is_file())


PACED = (
    "--mode", "single", "--max-tokens", "48", "--categories", "writing,math", "--concurrency", "1",
    "--rps", "50", "--timeout", "30", "--retries", "0", "--baseline-key-env", "BASE_KEY",
    "--candidate-key-env", "CAND_KEY",
)  # fmt: skip


def test_manifest_layout_and_resume_restores_every_setting(
    stubs: Stubs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BASE_KEY", "base-secret")
    monkeypatch.setenv("CAND_KEY", "cand-secret")
    stubs.cand.state.fail_after = 2  # then 503s (no retries): the run stops, resumable
    result = invoke(stubs.args(*PACED))
    assert isinstance(result.exception, RunFailed) and "--resume" in str(result.exception)
    run = only_run(stubs)

    m = manifest_of(run)
    assert m.pop("started_at") and m.pop("finished_at") is None
    questions = qm.load_questions(run / "questions.jsonl")
    assert [q.question_id for q in questions] == [1, 2]
    assert m == {
        "kind": "mtbench", "version": 2, "servecmp_version": "0.1.0", "task": "mt_bench",
        "source": str(stubs.questions), "task_fingerprint": qm.fingerprint(questions), "n_items": 2,
        "limit": None, "categories": ["writing", "math"], "references": "the question file's reference field",
        "max_tokens": 48, "mode": "single",
        "endpoints": [
            {"base_url": stubs.base.url, "model": "base-m", "api_key_env": "BASE_KEY", "timeout_s": 30.0,
             "max_concurrency": 1, "requests_per_second": 50.0, "max_retries": 0, "role": "baseline",
             "answer_file": "base-m"},
            {"base_url": stubs.cand.url, "model": "cand-m", "api_key_env": "CAND_KEY", "timeout_s": 30.0,
             "max_concurrency": 1, "requests_per_second": 50.0, "max_retries": 0, "role": "candidate",
             "answer_file": "cand-m"},
        ],
        "judge": {"url": stubs.judge.url, "model": "judge-m", "api_key_env": None, "force_format": False,
                  "max_tokens": 2048, "timeout_s": 120.0, "max_concurrency": 4, "requests_per_second": None,
                  "max_retries": 0},
        "prompt_format_hash": load_judge_prompts().fingerprint,
    }  # fmt: skip
    # The header is RunManifest's, so generic readers (correlate, report's dispatch) read it unchanged.
    header = RunManifest.model_validate(manifest_of(run))
    assert (header.kind, header.task, [(e.role, e.base_url, e.model) for e in header.endpoints]) == (
        "mtbench", "mt_bench", [("baseline", stubs.base.url, "base-m"), ("candidate", stubs.cand.url, "cand-m")],
    )  # fmt: skip

    # Read back with no flags and an empty config: everything comes from the manifest.
    settings, _ = resumed_settings(MtRunPaths(run), MtBenchOptions(resume=run), parse_config({}))
    assert settings.baseline == EndpointSpec(
        base_url=stubs.base.url, model="base-m", api_key_env="BASE_KEY", timeout_s=30, max_concurrency=1,
        requests_per_second=50, max_retries=0,
    )  # fmt: skip
    assert settings.candidate == settings.baseline.model_copy(
        update={"base_url": stubs.cand.url, "model": "cand-m", "api_key_env": "CAND_KEY"}
    )
    assert settings.judge == EndpointSpec(base_url=stubs.judge.url, model="judge-m", max_retries=0)
    assert (settings.mode, settings.max_tokens, settings.categories, settings.limit) == ("single", 48,
                                                                                           ["writing", "math"], None)
    assert (settings.judge_is_baseline, settings.judge_force_format, settings.judge_max_tokens) == (False, False, 2048)
    assert settings.stems == {"baseline": "base-m", "candidate": "cand-m"}
    assert [q.question_id for q in settings.questions] == [1, 2]
    # Pacing flags apply to this invocation only.
    paced, _ = resumed_settings(
        MtRunPaths(run), MtBenchOptions(resume=run, rps=100, retries=1, judge_rps=3), parse_config({})
    )
    assert (paced.baseline.requests_per_second, paced.candidate.max_retries) == (100, 1)
    assert paced.judge.requests_per_second == 3 and paced.baseline.max_concurrency == 1

    stubs.cand.state.fail_after = None
    before = settled_count(stubs.cand.state)  # a request abandoned at the stop may arrive late
    answers = run / "model_answer" / "cand-m.jsonl"
    saved = sum(1 for _ in answers.open()) if answers.exists() else 0
    s = ok(["mtbench", "--resume", str(run), "--rps", "100", "--json"])
    assert s["complete"] is True and s["mode"] == "single"
    assert s["endpoints"]["candidate"]["score"] == {"mean": 6.0, "n": 4}
    resumed = stubs.cand.state.chat_requests[before:]
    # Only unfinished questions are asked again, as the first invocation would have asked them.
    assert len(resumed) == 2 * (2 - saved) and {r["max_tokens"] for r in resumed} == {48}
    temperature = {"Write a poem.": 0.7, "What is 2+2?": 0.0}  # FastChat's, by category
    assert all(r["temperature"] == temperature[r["messages"][0]["content"]] for r in resumed)
    # The key named in the manifest was read from the environment again, and sent.
    assert set(stubs.cand.state.authorizations[before:]) == {"Bearer cand-secret"}
    assert set(stubs.base.state.authorizations) == {"Bearer base-secret"}
    assert set(stubs.judge.state.authorizations) == {"Bearer EMPTY"}
    after = manifest_of(run)
    assert after["finished_at"] is not None
    assert after["endpoints"][0]["requests_per_second"] == 50.0  # the run's own settings stay recorded
    text = all_run_text(run)
    assert "base-secret" not in text and "cand-secret" not in text


def test_resume_refuses_each_changing_flag_by_name_and_lists_the_accepted_ones(stubs: Stubs) -> None:
    ok(stubs.args("--mode", "single"))
    run = only_run(stubs)
    calls = (stubs.base.state.n_chat, stubs.cand.state.n_chat, stubs.judge.state.n_chat)
    result = invoke([
        "mtbench", "--resume", str(run), "--max-tokens", "64", "--judge-model", "other", "--baseline-key-env",
        "K", "--rps", "9", "--show", "1",
    ])  # fmt: skip
    assert isinstance(result.exception, UserError)
    # The one resume policy of every run kind (servecmp.runstore.refuse_on_resume), MCQ's wording.
    assert str(result.exception) == (
        f"cannot resume {run} with --max-tokens, --baseline-key-env, --judge-model: a resumed run takes every "
        f"setting that decides its results from its manifest; drop those flags (with --resume only {ACCEPTED} "
        "apply) or start a new run"
    )
    assert (stubs.base.state.n_chat, stubs.cand.state.n_chat, stubs.judge.state.n_chat) == calls
    assert ", ".join(ACCEPTED_ON_RESUME) == ACCEPTED
    # --help says the same (servecmp._cli.mtbench spells it out so that --help imports nothing heavy).
    from servecmp._cli.mtbench import RESUME_HELP

    assert f"These apply: {ACCEPTED} (only for" in RESUME_HELP


def test_resume_with_another_mode_adds_the_judging_and_records_it(stubs: Stubs) -> None:
    ok(stubs.args("--mode", "single"))
    run = only_run(stubs)
    assert stubs.judge.state.n_chat == 12
    s = ok(["mtbench", "--resume", str(run), "--mode", "both", "--json"])
    assert stubs.judge.state.n_chat == 24  # the 12 pairwise games; no single grading repeated
    assert s["mode"] == "both" and s["pairwise"]["n"] == 6 and s["complete"] is True
    assert manifest_of(run)["mode"] == "both"
    assert load_summary(run).model_dump(mode="json") == s


def test_summary_from_disk_needs_no_key_and_equals_the_runs_own(
    stubs: Stubs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STUB_JUDGE_KEY", "sk-test-secret")
    own = ok(stubs.args("--judge-key-env", "STUB_JUDGE_KEY", "--yes"))
    run = only_run(stubs)
    monkeypatch.delenv("STUB_JUDGE_KEY")
    calls = (stubs.base.state.n_chat, stubs.cand.state.n_chat, stubs.judge.state.n_chat)

    summary = load_summary(run)
    assert summary.model_dump(mode="json") == own == json.loads((run / "summary.json").read_text())
    assert (summary.endpoints["baseline"].score.mean, summary.endpoints["candidate"].score.mean) == (8.0, 7.0)
    assert summary.delta.point == pytest.approx(-1.0)
    assert (stubs.base.state.n_chat, stubs.cand.state.n_chat, stubs.judge.state.n_chat) == calls
    assert [d.question_id for d in load_summary(run, show=1).largest_drops] == [1]

    # `servecmp report RUN_DIR`: the same numbers from the command line, still with no key.
    result = invoke(["report", str(run), "--json"])
    assert result.exception is None and result.exit_code == 0, result.output
    assert json.loads(result.stdout) == own
    result = invoke(["report", str(run), "--show", "1"])
    assert result.exception is None and result.exit_code == 0, result.output
    assert "MT-Bench score" in result.stdout and "Largest drops (up to 1)" in result.stdout
    assert "Question 1 (writing)" in result.stdout and "Question 2 (math)" not in result.stdout
    assert (stubs.base.state.n_chat, stubs.cand.state.n_chat, stubs.judge.state.n_chat) == calls

    console = Console(record=True, width=160)
    render(console, summary, show=2)
    out = console.export_text()
    assert "MT-Bench score" in out and "8.00" in out and "7.00" in out
    assert "Largest drops (up to 2)" in out and "Question 1 (writing)" in out


def test_summary_of_a_run_with_nothing_judged_yet(stubs: Stubs) -> None:
    ok(stubs.args("--max-judge-calls", "0"))
    s = load_summary(only_run(stubs))
    assert (s.complete, s.endpoints["baseline"].score.n, s.delta.point, s.largest_drops) == (False, 0, None, [])
    assert s.single_judgments.missing == 12 and s.pair_judgments is not None and s.pair_judgments.missing == 12
    console = Console(record=True, width=160)
    render(console, s, show=5)
    assert "[run incomplete: resume it to fill the missing or failed judgments]" in console.export_text()


def test_ctrl_c_names_the_run_directory_and_resume_finishes_it(
    stubs: Stubs, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def interrupted(*args: object) -> None:
        raise KeyboardInterrupt  # what asyncio.run turns a Ctrl-C into

    with monkeypatch.context() as patch:
        patch.setattr(mtrun, "_judge", interrupted)
        result = invoke(stubs.args())
    run = only_run(stubs)
    assert isinstance(result.exception, RunInterrupted) and result.exception.exit_code == 130
    assert str(result.exception) == (
        f"interrupted; finished answers and judgments are saved in {run}; "
        f"resume with: servecmp mtbench --resume {run}"
    )
    assert stubs.judge.state.n_chat == 0
    s = ok(["mtbench", "--resume", str(run), "--json"])
    assert s["complete"] is True and s["delta"]["point"] == pytest.approx(-1.0)
    assert stubs.base.state.n_chat == stubs.cand.state.n_chat == 6


def v1_manifest(v2: dict[str, Any]) -> dict[str, Any]:
    """What the first MT-Bench runs wrote: RunManifest with its settings as strings in `extra`."""
    return {
        "kind": "mtbench", "servecmp_version": v2["servecmp_version"], "task": "mt_bench",
        "task_fingerprint": v2["task_fingerprint"], "prompt_format_hash": v2["prompt_format_hash"],
        "n_items": v2["n_items"], "limit": None, "seed": 0, "source": v2["source"],
        "endpoints": [{k: e[k] for k in ("role", "base_url", "model")} for e in v2["endpoints"]],
        "started_at": v2["started_at"], "finished_at": v2["finished_at"],
        "extra": {
            "references": v2["references"], "categories": "", "max_tokens": "1024", "mode": "both",
            "baseline_api_key_env": "", "candidate_api_key_env": "", "baseline_answer_file": "base-m",
            "candidate_answer_file": "cand-m", "judge_url": v2["judge"]["url"], "judge_model": "judge-m",
            "judge_api_key_env": "", "judge_force_format": "false", "judge_max_tokens": "2048",
        },
    }  # fmt: skip


def test_version_1_manifest_is_read_and_resume_rewrites_it_as_version_2(stubs: Stubs) -> None:
    own = ok(stubs.args())
    run = only_run(stubs)
    v2 = manifest_of(run)
    (run / "manifest.json").write_text(json.dumps(v1_manifest(v2)))
    assert load_summary(run).model_dump(mode="json") == own

    calls = stubs.judge.state.n_chat
    again = ok(["mtbench", "--resume", str(run), "-c", str(stubs.config), "--json"])
    assert again == own and stubs.judge.state.n_chat == calls
    # The config supplies the pacing version 1 did not record; here it is the one the run used.
    assert manifest_of(run) == v2


def test_unreadable_manifests_are_one_line(stubs: Stubs, tmp_path: Path) -> None:
    ok(stubs.args("--mode", "single"))
    run = only_run(stubs)
    m = manifest_of(run)
    (run / "manifest.json").write_text(json.dumps({**m, "version": 4}))
    with pytest.raises(UserError, match=r"has manifest version 4; this servecmp reads up to 3 \(upgrade it\)$"):
        load_summary(run)
    (run / "manifest.json").write_text(json.dumps({**m, "kind": "mcq"}))
    with pytest.raises(UserError, match=r" is a mcq run, not an MT-Bench run$"):
        load_summary(run)
    (run / "manifest.json").write_text(json.dumps({**m, "mode": "al"}))
    result = invoke(["mtbench", "--resume", str(run)])
    assert isinstance(result.exception, UserError)
    assert str(result.exception).startswith(f"{run / 'manifest.json'}: not an MT-Bench manifest (mode: Input")
    with pytest.raises(UserError, match="is not a directory"):
        load_summary(tmp_path / "nowhere")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "servecmp", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)  # fmt: skip


def test_mode_typo_fails_in_the_parser_with_one_line() -> None:
    proc = _cli("mtbench", "--mode", "singel", "--baseline", "http://127.0.0.1:9")
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("servecmp: error: Invalid value for '--mode'"), proc.stderr
    assert "'singel' is not one of 'single', 'pairwise', 'both'" in lines[0]


def test_mode_typo_in_the_config_file_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "servecmp.toml"
    config.write_text("[mtbench]\nmode = 'al'\n")
    result = invoke(["mtbench", "-c", str(config), "--baseline", "http://b", "--candidate", "http://c"])
    assert isinstance(result.exception, UserError)
    assert str(result.exception) == f"{config}: mtbench.mode: Input should be 'single', 'pairwise' or 'both'"


def test_cli_module_imports_nothing_heavy() -> None:
    code = (
        "import sys, servecmp._cli.mtbench\n"
        "heavy = ('servecmp.mtbench', 'servecmp.config', 'servecmp.endpoints', 'servecmp.judges', 'pydantic',"
        " 'openai', 'httpx', 'numpy', 'scipy', 'rich.table')\n"
        "print(sorted(m for m in sys.modules if m.startswith(heavy)))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_key_variable_flags_fail_before_any_call_naming_the_variable(
    stubs: Stubs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    result = invoke(stubs.args("--candidate-key-env", "NO_SUCH_KEY"))
    assert isinstance(result.exception, UserError)
    assert str(result.exception) == "environment variable NO_SUCH_KEY (candidate API key) is not set"
    # The judge's old flag name still works (hidden) and names the judge.
    result = invoke(stubs.args("--judge-api-key-env", "NO_SUCH_KEY", "--yes"))
    assert isinstance(result.exception, UserError)
    assert str(result.exception).startswith("environment variable NO_SUCH_KEY (judge API key) is not set; set it")
    result = invoke(stubs.args("--judge-api-key-env", "A", "--judge-key-env", "B"))
    assert isinstance(result.exception, UserError) and "--judge-key-env" in str(result.exception)
    demo_with_key = MtBenchOptions(baseline=stubs.base.url, candidate=stubs.cand.url, judge_url="baseline",
                                   judge_key_env="K")  # fmt: skip
    with pytest.raises(UserError, match=r"^--judge-key-env does not apply to --judge-url baseline"):
        new_settings(demo_with_key, parse_config({}))
    assert stubs.base.state.n_chat == stubs.cand.state.n_chat == stubs.judge.state.n_chat == 0


def test_judge_url_typo_is_one_line(stubs: Stubs) -> None:
    args = stubs.args()
    args[args.index("--judge-url") + 1] = "htp:/judge"
    result = invoke(args)
    assert isinstance(result.exception, UserError)
    assert str(result.exception) == (
        "--judge-url: 'htp:/judge' is not an endpoint URL (expected http[s]://host[:port][/v1]), "
        "or 'baseline' for the offline demo judge"
    )
