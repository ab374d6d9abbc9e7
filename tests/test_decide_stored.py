"""Stored baselines (`--baseline-run`, `--baseline-only`, `--baseline-check`) against stub
endpoints: joining gives the joint run's per-item results, each fingerprint mismatch and a drifted
baseline are refused in one line, and the drift rule is checked on hand-worked KL values."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from servecmp.mcq.records import McqRecord
from servecmp.mcq.stored import reproduction
from tests.stub_openai import StubServer, StubState
from tests.test_mcq_cli import assert_one_line_error, only_run_dir, records, servecmp, write_items

#: Fields of a record that do not depend on timing.
SAME = ("item_id", "endpoint", "gold", "option_logprobs", "chosen", "topk", "prompt_tokens", "completion_tokens",
        "n_requests", "api", "echo_options", "censored_options")


def _rec(item: str, probs: list[float]) -> McqRecord:
    lp = [math.log(p) for p in probs]
    return McqRecord(item_id=item, endpoint="baseline", task="t", gold=0, option_logprobs=lp,
                     chosen=max(range(len(lp)), key=lp.__getitem__))


def test_drift_rule_by_hand() -> None:
    # KL([.7, .3] ‖ [.6, .4]) = .7 ln(.7/.6) + .3 ln(.3/.4) = 0.1079054 - 0.0863046 = 0.0216009 nats.
    stored = [_rec("a", [0.7, 0.3]), _rec("b", [0.5, 0.25, 0.25])]
    fresh = [_rec("a", [0.6, 0.4]), _rec("b", [0.5, 0.25, 0.25])]
    check = reproduction(stored, fresh, 0.02161)
    assert check.items == 2 and check.answer_changes == 0
    assert check.max_option_kl == pytest.approx(0.0216009, abs=1e-7)
    assert check.reproduced
    assert not reproduction(stored, fresh, 0.02160).reproduced
    # A changed answer never reproduces, whatever the tolerance.
    moved = [_rec("a", [0.4, 0.6]), fresh[1]]
    check = reproduction(stored, moved, 10.0)
    assert check.answer_changes == 1 and not check.reproduced


def _profile(runs: Path, data: Path, url: str, *extra: str) -> Path:
    proc = servecmp("mcq", "--baseline", url, "--baseline-only", "--task", f"jsonl:{data}", "--runs-dir", str(runs),
                    "--top-k", "5", *extra)
    assert proc.returncode == 0, proc.stderr
    assert "baseline profile:" in proc.stdout
    return only_run_dir(runs)


def test_joined_stored_baseline_equals_joint_run(tmp_path: Path) -> None:
    data = tmp_path / "items.jsonl"
    write_items(data, 30)
    with StubServer(StubState(model="base")) as b, StubServer(StubState(model="cand")) as c:
        joint = servecmp("mcq", "--baseline", b.url, "--candidate", c.url, "--task", f"jsonl:{data}",
                         "--runs-dir", str(tmp_path / "joint"), "--top-k", "5", "--json")
        assert joint.returncode == 0, joint.stderr
        profile = _profile(tmp_path / "profile", data, b.url)
        b.state.requests.clear()
        joined = servecmp("mcq", "--baseline-run", str(profile), "--candidate", c.url, "--runs-dir",
                          str(tmp_path / "joined"), "--json")
        assert joined.returncode == 0, joined.stderr
        assert b.state.requests == []  # the baseline is not asked at all
    j_dir, s_dir = only_run_dir(tmp_path / "joint"), only_run_dir(tmp_path / "joined")

    def per_item(d: Path) -> dict[tuple[str, str], tuple[object, ...]]:
        return {(str(r["item_id"]), str(r["endpoint"])): tuple(r[k] for k in SAME) for r in records(d)}

    assert per_item(j_dir) == per_item(s_dir)
    report = servecmp("report", str(profile))
    assert_one_line_error(report, "is a baseline profile (--baseline-only): nothing to compare")
    a, b2 = json.loads(joint.stdout), json.loads(joined.stdout)
    # Wilson intervals and point estimates are equal; bootstrap intervals resample in the records'
    # file order, which is the order answers arrived in (a pre-existing property of the summary).
    assert a["flips"] == b2["flips"] and a["answer_changes"] == b2["answer_changes"]
    assert a["accuracy"]["diff"]["point"] == b2["accuracy"]["diff"]["point"]
    assert a["option_kl"]["mean"] == pytest.approx(b2["option_kl"]["mean"], rel=1e-12)  # summation order
    manifest = json.loads((s_dir / "manifest.json").read_text())
    assert manifest["stored_baseline"]["run_dir"] == str(profile)
    assert "stored_baseline" in joined.stderr and str(profile) in joined.stderr


def _refused(tmp_path: Path, profile: Path, url: str, *flags: str) -> None:
    proc = servecmp("mcq", "--baseline-run", str(profile), "--candidate", url, "--runs-dir", str(tmp_path / "x"),
                    *flags)
    return proc  # type: ignore[return-value]


def test_each_mismatch_refused_in_one_line(tmp_path: Path) -> None:
    data = tmp_path / "items.jsonl"
    write_items(data, 12)
    with StubServer(StubState(model="base")) as b, StubServer(StubState(model="cand")) as c:
        profile = _profile(tmp_path / "profile", data, b.url)
        cases = {
            "--top-k": (["--top-k", "6"], "read the top 5 logprobs, this run --top-k 6"),
            "--api": (["--api", "chat"], "was asked through completions, this run --api chat"),
            "items": (["--limit", "10"], "another item set or prompt rendering"),
        }
        for flags, expect in cases.values():
            assert_one_line_error(_refused(tmp_path, profile, c.url, *flags), expect)  # type: ignore[arg-type]
        # Few-shot and prompt format: a copy of the profile whose manifest says otherwise.
        for field, value, expect in (("fewshot", 3, "used 3-shot prompts, this run 0-shot"),
                                     ("prompt_format_hash", "0000", "used another prompt format (0000 vs")):
            copy = tmp_path / f"profile-{field}"
            shutil.copytree(profile, copy)
            m = json.loads((copy / "manifest.json").read_text())
            m[field] = value
            (copy / "manifest.json").write_text(json.dumps(m))
            flags = ["--fewshot", "0"] if field == "fewshot" else []
            assert_one_line_error(_refused(tmp_path, copy, c.url, *flags), expect)  # type: ignore[arg-type]
        assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())


def test_live_baseline_check_accepts_the_same_server_and_refuses_a_changed_one(tmp_path: Path) -> None:
    data = tmp_path / "items.jsonl"
    write_items(data, 30)
    with StubServer(StubState(model="base")) as b, StubServer(StubState(model="cand")) as c:
        profile = _profile(tmp_path / "profile", data, b.url)
        b.state.requests.clear()
        ok = servecmp("mcq", "--baseline-run", str(profile), "--baseline", b.url, "--baseline-check", "8",
                      "--candidate", c.url, "--runs-dir", str(tmp_path / "ok"))
        assert ok.returncode == 0, ok.stderr
        asked = [r for r in b.state.requests if r["path"] == "/v1/completions" and not r["body"].get("echo")
                 and "user" not in r["body"]]
        assert len(asked) == 8  # the check only: the main pass joins the stored answers
        m = json.loads((only_run_dir(tmp_path / "ok") / "manifest.json").read_text())
        assert m["stored_baseline"]["check"] == {"items": 8, "answer_changes": 0, "max_option_kl": 0.0,
                                                 "tolerance": 1e-9, "reproduced": True}
        # Another model behind the baseline URL: its answers differ from the stored ones.
        drifted = servecmp("mcq", "--baseline-run", str(profile), "--baseline", c.url, "--candidate", c.url,
                           "--runs-dir", str(tmp_path / "drift"))
        assert_one_line_error(drifted, "no longer reproduces the stored baseline")
        assert not (tmp_path / "drift").exists() or not any((tmp_path / "drift").iterdir())


def test_until_decided_on_a_stored_baseline_asks_only_the_candidate(tmp_path: Path) -> None:
    data = tmp_path / "items.jsonl"
    write_items(data, 60)
    with StubServer(StubState(model="base")) as b, StubServer(StubState(model="base")) as a:
        profile = _profile(tmp_path / "profile", data, b.url)
        b.state.requests.clear()
        proc = servecmp("mcq", "--baseline-run", str(profile), "--candidate", a.url, "--runs-dir",
                        str(tmp_path / "seq"), "--until-decided", "--batch", "10", "--gate", "flips<=20%")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert b.state.requests == []
        asked = [r for r in a.state.requests if r["path"] == "/v1/completions" and not r["body"].get("echo")
                 and "user" not in r["body"]]
    assert len(asked) == 40  # the hand-worked stop of tests/test_decide_sequential.py
    # Used: the candidate's requests only; the full fixed run: both endpoints on all 60 items.
    recs = records(only_run_dir(tmp_path / "seq"))
    cand = [int(r["n_requests"]) for r in recs if r["endpoint"] == "candidate"]  # type: ignore[call-overload]
    base = [int(r["n_requests"]) for r in recs if r["endpoint"] == "baseline"]  # type: ignore[call-overload]
    assert len(base) == 60 and len(cand) == 40
    full = round(60 * (sum(base) / 60 + sum(cand) / 40))
    assert f"requests: {sum(cand):,} against {full:,}" in " ".join(proc.stdout.split())


def test_stored_flag_refusals(tmp_path: Path) -> None:
    data = tmp_path / "items.jsonl"
    write_items(data, 5)
    base = ["mcq", "--task", f"jsonl:{data}", "--runs-dir", str(tmp_path / "r")]
    assert_one_line_error(servecmp(*base, "--baseline", "http://127.0.0.1:9/v1", "--baseline-check", "5",
                                   "--candidate", "http://127.0.0.1:9/v1"), "--baseline-check re-checks")
    assert_one_line_error(servecmp(*base, "--baseline-run", str(tmp_path), "--candidate", "http://127.0.0.1:9/v1"),
                          "not a run directory")
    assert_one_line_error(servecmp(*base, "--baseline", "http://127.0.0.1:9/v1", "--baseline-only", "--candidate",
                                   "http://127.0.0.1:9/v1"), "--baseline-only asks the baseline alone")


def test_resume_of_a_stored_baseline_run_copies_and_asks_nothing_twice(tmp_path: Path) -> None:
    data = tmp_path / "items.jsonl"
    write_items(data, 20)
    with StubServer(StubState(model="base")) as b, StubServer(StubState(model="cand")) as c:
        profile = _profile(tmp_path / "profile", data, b.url)
        first = servecmp("mcq", "--baseline-run", str(profile), "--candidate", c.url, "--runs-dir", str(tmp_path / "s"))
        assert first.returncode == 0, first.stderr
        run_dir = only_run_dir(tmp_path / "s")
        lines = (run_dir / "records.jsonl").read_text().splitlines(keepends=True)
        # Interrupted: the stored records joined, 5 candidate answers written.
        kept = [x for x in lines if json.loads(x)["endpoint"] == "baseline"]
        kept += [x for x in lines if json.loads(x)["endpoint"] == "candidate"][:5]
        (run_dir / "records.jsonl").write_text("".join(kept))
        m = json.loads((run_dir / "manifest.json").read_text())
        m["finished_at"] = None
        (run_dir / "manifest.json").write_text(json.dumps(m))
        b.state.requests.clear()
        c.state.requests.clear()
        again = servecmp("mcq", "--resume", str(run_dir))
        assert again.returncode == 0, again.stderr
        assert b.state.requests == []
        asked = [r for r in c.state.requests if r["path"] == "/v1/completions" and not r["body"].get("echo")
                 and "user" not in r["body"]]
        assert len(asked) == 15
    keys = [(r["item_id"], r["endpoint"]) for r in records(run_dir)]
    assert len(keys) == len(set(keys)) == 40
