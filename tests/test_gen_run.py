"""`servecmp gen` end to end against scripted stub endpoints (tests/gen_stub.py): every number of the
summary worked out by hand from the scripted texts, and the teacher-forced KL against an independent
computation from the stub's known distributions."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from servecmp._cli.main import build_app
from tests.gen_stub import GenStub, GenStubState, chat_render, position_dist, tokenize
from tests.test_mcq_cli import assert_one_line_error, only_run_dir, servecmp

PROMPTS = {"a": "Q1 6*7?", "b": "Q2 2+2?", "c": "Q3 1+1?", "d": "Q4 3*3?"}
REFS = {"a": "42", "b": "4", "c": "2", "d": "9"}
BASE = {"Q1 6*7?": "It is 42", "Q2 2+2?": "It is 4", "Q3 1+1?": "It is 3", "Q4 3*3?": "nine"}
CAND = {"Q1 6*7?": "It is 42", "Q2 2+2?": "It is 5", "Q3 1+1?": "It is 2", "Q4 3*3?": "nine!!"}


def write_task(path: Path) -> Path:
    rows = [{"id": k, "prompt": p, "reference": REFS[k]} for k, p in PROMPTS.items()]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_gen(*args: str) -> tuple[int, str, Any]:
    res = CliRunner().invoke(build_app(), ["gen", *args])
    code = res.exit_code
    if isinstance(res.exception, SystemExit):
        code = int(res.exception.code or 0)
    elif res.exception is not None:
        raise res.exception
    return code, res.stdout, res


def exact_kl(base_model: str, cand_model: str, ids: list[int], start: int) -> list[float]:
    """KL(base ‖ cand) at each answer position, from the stub's full distributions."""
    out = []
    for j in range(start, len(ids)):
        p, q = position_dist(base_model, j, ids[j]), position_dist(cand_model, j, ids[j])
        out.append(sum(pv * math.log(pv / q[t]) for t, pv in p.items()))
    return out


@pytest.fixture
def pair() -> Any:
    base = GenStubState(model="base", answers=dict(BASE))
    cand = GenStubState(model="cand", answers=dict(CAND), truncate={"Q4 3*3?"})
    with GenStub(base) as b, GenStub(cand) as c:
        yield b, c


def test_greedy_run_hand_worked(tmp_path: Path, pair: Any) -> None:
    b, c = pair
    task = write_task(tmp_path / "task.jsonl")
    code, out, _ = run_gen("--baseline", b.url, "--candidate", c.url, "--task", f"jsonl:{task}",
                           "--runs-dir", str(tmp_path / "runs"), "--top-k", "5", "--json")
    assert code == 0
    s = json.loads(out)
    assert s["schema"] == "servecmp.gen_summary/1"
    run_dir = only_run_dir(tmp_path / "runs")

    # Records: the contract's fields, one line per item and endpoint.
    recs = [json.loads(x) for x in (run_dir / "records.jsonl").read_text().splitlines()]
    assert len(recs) == 8
    for r in recs:
        assert {"item_id", "endpoint", "sample", "text", "answer", "gold", "correct", "finish_reason",
                "completion_tokens"} <= set(r)
    by = {(r["endpoint"], r["item_id"]): r for r in recs}
    assert by[("baseline", "a")]["answer"] == "42" and by[("baseline", "a")]["correct"] is True
    assert by[("baseline", "d")]["answer"] is None and by[("baseline", "d")]["correct"] is False
    assert by[("candidate", "d")]["finish_reason"] == "length"
    assert by[("candidate", "b")]["token_ids"] == tokenize("It is 5")
    items = [json.loads(x) for x in (run_dir / "items.jsonl").read_text().splitlines()]
    assert [(i["item_id"], i["prompt"], i["gold"]) for i in items] == [(k, PROMPTS[k], REFS[k]) for k in PROMPTS]

    # Per endpoint: baseline right on a, b; candidate right on a, c.
    base_ep, cand_ep = s["endpoints"]
    assert base_ep["accuracy"][0]["count"] == 2 and cand_ep["accuracy"][0]["count"] == 2
    assert (base_ep["no_answer"]["count"], cand_ep["no_answer"]["count"]) == (1, 1)
    assert (base_ep["truncated"]["count"], cand_ep["truncated"]["count"]) == (0, 1)
    assert base_ep["mean_completion_tokens"] == pytest.approx((8 + 7 + 7 + 4) / 4)

    cmp_ = s["candidates"][0]
    k = cmp_["correctness"][0]
    assert k["extraction"] == "number"
    assert (k["flips"]["flips"], k["flips"]["correct_to_wrong"], k["flips"]["wrong_to_correct"]) == (2, 1, 1)
    assert k["flips"]["mcnemar_p"] == 1.0  # one of two discordant pairs each way
    assert k["delta_acc"]["point"] == 0.0
    # Identical: only a. First divergence in token ids: b and c at "It is |x" (6), d where "nine" ends (4).
    assert (cmp_["identical"]["count"], cmp_["identical"]["n"]) == (1, 4)
    assert s["run"]["divergence_unit"] == "tokens"
    rows = {r["item_id"]: r for r in cmp_["items"]}
    assert [rows[i]["first_divergence"] for i in "abcd"] == [None, 6, 6, 4]
    assert cmp_["first_divergence"]["median"] == 6.0
    assert cmp_["first_divergence"]["mean"] == pytest.approx(16 / 3)
    assert [rows[i]["flip"] for i in "abcd"] == [None, "c2w", "w2c", None]
    # Length ratio: usage counts characters: (8+7+7+6) / (8+7+7+4).
    assert cmp_["length_ratio"]["point"] == pytest.approx(28 / 26)
    assert cmp_["no_answer"]["count"] == 1

    # Teacher forcing: KL along the baseline's answer, from the stub's full distributions.
    tf = cmp_["teacher_forcing"]
    assert tf["n"] == 4 and tf["unavailable"] is None
    means = []
    tf_lines = (run_dir / "teacher_forcing.jsonl").read_text().splitlines()
    tf_rows = {r["item_id"]: r["kl"] for r in map(json.loads, tf_lines)}
    for item, key in zip("abcd", PROMPTS.values(), strict=True):
        ids = tokenize(key) + tokenize(BASE[key])
        kl = exact_kl("base", "cand", ids, len(tokenize(key)))
        row = rows[item]
        assert tf_rows[item] == pytest.approx(kl, abs=1e-8)
        assert "tf_kl" not in row
        assert row["tf_kl_mean"] == pytest.approx(sum(kl) / len(kl), abs=1e-8)
        assert row["tf_kl_max"] == pytest.approx(max(kl), abs=1e-8)
        assert row["tf_kl_max_pos"] == kl.index(max(kl))
        means.append(sum(kl) / len(kl))
        d = row["first_divergence"]
        assert row["tf_kl_at_divergence"] == (None if d is None or d >= len(kl) else pytest.approx(kl[d], abs=1e-8))
    assert tf["kl_mean"]["mean"] == pytest.approx(sum(means) / 4, abs=1e-8)
    # One prompt_logprobs request per item and endpoint.
    assert sum(1 for r in b.state.requests if isinstance(r["body"].get("prompt"), list)) == 4
    assert sum(1 for r in c.state.requests if isinstance(r["body"].get("prompt"), list)) == 4

    # The report recomputes the same summary from the run directory.
    rep = CliRunner().invoke(build_app(), ["report", str(run_dir), "--json"])
    assert rep.exit_code == 0, rep.output
    assert json.loads(rep.stdout) == s
    assert json.loads((run_dir / "summary.json").read_text()) == s


def test_gates_decide_on_the_intervals(tmp_path: Path, pair: Any) -> None:
    b, c = pair
    task = write_task(tmp_path / "task.jsonl")
    md = tmp_path / "summary.md"
    code, out, _ = run_gen("--baseline", b.url, "--candidate", c.url, "--task", f"jsonl:{task}",
                           "--runs-dir", str(tmp_path / "runs"), "--top-k", "5", "--json",
                           "--gate", "flips<=90%", "--gate", "identical>=80%", "--gate", "length_ratio<=2",
                           "--summary-md", str(md))
    v = json.loads(out)["verdict"]
    by = {g["metric"]: g for g in v["gates"]}
    # flips 2/4: Wilson [15.0%, 85.0%] lies under 90%; identical 1/4: Wilson high 69.9% < 80%.
    assert by["flips"]["status"] == "pass"
    assert by["identical"]["status"] == "fail"
    assert by["length_ratio"]["status"] == "pass"
    assert code == 1 and v["exit_code"] == 1
    assert "identical" in md.read_text()


def test_teacher_forcing_unavailable_is_stated(tmp_path: Path) -> None:
    task = write_task(tmp_path / "task.jsonl")
    with (GenStub(GenStubState(model="base", answers=dict(BASE))) as b,
          GenStub(GenStubState(model="cand", answers=dict(CAND), no_prompt_logprobs=True)) as c):
        code, out, _ = run_gen("--baseline", b.url, "--candidate", c.url, "--task", f"jsonl:{task}",
                               "--runs-dir", str(tmp_path / "runs"), "--json", "--gate", "tf_kl<=1")
    s = json.loads(out)
    tf = s["candidates"][0]["teacher_forcing"]
    assert tf["n"] == 0 and "prompt_logprobs" in tf["unavailable"]
    (g,) = s["verdict"]["gates"]
    assert g["status"] == "unavailable" and code == 4


def test_no_tokenize_counts_characters(tmp_path: Path) -> None:
    task = write_task(tmp_path / "task.jsonl")
    with (GenStub(GenStubState(model="base", answers=dict(BASE), no_tokenize=True)) as b,
          GenStub(GenStubState(model="cand", answers=dict(CAND), no_tokenize=True)) as c):
        code, out, _ = run_gen("--baseline", b.url, "--candidate", c.url, "--task", f"jsonl:{task}",
                               "--runs-dir", str(tmp_path / "runs"), "--json")
    s = json.loads(out)
    assert code == 0 and s["run"]["divergence_unit"] == "characters"
    rows = {r["item_id"]: r for r in s["candidates"][0]["items"]}
    assert [rows[i]["first_divergence"] for i in "abcd"] == [None, 6, 6, 4]
    assert s["candidates"][0]["teacher_forcing"]["unavailable"].startswith("the baseline has no /tokenize")


def test_chat_only_endpoint_gets_chat_layout(tmp_path: Path) -> None:
    task = write_task(tmp_path / "task.jsonl")
    with (GenStub(GenStubState(model="base", answers=dict(BASE))) as b,
          GenStub(GenStubState(model="cand", answers=dict(CAND), chat_only=True)) as c):
        code, out, _ = run_gen("--baseline", b.url, "--candidate", c.url, "--task", f"jsonl:{task}",
                               "--runs-dir", str(tmp_path / "runs"), "--json", "--no-teacher-forcing")
        chats = [r for r in c.state.requests if r["path"] == "/v1/chat/completions"]
    s = json.loads(out)
    assert code == 0 and s["run"]["api"] == "chat"
    assert len(chats) == 4 and chats[0]["body"]["messages"] == [{"role": "user", "content": PROMPTS["a"]}]
    assert s["candidates"][0]["correctness"][0]["flips"]["flips"] == 2
    assert "turned off" in s["candidates"][0]["teacher_forcing"]["unavailable"]


def test_chat_teacher_forcing_renders_messages(tmp_path: Path, pair: Any) -> None:
    b, c = pair
    task = write_task(tmp_path / "task.jsonl")
    code, out, _ = run_gen("--baseline", b.url, "--candidate", c.url, "--task", f"jsonl:{task}", "--api", "chat",
                           "--runs-dir", str(tmp_path / "runs"), "--top-k", "5", "--json")
    assert code == 0 and json.loads(out)["candidates"][0]["teacher_forcing"]["n"] == 4
    key = PROMPTS["b"]
    prompt_ids = tokenize(chat_render([{"role": "user", "content": key}]))
    kl = exact_kl("base", "cand", prompt_ids + tokenize(BASE[key]), len(prompt_ids))
    tf = {r["item_id"]: r["kl"] for r in map(json.loads, (only_run_dir(tmp_path / "runs") / "teacher_forcing.jsonl")
                                             .read_text().splitlines())}
    assert tf["b"] == pytest.approx(kl, abs=1e-8)


def test_sampled_run_pass_at_1_and_majority(tmp_path: Path) -> None:
    task = write_task(tmp_path / "task.jsonl")
    # 3 samples per item. Baseline correct samples: a 3/3, b 2/3, c 0/3, d 1/3 (majority: a, b right;
    # d's three-way tie goes to its first answer, "8", wrong).
    # Candidate: a 3/3, b 1/3, c 2/3, d 0/3 (majority: a, c right).
    base = {PROMPTS["a"]: ["42", "42", "42"], PROMPTS["b"]: ["4", "4", "5"], PROMPTS["c"]: ["3", "3", "1"],
            PROMPTS["d"]: ["8", "9", "7"]}
    cand = {PROMPTS["a"]: ["42", "42", "42"], PROMPTS["b"]: ["4", "5", "5"], PROMPTS["c"]: ["2", "2", "3"],
            PROMPTS["d"]: ["8", "8", "7"]}
    with GenStub(GenStubState(model="base", answers=base)) as b, GenStub(GenStubState(model="cand", answers=cand)) as c:
        code, out, _ = run_gen("--baseline", b.url, "--candidate", c.url, "--task", f"jsonl:{task}",
                               "--runs-dir", str(tmp_path / "runs"), "--json", "--samples", "3",
                               "--temperature", "0.7", "--seed", "5")
        gens = [r["body"] for r in b.state.requests if r["path"] == "/v1/completions" and r["body"].get("n") == 3]
    s = json.loads(out)
    assert code == 0
    assert len(gens) == 4 and all(g["seed"] == 5 and g["temperature"] == 0.7 for g in gens)
    cmp_ = s["candidates"][0]
    sp = cmp_["sampled"]
    assert sp["baseline_pass_at_1"]["point"] == pytest.approx((1 + 2 / 3 + 0 + 1 / 3) / 4)
    assert sp["candidate_pass_at_1"]["point"] == pytest.approx((1 + 1 / 3 + 2 / 3 + 0) / 4)
    assert sp["delta_pass_at_1"]["point"] == pytest.approx(0.0, abs=1e-12)
    maj = cmp_["correctness"][0]
    assert maj["extraction"] == "number, majority of 3"
    assert (maj["flips"]["correct_to_wrong"], maj["flips"]["wrong_to_correct"]) == (1, 1)
    assert cmp_["identical"] is None and cmp_["teacher_forcing"]["unavailable"].startswith("sampled run")
    run_dir = only_run_dir(tmp_path / "runs")
    recs = [json.loads(x) for x in (run_dir / "records.jsonl").read_text().splitlines()]
    assert sorted((r["endpoint"], r["item_id"], r["sample"]) for r in recs) == sorted(
        (e, i, k) for e in ("baseline", "candidate") for i in "abcd" for k in range(3))


def test_noise_floor_repeats_the_baseline(tmp_path: Path, pair: Any) -> None:
    b, c = pair
    task = write_task(tmp_path / "task.jsonl")
    code, out, _ = run_gen("--baseline", b.url, "--candidate", c.url, "--task", f"jsonl:{task}",
                           "--runs-dir", str(tmp_path / "runs"), "--json", "--noise-floor", "2", "--top-k", "5")
    s = json.loads(out)
    (floor,) = s["floors"]
    # The stub is deterministic: the baseline asked again agrees with itself on both items.
    assert floor["name"] == "baseline@floor" and floor["n"] == 2
    assert floor["identical"]["count"] == 2 and floor["correctness"][0]["flips"]["flips"] == 0
    assert any("noise floor (baseline@floor)" in n for n in s["notes"])


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "reference": "1"}\n{"prompt": "y", "reference": "2", "grader": "regex:("}\n')
    url = "http://127.0.0.1:9/v1"
    assert_one_line_error(servecmp("gen", "--baseline", url, "--candidate", url, "--task", "nope"),
                          "unknown gen task 'nope'")
    assert_one_line_error(servecmp("gen", "--baseline", url, "--candidate", url, "--task", f"jsonl:{bad}"),
                          "bad.jsonl:2: grader 'regex:(': the regular expression does not compile")
    bad.write_text('{"prompt": "x", "reference": "1"}\nnot json\n')
    assert_one_line_error(servecmp("gen", "--baseline", url, "--candidate", url, "--task", f"jsonl:{bad}"),
                          "bad.jsonl:2: not valid JSON (Expecting value at column 1)")
    assert_one_line_error(servecmp("gen", "--baseline", url, "--candidate", url, "--samples", "4"),
                          "give --temperature T > 0")


def test_future_schema_is_refused(tmp_path: Path, pair: Any) -> None:
    b, c = pair
    task = write_task(tmp_path / "task.jsonl")
    run_gen("--baseline", b.url, "--candidate", c.url, "--task", f"jsonl:{task}", "--runs-dir", str(tmp_path / "runs"),
            "--no-teacher-forcing", "--json")
    run_dir = only_run_dir(tmp_path / "runs")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["schema"] = "servecmp.gen_manifest/9"
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    assert_one_line_error(servecmp("report", str(run_dir)), "schema 'servecmp.gen_manifest/9' is not one this")
    assert_one_line_error(servecmp("gen", "--resume", str(run_dir)), "a newer servecmp wrote it")


def test_resume_refuses_result_flags(tmp_path: Path, pair: Any) -> None:
    b, c = pair
    task = write_task(tmp_path / "task.jsonl")
    run_gen("--baseline", b.url, "--candidate", c.url, "--task", f"jsonl:{task}", "--runs-dir", str(tmp_path / "runs"),
            "--no-teacher-forcing", "--json")
    run_dir = only_run_dir(tmp_path / "runs")
    assert_one_line_error(servecmp("gen", "--resume", str(run_dir), "--max-tokens", "9", "--limit", "2"),
                          "cannot resume")


def test_secondary_replica_is_a_noise_floor(tmp_path: Path, pair: Any) -> None:
    b, c = pair
    task = write_task(tmp_path / "task.jsonl")
    (tmp_path / "servecmp.toml").write_text("[gen]\nshow = 1\n")
    with GenStub(GenStubState(model="base", answers=dict(BASE))) as s2:
        code, out, _ = run_gen("--baseline", b.url, "--candidate", c.url, "--secondary", s2.url,
                               "--task", f"jsonl:{task}", "--runs-dir", str(tmp_path / "runs"), "--top-k", "5",
                               "--json", "-c", str(tmp_path / "servecmp.toml"))
        scored = [r for r in s2.state.requests if isinstance(r["body"].get("prompt"), list)]
    s = json.loads(out)
    (floor,) = s["floors"]
    # The replica answers as the baseline does: every output identical, no flip, and a teacher-forced
    # KL of 0 (the same model's distributions on both sides).
    assert code == 0 and floor["name"] == "secondary" and floor["identical"]["count"] == 4
    tf = floor["teacher_forcing"]
    assert tf["n"] == 4 and tf["kl_mean"]["max"] == pytest.approx(0, abs=1e-9)
    assert len(scored) == 4
    # The candidate's 2 flips of 4 against the floor's 0: Wilson [15.0%, 85.0%] vs [0%, 49.0%] overlap.
    assert ("candidate: flips 50.0% [15.0%, 85.0%] against the noise floor (secondary) 0.0% [0.0%, 49.0%]: "
            "within the floor") in " ".join(s["notes"])


def test_incomplete_items_are_left_out_until_resumed(tmp_path: Path) -> None:
    """A kill between two sample lines leaves an item with some samples: the summary ignores it and
    the resume asks it again; a sample stored twice counts once (the last line)."""
    from servecmp.gen.run import done_keys
    from servecmp.gen.rundir import load_records

    def rec(item: str, sample: int, text: str) -> str:
        return json.dumps({"item_id": item, "endpoint": "baseline", "sample": sample, "text": text, "answer": None,
                           "gold": "1", "correct": False, "finish_reason": "stop", "completion_tokens": 1})

    lines = [rec("a", 0, "x"), rec("a", 1, "y"), rec("b", 0, "z"), rec("a", 1, "y2")]
    (tmp_path / "records.jsonl").write_text("\n".join(lines) + "\n" + rec("c", 0, "torn")[:30])
    got = load_records(tmp_path, 2)
    assert [(r.item_id, r.sample, r.text) for r in got] == [("a", 0, "x"), ("a", 1, "y2")]
    assert done_keys(tmp_path, 2) == {("baseline", "a")}
    assert done_keys(tmp_path, 1) == {("baseline", "a"), ("baseline", "b")}


def test_no_answer_gate(tmp_path: Path, pair: Any) -> None:
    b, c = pair
    task = write_task(tmp_path / "task.jsonl")
    code, out, _ = run_gen("--baseline", b.url, "--candidate", c.url, "--task", f"jsonl:{task}",
                           "--runs-dir", str(tmp_path / "runs"), "--json", "--no-teacher-forcing",
                           "--gate", "no_answer<=80%", "--gate", "delta_acc>=-10%", "--gate", "tf_kl<=1")
    by = {g["metric"]: g for g in json.loads(out)["verdict"]["gates"]}
    # The candidate extracts nothing on 1 of 4: Wilson high 69.9% <= 80%. delta_acc: flips 1 each way, the
    # paired bootstrap interval spans 0 and -10%. tf_kl: turned off, so unavailable.
    assert by["no_answer"]["status"] == "pass" and by["no_answer"]["estimate"] == 0.25
    assert by["delta_acc"]["status"] == "inconclusive"
    assert by["tf_kl"]["status"] == "unavailable" and "turned off" in by["tf_kl"]["reason"]
    assert code == 4
