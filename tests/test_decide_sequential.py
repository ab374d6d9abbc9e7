"""`servecmp mcq --until-decided` against stub endpoints: the stop worked out by hand, a decided
candidate asked nothing more, the budget, and a resume that repeats nothing.

The hand example: baseline and candidate "a" serve the same model, so no item flips. For the gate
flips<=20% at m = 0.2 every bet is truncated at c/(1 - m) = 0.625 (lamdot_t stays above 2 for
t <= 40: sigma2 of an all-zero sequence stays near 0.013), so the hedged capital against m is
0.5 * (1 + 0.625 * 0.2)^t = 0.5 * 1.125^t, which first reaches 1/alpha = 20 at
t = ceil(log 40 / log 1.125) = ceil(31.3) = 32. With looks every 10 items the run decides at the
4th look, after 40 items: PASS.
"""

from __future__ import annotations

import json
import math
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np

from servecmp.mcq.sequential import ORDER_SEED_OFFSET
from tests.stub_openai import LETTERS, StubServer, StubState, next_token_logprobs
from tests.test_confseq import _scalar_log_capital
from tests.test_mcq_cli import assert_one_line_error, only_run_dir, records, servecmp, write_items


def _asked(stub: StubServer) -> list[str]:
    return [r["body"]["prompt"] for r in stub.state.requests if r["path"] == "/v1/completions"
            and not r["body"].get("echo") and "user" not in r["body"]]


def _same_model_run(tmp_path: Path, *gates: str) -> tuple[subprocess.CompletedProcess[str], Path, tuple[int, int]]:
    """The hand example's run (60 items, baseline and candidate the same model, looks every 10
    items) under ``gates``: the process, the run directory, and the items each stub was asked."""
    data = tmp_path / "items.jsonl"
    write_items(data, 60)
    runs = tmp_path / "runs"
    with StubServer(StubState(model="base")) as b, StubServer(StubState(model="base")) as a:
        proc = servecmp("mcq", "--baseline", b.url, "--candidate", a.url, "--task", f"jsonl:{data}",
                        "--runs-dir", str(runs), "--top-k", "5", "--until-decided", "--batch", "10",
                        *(x for g in gates for x in ("--gate", g)))
        asked = len(_asked(b)), len(_asked(a))
    return proc, only_run_dir(runs), asked


def test_hand_worked_stop_is_at_the_fourth_look(tmp_path: Path) -> None:
    assert math.ceil(math.log(40) / math.log(1.125)) == 32
    proc, run_dir, asked = _same_model_run(tmp_path, "flips<=20%")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert asked == (40, 40)
    looks = json.loads((run_dir / "looks.json").read_text())
    assert [lk["position"] for lk in looks["looks"]] == [10, 20, 30, 40]
    assert [lk["candidates"]["candidate"]["state"] for lk in looks["looks"]] == ["asking"] * 3 + ["decided"]
    assert looks["looks"][-1]["candidates"]["candidate"]["statuses"] == ["pass"]
    out = " ".join(proc.stdout.split())
    assert "40 of 60 items used (decided)" in out
    assert "anytime-valid" in out
    # Requests as the records count them (a second, echo, request when the top-5 misses a letter),
    # against 60 items of both endpoints at the same requests per item.
    recs = records(run_dir)
    used = sum(int(r["n_requests"]) for r in recs)  # type: ignore[call-overload]
    per = {e: np.mean([r["n_requests"] for r in recs if r["endpoint"] == e]) for e in ("baseline", "candidate")}
    assert f"requests: {used:,} against {round(60 * (per['baseline'] + per['candidate'])):,}" in out


def test_a_failed_gate_stops_the_candidate_while_another_is_undecided(tmp_path: Path) -> None:
    # The hand example's data (no item flips) under flips>=20%: the same capital against m = 0.2
    # crosses 20 at t = 32, so the CS's upper end is below 20% at the 40-item look: FAIL. The second
    # gate, delta_acc>=-1%, cannot be decided in 60 items: every item's difference is 0 (unit value
    # 1/2) against m = (1 - 0.01) / 2 = 0.495, and bets are truncated at c/m = 1.0101, so the capital
    # grows at most by 1 + 1.0101 * 0.005 = 1.00505 an item: 0.5 * 1.00505^60 = 0.68 < 20. Before this
    # rule the run asked all 60 items; the verdict (FAIL, exit 1) is known at item 40.
    assert 0.5 * (1 + 0.5 / 0.495 * 0.005) ** 60 < 20
    proc, run_dir, asked = _same_model_run(tmp_path, "flips>=20%", "delta_acc>=-1%")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert asked == (40, 40)
    looks = json.loads((run_dir / "looks.json").read_text())
    assert [lk["candidates"]["candidate"]["state"] for lk in looks["looks"]] == ["asking"] * 3 + ["decided"]
    assert looks["looks"][-1]["candidates"]["candidate"]["statuses"] == ["fail", "inconclusive"]
    out = " ".join(proc.stdout.split())
    assert "40 of 60 items used (decided)" in out
    assert "a gate failed, so the candidate fails whatever its other gates show" in out


def _flip_sequence(rows: list[dict[str, object]], prompts: list[str], base: str, cand: str) -> list[float]:
    """Per-item flips in the run's seeded order, from the stub's distributions over the prompts it
    was sent (independent of servecmp's scorer)."""
    import random

    out = []
    ids = [str(r["id"]) for r in rows]
    random.Random(0 + ORDER_SEED_OFFSET).shuffle(ids)
    by_id = {str(r["id"]): r for r in rows}
    for i in ids:
        r = by_id[i]
        prompt_tail = f"What is {i[1:]} + {i[1:]}?"
        got = []
        for model in (base, cand):
            (prompt,) = [p for p in prompts if prompt_tail in p]
            full = next_token_logprobs(prompt, model, 100)
            chosen = max(range(4), key=lambda j, full=full: full[LETTERS[j]])  # type: ignore[misc]
            got.append(chosen == r["answer"])
        out.append(float(got[0] != got[1]))
    return out


def test_two_candidates_decided_one_stops_being_asked(tmp_path: Path) -> None:
    data = tmp_path / "items.jsonl"
    rows = write_items(data, 60)
    runs = tmp_path / "runs"
    with (StubServer(StubState(model="base")) as b, StubServer(StubState(model="base")) as a,
          StubServer(StubState(model="other")) as o):
        proc = servecmp("mcq", "--baseline", b.url, "--candidate", a.url, "--candidate", o.url,
                        "--candidate-name", "same", "--candidate-name", "other", "--task", f"jsonl:{data}",
                        "--runs-dir", str(runs), "--top-k", "5", "--until-decided", "--batch", "10",
                        "--gate", "flips<=20%")
        prompts = _asked(b)
        n_same, n_other = len(_asked(a)), len(_asked(o))
    run_dir = only_run_dir(runs)
    # "other": the flip sequence in the seeded order, decided where the running capital at 0.2
    # first reaches 20 at a look (WSR's formulas re-implemented in tests/test_confseq.py).
    flips = _flip_sequence(rows, prompts, "base", "other")
    log_k = np.maximum.accumulate(_scalar_log_capital(flips, 0.2, 0.05, None))
    decided_at = next((t for t in range(10, 61, 10) if log_k[t - 1] >= math.log(20)), 60)
    assert n_same == 40
    assert n_other == decided_at
    looks = json.loads((run_dir / "looks.json").read_text())
    other_state = looks["looks"][-1]["candidates"]["other"]
    expect = np.mean(flips[:decided_at]) > 0.2
    if decided_at < 60 or log_k[59] >= math.log(20):
        assert other_state["state"] == "decided"
        assert other_state["statuses"] == ["fail" if expect else "pass"]
    else:
        assert other_state["state"] == "items"
    # Exit code: 1 when the other candidate fails, else 0/4.
    assert proc.returncode in (0, 1, 4)
    assert Counter(r["endpoint"] for r in records(run_dir)) == {"baseline": max(40, decided_at), "same": 40,
                                                               "other": decided_at}


def test_budget_cuts_the_last_batch(tmp_path: Path) -> None:
    # --top-k 24 returns the stub's whole vocabulary: one request per item. Budget 15: a batch of
    # 10, then a batch cut to the 5 requests left; undecided (0 flips in 15 items do not exclude 20%).
    data = tmp_path / "items.jsonl"
    write_items(data, 60)
    runs = tmp_path / "runs"
    with StubServer(StubState(model="base")) as b, StubServer(StubState(model="base")) as a:
        proc = servecmp("mcq", "--baseline", b.url, "--candidate", a.url, "--task", f"jsonl:{data}",
                        "--runs-dir", str(runs), "--top-k", "24", "--until-decided", "--batch", "10",
                        "--budget", "15", "--gate", "flips<=20%")
        assert len(a.state.requests) - len(_asked(a)) == len([r for r in a.state.requests
                                                              if r["path"] != "/v1/completions"
                                                              or "user" in r["body"]])  # no echo request
        assert len(_asked(a)) == 15
    assert proc.returncode == 4, proc.stdout + proc.stderr
    looks = json.loads((only_run_dir(runs) / "looks.json").read_text())
    assert [lk["candidates"]["candidate"]["state"] for lk in looks["looks"]] == ["asking", "budget"]


def test_resume_repeats_nothing_and_decides_the_same(tmp_path: Path) -> None:
    data = tmp_path / "items.jsonl"
    write_items(data, 60)
    runs = tmp_path / "runs"
    with StubServer(StubState(model="base")) as b, StubServer(StubState(model="other")) as o:
        args = ["mcq", "--baseline", b.url, "--candidate", o.url, "--task", f"jsonl:{data}", "--runs-dir",
                str(runs), "--top-k", "5", "--until-decided", "--batch", "10", "--gate", "flips<=20%"]
        first = servecmp(*args)
        run_dir = only_run_dir(runs)
        full = (run_dir / "records.jsonl").read_text().splitlines(keepends=True)
        looks = json.loads((run_dir / "looks.json").read_text())
        # An interruption in the middle of the second batch: 25 records kept, the run unfinished.
        (run_dir / "records.jsonl").write_text("".join(full[:25]))
        manifest = json.loads((run_dir / "manifest.json").read_text())
        manifest["finished_at"] = None
        (run_dir / "manifest.json").write_text(json.dumps(manifest))
        b.state.requests.clear()
        o.state.requests.clear()
        again = servecmp("mcq", "--resume", str(run_dir))
        kept = Counter(json.loads(x)["endpoint"] for x in full[:25])
        total = Counter(json.loads(x)["endpoint"] for x in full)
        assert len(_asked(b)) == total["baseline"] - kept["baseline"]
        assert len(_asked(o)) == total["candidate"] - kept["candidate"]
    assert again.returncode == first.returncode, again.stdout + again.stderr
    assert json.loads((run_dir / "looks.json").read_text()) == looks
    keys = [(r["item_id"], r["endpoint"]) for r in records(run_dir)]
    assert len(keys) == len(set(keys)) == len(full)


def test_until_decided_refusals_are_one_line(tmp_path: Path) -> None:
    data = tmp_path / "items.jsonl"
    write_items(data, 10)
    base = ["mcq", "--baseline", "http://127.0.0.1:9/v1", "--candidate", "http://127.0.0.1:9/v1", "--task",
            f"jsonl:{data}", "--runs-dir", str(tmp_path / "runs")]
    assert_one_line_error(servecmp(*base, "--until-decided"), "give --gate")
    assert_one_line_error(servecmp(*base, "--until-decided", "--gate", "topk_kl<=0.1"),
                          "--until-decided cannot decide topk_kl")
    assert_one_line_error(servecmp(*base, "--budget", "5", "--gate", "flips<=5%"),
                          "--batch and --budget apply to --until-decided only")
    assert_one_line_error(servecmp(*base, "--until-decided", "--noise-floor", "5", "--gate", "flips<=5%"),
                          "does not run a noise floor")
