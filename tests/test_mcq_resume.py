"""`servecmp mcq --resume`: every setting comes back from the manifest (pacing included, when not
given), a flag that decides results is refused in one line whatever its value, pacing flags apply
to that invocation only (MT-Bench's policy), and version-1 manifests still resume.

End-to-end cases run servecmp in a subprocess against in-process stub endpoints, so the stubs can
observe the traffic the resumed run sends (how many requests in flight, how many retries).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from servecmp.endpoints import EndpointSpec
from servecmp.errors import UserError
from servecmp.mcq.settings import (
    McqManifest,
    McqOptions,
    McqSettings,
    NamedEndpoint,
    new_manifest,
    read_manifest,
    resumed_settings,
    write_manifest,
)
from servecmp.tasks.registry import TaskData
from tests.stub_openai import StubState, ThreadedApp, make_app
from tests.test_mcq_cli import ROOT, assert_one_line_error, only_run_dir, records, servecmp, write_items


class CountingStub(ThreadedApp):
    """The stub of tests/stub_openai.py, also counting requests in flight at once."""

    def __init__(self, state: StubState) -> None:
        self.state = state
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        inner = make_app(state)

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await inner(scope, receive, send)
                return
            with self._lock:
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                await inner(scope, receive, send)
            finally:
                with self._lock:
                    self.in_flight -= 1

        super().__init__(app)

    def reset(self) -> None:
        with self._lock:
            self.max_in_flight = 0
            self.state.requests.clear()


PACING = ["--concurrency", "2", "--timeout", "30", "--retries", "1", "--rps", "50"]


def _start_and_kill(args: list[str], runs: Path, at_least: int) -> Path:
    """Start `servecmp mcq args`, kill -9 it once `at_least` records are on disk."""
    proc = subprocess.Popen([sys.executable, "-m", "servecmp", "mcq", *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            if runs.exists() and any(runs.iterdir()):
                rec = only_run_dir(runs) / "records.jsonl"
                if rec.exists() and len(rec.read_text().splitlines()) >= at_least:
                    break
            time.sleep(0.02)
        else:
            raise AssertionError("the run wrote no records in time")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    return only_run_dir(runs)


def test_resume_after_kill_restores_pacing_and_refuses_a_results_flag(tmp_path: Path) -> None:
    data = tmp_path / "items.jsonl"
    write_items(data, 16)
    runs = tmp_path / "runs"
    # 0.2 s per request: two requests of the same endpoint overlap whenever two workers run.
    with CountingStub(StubState(model="base", delay_s=0.2)) as b, \
            CountingStub(StubState(model="cand", delay_s=0.2)) as c:
        run_dir = _start_and_kill(["--baseline", b.url, "--candidate", c.url, "--task", f"jsonl:{data}",
                                   "--runs-dir", str(runs), "--top-k", "5", *PACING], runs, at_least=6)
        before = records(run_dir)
        assert 6 <= len(before) < 32

        # 1. Read back from the manifest: every pacing setting, typed, for both endpoints.
        manifest = json.loads((run_dir / "manifest.json").read_text())
        assert (manifest["kind"], manifest["version"]) == ("mcq", 3)
        for e in manifest["endpoints"]:
            assert (e["max_concurrency"], e["timeout_s"], e["requests_per_second"], e["max_retries"]) == (2, 30.0,
                                                                                                        50.0, 1)
        assert {e["role"]: (e["base_url"], e["model"]) for e in manifest["endpoints"]} == {
            "baseline": (b.url, "base"), "candidate": (c.url, "cand")}
        assert (manifest["task"], manifest["source"], manifest["fewshot"], manifest["top_k"]) == (
            f"jsonl:{data}", "jsonl", 0, 5)
        assert (manifest["sample"], manifest["limit"], manifest["seed"], manifest["finished_at"]) == (
            None, None, 0, None)

        # 2. A flag that decides results is refused even with the stored value (--top-k 5), all of
        # them in one line; a pacing flag (--rps) is not named. Nothing is sent, nothing is written.
        b.reset()
        refused = servecmp("mcq", "--resume", str(run_dir), "--concurrency", "3", "--rps", "50", "--top-k", "5",
                           "--seed", "0", "--json")
        assert_one_line_error(refused, f"cannot resume {run_dir} with --seed, --top-k: ")
        assert refused.stderr.split(f"{run_dir} with ")[1].split(": ")[0] == "--seed, --top-k" and (
            "only --concurrency, --max-concurrency, --rps, --timeout, --retries, --json, --show, --gate, "
            "--summary-md apply"
            in refused.stderr)
        assert b.state.requests == [] and records(run_dir) == before

        # 3. Observed in the resumed run: it prints its pacing, keeps two requests in flight per
        # endpoint (the default is 4), and gives up after one retry (the default is 4): the candidate
        # answers its first three item requests with 503, so with two workers one item must get two.
        # /v1/models and the capability probe (completions, chat, one echo per option of the four, top-k
        # on an item) go through.
        c.state.script = [None] * 8 + [503, 503, 503]
        b.reset()
        failed = servecmp("mcq", "--resume", str(run_dir), "--json")
        assert failed.returncode == 3, failed.stderr
        assert "candidate endpoint failed" in failed.stderr and "(after 1 retries)" in failed.stderr
        for role, stub, model in (("baseline", b, "base"), ("candidate", c, "cand")):
            assert (f"{role}: {model} at {stub.url} (concurrency 2, rps 50, timeout 30 s, retries 1)"
                    in failed.stderr)
        assert b.max_in_flight == 2

        # 4. The next resume, with --concurrency 1 for this invocation, finishes the run: one request
        # in flight, nothing redone, nothing duplicated, and the manifest still records 2.
        b.reset()
        done = servecmp("mcq", "--resume", str(run_dir), "--concurrency", "1", "--json")
        assert done.returncode == 0, done.stderr
        assert "(concurrency 1, rps 50, timeout 30 s, retries 1)" in done.stderr
        assert b.max_in_flight == 1
    after = records(run_dir)
    keys = Counter((r["item_id"], r["endpoint"]) for r in after)
    assert len(keys) == 32 and max(keys.values()) == 1
    assert after[: len(before)] == before
    assert json.loads(done.stdout)["flips"]["n"] == 16
    final = json.loads((run_dir / "manifest.json").read_text())
    assert final["finished_at"] is not None
    assert {k: v for k, v in final.items() if k != "finished_at"} == {
        k: v for k, v in manifest.items() if k != "finished_at"}


# --- the policy, without endpoints -------------------------------------------------------------


def _task_data(n: int = 3) -> TaskData:
    return TaskData(name="jsonl:/data/set.jsonl", items=[], source="JSONL file /data/set.jsonl",
                    fingerprint="f" * 16, prompt_format_hash="p" * 16, source_kind="jsonl", fewshot=0,
                    n_available=n)


def _stored_run(tmp_path: Path, **pacing: Any) -> Path:
    settings = McqSettings(
        baseline=EndpointSpec(base_url="http://gpu-a:8000", model="m-base", api_key_env="BASE_KEY",
                              **pacing.get("baseline", {})),
        candidates=[NamedEndpoint(base_url="http://gpu-b:8000/v1", model="m-cand", **pacing.get("candidate", {}))],
        task="jsonl:/data/set.jsonl", sample=50, seed=3, top_k=10, runs_dir=tmp_path / "runs",
    )
    run_dir = tmp_path / "runs" / "mcq-x"
    run_dir.mkdir(parents=True)
    write_manifest(run_dir, new_manifest(settings, _task_data()))
    return run_dir


def test_resumed_settings_are_the_manifests(tmp_path: Path) -> None:
    run_dir = _stored_run(tmp_path, candidate={"max_concurrency": 8, "requests_per_second": 20.0})
    settings, manifest = resumed_settings(McqOptions(resume=run_dir))
    assert settings.baseline == EndpointSpec(base_url="http://gpu-a:8000/v1", model="m-base", api_key_env="BASE_KEY")
    assert settings.candidate == NamedEndpoint(base_url="http://gpu-b:8000/v1", model="m-cand", max_concurrency=8,
                                               requests_per_second=20.0, name="candidate")
    assert settings.candidates == [settings.candidate] and settings.secondary is None and settings.noise_floor is None
    assert (settings.task, settings.sample, settings.limit, settings.seed, settings.top_k) == (
        "jsonl:/data/set.jsonl", 50, None, 3, 10)
    assert (settings.source, settings.fewshot, settings.runs_dir) == ("jsonl", 0, tmp_path / "runs")
    assert manifest.pacing_recorded


def test_pacing_flags_apply_to_this_invocation(tmp_path: Path) -> None:
    run_dir = _stored_run(tmp_path, candidate={"max_concurrency": 8, "requests_per_second": 20.0})
    settings, _ = resumed_settings(McqOptions(resume=run_dir, concurrency=2, timeout=30.0))
    for spec in (settings.baseline, settings.candidate):
        assert (spec.max_concurrency, spec.timeout_s) == (2, 30.0)
    # Not given: the manifest's own, per endpoint.
    assert (settings.baseline.requests_per_second, settings.candidate.requests_per_second) == (None, 20.0)
    assert settings.candidate.name == "candidate"
    # The manifest is not changed by them.
    assert read_manifest(run_dir).endpoint("candidate").max_concurrency == 8


def test_results_flags_are_refused_even_with_the_stored_value(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = _stored_run(tmp_path)
    monkeypatch.chdir(tmp_path)
    # The original command line with --resume added is refused: --resume takes them from the manifest.
    same = McqOptions(resume=run_dir, baseline="http://gpu-a:8000/v1/", candidate="http://gpu-b:8000",
                      baseline_model="m-base", baseline_key_env="BASE_KEY", task="jsonl:/data/set.jsonl",
                      sample=50, seed=3, top_k=10, concurrency=4, timeout=120.0, retries=4, runs_dir=Path("runs"))
    with pytest.raises(UserError) as err:
        resumed_settings(same)
    assert str(err.value).startswith(
        f"cannot resume {run_dir} with --baseline, --baseline-model, --baseline-key-env, --candidate, --task, "
        "--sample, --seed, --top-k, --runs-dir: ")


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ({"baseline": "http://gpu-c:8000"}, "--baseline"),
        ({"candidate": ["http://gpu-c:8000"]}, "--candidate"),
        ({"candidate_model": "other"}, "--candidate-model"),
        ({"candidate_key_env": "CAND_KEY"}, "--candidate-key-env"),
        ({"candidate_name": ["x"]}, "--candidate-name"),
        ({"secondary": "http://gpu-c:8000"}, "--secondary"),
        ({"noise_floor": 5}, "--noise-floor"),
        ({"task": "mmlu"}, "--task"),
        ({"data_dir": "/data"}, "--data-dir"),
        ({"source": "hf"}, "--source"),
        ({"fewshot": 2}, "--fewshot"),
        ({"limit": 50}, "--limit"),
        ({"sample": 40}, "--sample"),
        ({"seed": 0}, "--seed"),
        ({"top_k": 20}, "--top-k"),
        ({"runs_dir": Path("/elsewhere")}, "--runs-dir"),
        ({"config": Path("servecmp.toml")}, "-c/--config"),
    ],
)
def test_each_results_flag_is_refused(tmp_path: Path, given: dict[str, Any], named: str) -> None:
    run_dir = _stored_run(tmp_path, candidate={"max_concurrency": 8})
    with pytest.raises(UserError) as err:
        resumed_settings(McqOptions(resume=run_dir, **given))
    message = str(err.value)
    assert message.startswith(f"cannot resume {run_dir} with {named}: a resumed run takes every setting")
    assert "\n" not in message and message.endswith(
        "drop that flag (with --resume only --concurrency, --max-concurrency, --rps, --timeout, --retries, --json, "
        "--show, --gate, "
        "--summary-md apply) or start a new run")


def test_resume_help_names_the_accepted_flags() -> None:
    from servecmp._cli.mcq import RESUME_HELP
    from servecmp.mcq.settings import ACCEPTED_ON_RESUME

    assert RESUME_HELP.endswith(", ".join(ACCEPTED_ON_RESUME) + ".")


def test_unreadable_manifests_are_one_line(tmp_path: Path) -> None:
    run_dir = _stored_run(tmp_path)
    raw = json.loads((run_dir / "manifest.json").read_text())
    (run_dir / "manifest.json").write_text(json.dumps({**raw, "version": 4}))
    with pytest.raises(UserError, match=r"has manifest version 4; this servecmp \(.+\) reads versions 1 to 3: "
                                        r"upgrade servecmp$"):
        read_manifest(run_dir)
    (run_dir / "manifest.json").write_text(json.dumps({**raw, "kind": "mtbench"}))
    with pytest.raises(UserError, match=r"is a mtbench run, not an mcq run$"):
        read_manifest(run_dir)
    (run_dir / "manifest.json").write_text(json.dumps({**raw, "top_k": "many"}))
    with pytest.raises(UserError, match=r"manifest.json: not a valid MCQ manifest \(top_k: "):
        read_manifest(run_dir)


# --- version-1 manifests ------------------------------------------------------------------------


def v1_manifest(v2: dict[str, Any], *, data_dir: str = "") -> dict[str, Any]:
    """The manifest servecmp wrote before issue 8, for the same run (its exact layout)."""
    return {
        "kind": "mcq", "servecmp_version": "0.1.0", "task": v2["task"], "task_fingerprint": v2["task_fingerprint"],
        "prompt_format_hash": v2["prompt_format_hash"], "n_items": v2["n_items"], "limit": v2["sample"],
        "seed": v2["seed"], "source": v2["source_description"],
        "endpoints": [{"role": e["role"], "base_url": e["base_url"], "model": e["model"]} for e in v2["endpoints"]],
        "started_at": v2["started_at"], "finished_at": v2["finished_at"],
        "extra": {"data_dir": data_dir, "top_k": str(v2["top_k"]),
                  "baseline_api_key_env": v2["endpoints"][0]["api_key_env"] or "",
                  "candidate_api_key_env": v2["endpoints"][1]["api_key_env"] or ""},
    }


def test_a_version_1_manifest_is_upgraded_on_read(tmp_path: Path) -> None:
    run_dir = _stored_run(tmp_path)
    v2 = json.loads((run_dir / "manifest.json").read_text())
    (run_dir / "manifest.json").write_text(json.dumps(v1_manifest(v2)))
    m = read_manifest(run_dir)
    assert not m.pacing_recorded
    # Everything version 1 held carries over; pacing (not recorded then) is EndpointSpec's default.
    assert m.model_dump(exclude={"servecmp_version"}) == McqManifest.model_validate(v2).model_dump(
        exclude={"servecmp_version"})
    settings, _ = resumed_settings(McqOptions(resume=run_dir, concurrency=2, rps=5.0))
    # No pacing to conflict with: the flags set it, for both endpoints.
    pacing = [(s.max_concurrency, s.requests_per_second, s.timeout_s) for s in (settings.baseline, settings.candidate)]
    assert pacing == [(2, 5.0, 120.0)] * 2
    with pytest.raises(UserError, match=r"with --sample: "):
        resumed_settings(McqOptions(resume=run_dir, sample=10))


def test_a_version_1_run_resumes_end_to_end(tmp_path: Path) -> None:
    data = tmp_path / "items.jsonl"
    write_items(data, 8)
    runs = tmp_path / "runs"
    with CountingStub(StubState(model="base")) as b, CountingStub(StubState(model="cand")) as c:
        first = servecmp("mcq", "--baseline", b.url, "--candidate", c.url, "--task", f"jsonl:{data}",
                         "--runs-dir", str(runs), "--top-k", "5", "--sample", "6", "--seed", "1", "--json")
        assert first.returncode == 0, first.stderr
        run_dir = only_run_dir(runs)
        v2 = json.loads((run_dir / "manifest.json").read_text())
        # As an interrupted version-1 run: its manifest layout, and the last three records missing.
        (run_dir / "manifest.json").write_text(json.dumps(v1_manifest({**v2, "finished_at": None})))
        lines = (run_dir / "records.jsonl").read_text().splitlines(keepends=True)
        (run_dir / "records.jsonl").write_text("".join(lines[:-3]))
        # `servecmp report` reads a version-1 run as it is (nothing rewritten but summary.json).
        reported = servecmp("report", str(run_dir), "--json")
        assert reported.returncode == 0, reported.stderr
        assert json.loads(reported.stdout)["run"]["complete"] is False
        assert "version" not in json.loads((run_dir / "manifest.json").read_text())
        b.reset()
        again = servecmp("mcq", "--resume", str(run_dir), "--concurrency", "1", "--json")
        assert again.returncode == 0, again.stderr
    assert b.max_in_flight == 1
    upgraded = json.loads((run_dir / "manifest.json").read_text())
    assert upgraded["version"] == 3 and upgraded["finished_at"] is not None
    assert [e["max_concurrency"] for e in upgraded["endpoints"]] == [1, 1]
    same = ("task", "task_fingerprint", "prompt_format_hash", "n_items", "sample", "seed", "top_k", "source",
            "fewshot", "started_at")
    assert {k: upgraded[k] for k in same} == {k: v2[k] for k in same}
    assert len({(r["item_id"], r["endpoint"]) for r in records(run_dir)}) == 12
    assert json.loads(again.stdout)["flips"] == json.loads(first.stdout)["flips"]


def test_no_key_reaches_the_run_directory(tmp_path: Path) -> None:
    data = tmp_path / "items.jsonl"
    write_items(data, 3)
    runs = tmp_path / "runs"
    secret = "sk-test-4f9c2e7d1b"
    env = {**os.environ, "BASE_KEY": secret, "COLUMNS": "200"}
    with CountingStub(StubState(model="base")) as b, CountingStub(StubState(model="cand")) as c:
        proc = subprocess.run([sys.executable, "-m", "servecmp", "mcq", "--baseline", b.url, "--candidate", c.url,
                               "--baseline-key-env", "BASE_KEY", "--task", f"jsonl:{data}", "--runs-dir", str(runs),
                               "--top-k", "5"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr
        # The key did go to the endpoint it belongs to...
        assert b.state.requests[0]["headers"]["authorization"] == f"Bearer {secret}"
    run_dir = only_run_dir(runs)
    # ...and only the variable's name is stored or shown.
    assert [e["api_key_env"] for e in json.loads((run_dir / "manifest.json").read_text())["endpoints"]] == [
        "BASE_KEY", None]
    assert "key from $BASE_KEY" in proc.stdout
    for path in run_dir.iterdir():
        assert secret not in path.read_text(), path
    assert secret not in proc.stdout + proc.stderr
