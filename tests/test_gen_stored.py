"""Stored baselines for `servecmp gen` (`--baseline-run`, `--baseline-only`, `--baseline-check`)
against the scripted stub endpoints of tests/gen_stub.py: joining a profile gives the joint run's
records and summary, the baseline is asked nothing, each mismatch and a drifted baseline are
refused in one line, and a resume repeats nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests import test_gen_run
from tests.gen_stub import GenStubState, tokenize
from tests.test_gen_run import BASE, PROMPTS, exact_kl, run_gen, write_task
from tests.test_mcq_cli import assert_one_line_error, only_run_dir, servecmp

#: The scripted base/cand stubs of tests/test_gen_run.py (its hand-worked answers).
pair = test_gen_run.pair

#: Fields of a gen record that do not depend on timing.
SAME = ("item_id", "endpoint", "sample", "text", "answer", "gold", "correct", "answer_flexible", "correct_flexible",
        "finish_reason", "completion_tokens", "token_ids")


def _flat(text: str) -> str:
    """Without whitespace: the console wraps long paths wherever the terminal width falls."""
    return "".join(text.split())


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def _generations(state: GenStubState) -> list[str]:
    """The prompts of generation requests (teacher forcing sends token ids, the probe "Hello")."""
    return [r["body"]["prompt"] for r in state.requests if r["path"] == "/v1/completions"
            and isinstance(r["body"].get("prompt"), str) and r["body"]["prompt"] in PROMPTS.values()]


def _forced(state: GenStubState) -> int:
    return sum(1 for r in state.requests
               if r["path"] == "/v1/completions" and isinstance(r["body"].get("prompt"), list))


def _profile(tmp_path: Path, url: str, task: Path, *extra: str, name: str = "profile") -> Path:
    code, out, _ = run_gen("--baseline", url, "--baseline-only", "--task", f"jsonl:{task}", "--runs-dir",
                           str(tmp_path / name), "--top-k", "5", *extra)
    assert code == 0, out
    profile = only_run_dir(tmp_path / name)
    assert _flat(f"baseline profile: {profile}; compare candidates with it: servecmp gen --baseline-run {profile}"
                 ) in _flat(out)
    return profile


def test_joined_profile_equals_joint_run_and_asks_the_baseline_nothing(tmp_path: Path, pair: Any) -> None:
    b, c = pair
    task = write_task(tmp_path / "task.jsonl")
    code, _, _ = run_gen("--baseline", b.url, "--candidate", c.url, "--task", f"jsonl:{task}", "--runs-dir",
                         str(tmp_path / "joint"), "--top-k", "5")
    assert code == 0
    profile = _profile(tmp_path, b.url, task)
    # The profile: the baseline's 4 answers and its own teacher-forcing rows (4 prompt_logprobs requests).
    assert [r["endpoint"] for r in _lines(profile / "records.jsonl")] == ["baseline"] * 4
    assert len(_lines(profile / "baseline_forcing.jsonl")) == 4
    b.state.requests.clear()
    c.state.requests.clear()
    code, out, _ = run_gen("--baseline-run", str(profile), "--candidate", c.url, "--runs-dir", str(tmp_path / "s"))
    assert code == 0, out
    assert b.state.requests == []  # no --baseline: the stored records are the baseline's answers
    assert sorted(_generations(c.state)) == sorted(PROMPTS.values()) and _forced(c.state) == 4
    joint, joined = only_run_dir(tmp_path / "joint"), only_run_dir(tmp_path / "s")

    def per_item(d: Path) -> dict[tuple[str, str, int], tuple[object, ...]]:
        return {(r["endpoint"], r["item_id"], r["sample"]): tuple(r.get(k) for k in SAME)
                for r in _lines(d / "records.jsonl")}

    assert per_item(joint) == per_item(joined) and len(per_item(joined)) == 8
    tf_a = {(r["endpoint"], r["item_id"]): r for r in _lines(joint / "teacher_forcing.jsonl")}
    tf_b = {(r["endpoint"], r["item_id"]): r for r in _lines(joined / "teacher_forcing.jsonl")}
    assert tf_a == tf_b
    # Against the stub's known distributions (independent of both runs): KL(base ‖ cand) per token.
    for item, prompt in zip("abcd", PROMPTS.values(), strict=True):
        ids = tokenize(prompt) + tokenize(BASE[prompt])
        assert tf_b[("candidate", item)]["kl"] == pytest.approx(exact_kl("base", "cand", ids, len(tokenize(prompt))),
                                                                abs=1e-8)
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (joint, joined))
    assert sa["endpoints"] == sb["endpoints"] and sa["candidates"] == sb["candidates"]
    assert sa["floors"] == sb["floors"] == [] and sa["notes"] == sb["notes"]
    run_a, run_b = sa.pop("run"), sb.pop("run")
    info = run_b.pop("stored_baseline")
    for r in (run_a, run_b):
        del r["started_at"], r["finished_at"]
    run_a.pop("stored_baseline")
    assert run_a == run_b
    manifest = json.loads((joined / "manifest.json").read_text())
    assert manifest["stored_baseline"] == info
    assert (info["run_dir"], info["model"], info["base_url"], info["check"]) == (str(profile), "base", b.url, None)
    assert manifest["baseline_only"] is False
    assert _flat(f"baseline: stored run {profile} (base at {b.url}, made ") in _flat(out)
    assert _flat("4 stored records joined") in _flat(out)
    # `servecmp report` of the joined run names the stored run, on the terminal and in the HTML page.
    report = servecmp("report", str(joined), "--html", str(tmp_path / "r.html"))
    assert report.returncode == 0, report.stderr
    assert _flat(f"baseline: stored run {profile} (base at {b.url}, made ") in _flat(report.stdout)
    assert f"run {profile}, made " in (tmp_path / "r.html").read_text()
    # A profile has nothing to compare: `servecmp report` says so in one line.
    assert_one_line_error(servecmp("report", str(profile)), "is a baseline profile (--baseline-only)")


def test_each_mismatch_refused_in_one_line(tmp_path: Path, pair: Any) -> None:
    b, c = pair
    task = write_task(tmp_path / "task.jsonl")
    profile = _profile(tmp_path, b.url, task)
    sampled = _profile(tmp_path, b.url, task, "--samples", "2", "--temperature", "0.7", "--seed", "1",
                       name="sampled")
    untaught = _profile(tmp_path, b.url, task, "--no-teacher-forcing", name="untaught")
    pre = f"--baseline-run {profile}: refused, the stored baseline"
    cases = [
        (profile, ["--api", "chat"], f"{pre} was asked through completions, this run --api chat"),
        (profile, ["--max-tokens", "100"], f"{pre} generated at most 256 tokens, this run --max-tokens 100"),
        (profile, ["--samples", "2", "--temperature", "0.7"], f"{pre} drew 1 sample per item, this run --samples 2"),
        (profile, ["--temperature", "0.5"], f"{pre} sampled at temperature 0, this run --temperature 0.5"),
        (profile, ["--top-k", "6"], f"{pre} read the top 5 logprobs, this run --top-k 6"),
        (profile, ["--limit", "3"], f"{pre} answered another item set or prompt rendering (task fingerprint"),
        (sampled, ["--seed", "2"], f"--baseline-run {sampled}: refused, the stored baseline sampled with seed 1, "
                                   "this run --seed 2"),
        (untaught, ["--teacher-forcing"], f"--baseline-run {untaught}: refused, the stored baseline was not "
                                          "teacher-forced (--no-teacher-forcing), this run teacher-forces"),
    ]
    # An unfinished baseline: item d's record gone; a run from before the rows were kept: no rows.
    unfinished = tmp_path / "unfinished"
    shutil.copytree(profile, unfinished)
    lines = (unfinished / "records.jsonl").read_text().splitlines(keepends=True)
    (unfinished / "records.jsonl").write_text("".join(x for x in lines if json.loads(x)["item_id"] != "d"))
    rowless = tmp_path / "rowless"
    shutil.copytree(profile, rowless)
    (rowless / "baseline_forcing.jsonl").unlink()
    cases += [
        (unfinished, [], f"--baseline-run {unfinished}: refused, the stored baseline has no finished answer to 1 of "
                         f"4 items (first: d); finish it first: servecmp gen --resume {unfinished}"),
        (rowless, [], f"--baseline-run {rowless}: refused, the stored baseline keeps no teacher-forcing row for 4 of "
                      "4 items (first: a;"),
    ]
    for stored, flags, expect in cases:
        proc = servecmp("gen", "--baseline-run", str(stored), "--candidate", c.url, "--runs-dir", str(tmp_path / "x"),
                        *flags)
        assert_one_line_error(proc, expect)
    assert not (tmp_path / "x").exists()
    # What the run does not need is not refused: a run without teacher forcing needs no rows.
    code, out, _ = run_gen("--baseline-run", str(rowless), "--candidate", c.url, "--no-teacher-forcing",
                           "--runs-dir", str(tmp_path / "ok"), "--json")
    assert code == 0, out
    s = json.loads(out)
    assert s["candidates"][0]["teacher_forcing"]["unavailable"] == "turned off for this run (--no-teacher-forcing)"
    assert s["candidates"][0]["correctness"][0]["flips"]["flips"] == 2  # b c→w, c w→c (tests/test_gen_run.py)


def test_live_baseline_check_accepts_the_same_server_and_refuses_a_changed_one(tmp_path: Path, pair: Any) -> None:
    b, c = pair
    task = write_task(tmp_path / "task.jsonl")
    profile = _profile(tmp_path, b.url, task)
    b.state.requests.clear()
    code, out, _ = run_gen("--baseline-run", str(profile), "--baseline", b.url, "--baseline-check", "3",
                           "--candidate", c.url, "--runs-dir", str(tmp_path / "ok"))
    assert code == 0, out
    assert len(_generations(b.state)) == 3 and _forced(b.state) == 0  # the check only
    run_dir = only_run_dir(tmp_path / "ok")
    check = json.loads((run_dir / "manifest.json").read_text())["stored_baseline"]["check"]
    assert check == {"url": b.url, "items": 3, "changed": 0, "reproduced": True}
    assert len(_lines(run_dir / "baseline_check" / "records.jsonl")) == 3
    # Another model behind the baseline URL: it answers b, c and d otherwise (a alike), all 4 re-asked.
    drifted = servecmp("gen", "--baseline-run", str(profile), "--baseline", c.url, "--candidate", c.url,
                       "--runs-dir", str(tmp_path / "drift"))
    assert_one_line_error(drifted, f"--baseline {c.url} no longer reproduces the stored baseline {profile}: 3 of 4 "
                                   "re-asked greedy answers differ from the stored text")
    assert not (tmp_path / "drift").exists()
    sampled = _profile(tmp_path, b.url, task, "--samples", "2", "--temperature", "0.7", name="sampled")
    assert_one_line_error(servecmp("gen", "--baseline-run", str(sampled), "--baseline", b.url, "--candidate", c.url,
                                   "--runs-dir", str(tmp_path / "x")), "the drift check compares greedy answers")


def test_stored_flag_refusals(tmp_path: Path) -> None:
    task = write_task(tmp_path / "task.jsonl")
    url = "http://127.0.0.1:9/v1"
    base = ["gen", "--task", f"jsonl:{task}", "--runs-dir", str(tmp_path / "r")]
    assert_one_line_error(servecmp(*base, "--baseline", url, "--baseline-check", "5", "--candidate", url),
                          "--baseline-check re-checks a stored baseline: it needs --baseline-run RUN_DIR")
    assert_one_line_error(servecmp(*base, "--baseline-run", str(tmp_path), "--candidate", url),
                          f"--baseline-run {tmp_path}: not a run directory (no manifest.json)")
    assert_one_line_error(servecmp(*base, "--baseline", url, "--baseline-only", "--candidate", url),
                          "--baseline-only asks the baseline alone")
    assert_one_line_error(servecmp(*base, "--baseline-run", str(tmp_path), "--candidate", url, "--noise-floor", "2"),
                          "a noise floor (--secondary, --noise-floor) needs the live baseline in a joint run")
    assert_one_line_error(servecmp(*base, "--baseline-run", str(tmp_path), "--baseline-check", "3", "--candidate",
                                   url), "--baseline-check needs the live baseline to ask")


def test_resume_of_a_stored_baseline_run_repeats_nothing(tmp_path: Path, pair: Any) -> None:
    b, c = pair
    task = write_task(tmp_path / "task.jsonl")
    profile = _profile(tmp_path, b.url, task)
    code, out, _ = run_gen("--baseline-run", str(profile), "--candidate", c.url, "--runs-dir", str(tmp_path / "s"))
    assert code == 0, out
    run_dir = only_run_dir(tmp_path / "s")
    full = json.loads((run_dir / "summary.json").read_text())
    # Interrupted: item d's stored record not yet joined, the candidate's first 2 answers and first
    # teacher-forced item written.
    recs = (run_dir / "records.jsonl").read_text().splitlines(keepends=True)
    kept = [x for x in recs if json.loads(x)["endpoint"] == "baseline" and json.loads(x)["item_id"] != "d"]
    cand = [x for x in recs if json.loads(x)["endpoint"] == "candidate"]
    (run_dir / "records.jsonl").write_text("".join(kept + cand[:2]))
    done = {json.loads(x)["item_id"] for x in cand[:2]}
    tf = [x for x in (run_dir / "teacher_forcing.jsonl").read_text().splitlines(keepends=True)
          if json.loads(x)["item_id"] in done][:1]
    (run_dir / "teacher_forcing.jsonl").write_text("".join(tf))
    m = json.loads((run_dir / "manifest.json").read_text())
    m["finished_at"] = None
    (run_dir / "manifest.json").write_text(json.dumps(m))
    b.state.requests.clear()
    c.state.requests.clear()
    code, out, _ = run_gen("--resume", str(run_dir))
    assert code == 0, out
    assert b.state.requests == []
    assert len(_generations(c.state)) == 2 and _forced(c.state) == 3
    assert _flat("1 stored records joined") in _flat(out)
    keys = [(r["endpoint"], r["item_id"], r["sample"]) for r in _lines(run_dir / "records.jsonl")]
    assert len(keys) == len(set(keys)) == 8
    tf_keys = [(r["endpoint"], r["item_id"]) for r in _lines(run_dir / "teacher_forcing.jsonl")]
    assert len(tf_keys) == len(set(tf_keys)) == 4
    again = json.loads((run_dir / "summary.json").read_text())
    assert again["candidates"] == full["candidates"] and again["endpoints"] == full["endpoints"]
    # Everything joined: a second resume needs neither the endpoints' answers nor the stored run.
    shutil.rmtree(profile)
    m = json.loads((run_dir / "manifest.json").read_text())
    m["finished_at"] = None
    (run_dir / "manifest.json").write_text(json.dumps(m))
    c.state.requests.clear()
    code, out, _ = run_gen("--resume", str(run_dir))
    assert code == 0, out
    assert _generations(c.state) == [] and _forced(c.state) == 0
    assert _flat("0 stored records joined") in _flat(out)
