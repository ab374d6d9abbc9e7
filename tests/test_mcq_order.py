"""Prefix-aware ordering (servecmp.mcq.order): each prefix group stays together, its first item goes
alone and the rest follow once it has finished; and a default ("auto", ordered) run killed with -9
resumes without losing or repeating an item.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from servecmp.mcq.order import PREFIX_CHARS, PrefixScheduler, prefix_groups, prefix_key, prefix_order
from servecmp.mcq.records import McqItem
from tests.stub_openai import free_port
from tests.test_mcq_cli import ROOT, only_run_dir, records, servecmp


def _item(subject: str, i: int) -> McqItem:
    # An MMLU-like prompt: the subject's header and exemplars (longer than PREFIX_CHARS), then the question.
    shots = f"The following are multiple choice questions about {subject}.\n\n" + "exemplar " * 40
    return McqItem(item_id=f"{subject}/{i}", task="t", kind="letter", prompt=f"{shots}\nQ{i}?\nAnswer:",
                   continuations=[" A", " B", " C", " D"], gold=0, subject=subject)


def _interleaved(n_subjects: int = 4, per: int = 6, seed: int = 1) -> list[McqItem]:
    items = [_item(f"s{k}", i) for k in range(n_subjects) for i in range(per)]
    random.Random(seed).shuffle(items)
    return items


def test_groups_are_contiguous_in_first_appearance_order() -> None:
    items = _interleaved()
    ordered = prefix_order(items)
    assert sorted(it.item_id for it in ordered) == sorted(it.item_id for it in items)
    subjects = [it.subject for it in ordered]
    # Each subject is one contiguous run, subjects in the order they first appear.
    runs = [s for i, s in enumerate(subjects) if i == 0 or s != subjects[i - 1]]
    assert runs == list(dict.fromkeys(it.subject for it in items))
    # Inside a group the items keep their order.
    for group in prefix_groups(items):
        assert [it.item_id for it in group] == [it.item_id for it in items if it.subject == group[0].subject]


def test_key_is_the_prompt_prefix() -> None:
    a, b = _item("x", 1), _item("x", 2)
    assert prefix_key(a) == prefix_key(b) and len(prefix_key(a)) == PREFIX_CHARS
    assert prefix_key(_item("y", 1)) != prefix_key(a)
    lone = McqItem(item_id="z", task="t", kind="letter", prompt="short", continuations=[" A"], gold=0)
    assert prefix_groups([lone, a, lone.model_copy(update={"item_id": "z2"})])[0] == [
        lone, lone.model_copy(update={"item_id": "z2"})]


def test_order_depends_only_on_the_items() -> None:
    items = _interleaved(seed=3)
    assert prefix_order(items) == prefix_order(list(items))
    # A resumed run's pending items (any subset): each group's items keep their relative order.
    pending = [it for i, it in enumerate(items) if i % 3]
    full = [it.item_id for it in prefix_order(items)]
    resumed = [it.item_id for it in prefix_order(pending)]
    for group in prefix_groups(pending):
        ids = [it.item_id for it in group]
        assert ids == [x for x in full if x in set(ids)]
        assert resumed[resumed.index(ids[0]):resumed.index(ids[0]) + len(ids)] == ids


def test_scheduler_sends_each_leader_alone_then_its_group() -> None:
    """Four workers at once against a fake endpoint: no follower leaves before its leader has
    finished, and released followers go before any new group."""
    items = _interleaved(n_subjects=5, per=7)
    log: list[tuple[str, str, str]] = []  # (event, subject, item)

    async def go() -> None:
        sched = PrefixScheduler(items)
        assert len(sched) == len(items)

        async def worker(seed: int) -> None:
            rng = random.Random(seed)
            while (item := await sched.next()) is not None:
                log.append(("send", item.subject or "", item.item_id))
                await asyncio.sleep(rng.uniform(0.001, 0.005))
                log.append(("done", item.subject or "", item.item_id))
                sched.done(item)

        await asyncio.gather(*(worker(i) for i in range(4)))
        assert len(sched) == 0

    asyncio.run(go())
    sent = [x for e, _, x in log if e == "send"]
    assert sorted(sent) == sorted(it.item_id for it in items) and len(set(sent)) == len(sent)
    leaders = {g[0].subject or "": g[0].item_id for g in prefix_groups(items)}
    for subject, leader in leaders.items():
        leader_done = log.index(("done", subject, leader))
        firsts = [i for i, (e, s, x) in enumerate(log) if e == "send" and s == subject and x != leader]
        assert min(firsts) > leader_done, subject


def test_a_failed_leader_still_releases_its_group() -> None:
    items = [_item("a", i) for i in range(3)]

    async def go() -> list[str]:
        sched = PrefixScheduler(items)
        first = await sched.next()
        assert first is not None and sched.take() is None  # the others wait for it
        sched.done(first)  # it failed: the group is released all the same
        return [x.item_id for x in (sched.take(), sched.take()) if x is not None]

    assert asyncio.run(go()) == ["a/1", "a/2"]


def test_ungrouped_keeps_the_given_order() -> None:
    items = _interleaved()
    sched = PrefixScheduler(items, grouped=False)
    out = []
    while (it := sched.take()) is not None:
        out.append(it.item_id)
    assert out == [it.item_id for it in items]


# --- end to end: the default run (auto + ordering) killed with -9, then resumed ------------------


def _seats_process(model: str, seats: int, service: float) -> tuple[subprocess.Popen[bytes], str]:
    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.stub_seats", "--port", str(port), "--seats", str(seats),
                             "--service", str(service), "--model", model], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1)
            return proc, f"http://127.0.0.1:{port}/v1"
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("seats stub did not start")


@pytest.fixture
def seat_pair() -> object:
    procs = [_seats_process("base-m", 4, 0.05), _seats_process("cand-m", 4, 0.05)]
    yield [url for _, url in procs]
    for p, _ in procs:
        p.kill()
        p.wait()


def _mcq_process(burl: str, curl: str, runs: Path) -> subprocess.Popen[bytes]:
    """`servecmp mcq` with the default (auto) concurrency on mmlu-sample, as a process to kill."""
    return subprocess.Popen([sys.executable, "-m", "servecmp", "mcq", "--baseline", burl, "--candidate", curl,
                             "--task", "mmlu-sample", "--runs-dir", str(runs)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_default_auto_run_killed_and_resumed_neither_loses_nor_repeats(tmp_path: Path, seat_pair: list[str]) -> None:
    burl, curl = seat_pair
    runs = tmp_path / "runs"
    proc = _mcq_process(burl, curl, runs)
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            if runs.exists() and any(runs.iterdir()):
                rec = only_run_dir(runs) / "records.jsonl"
                if rec.exists() and len(rec.read_text().splitlines()) >= 60:
                    break
            time.sleep(0.01)
        else:
            raise AssertionError("no records in time")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    run_dir = only_run_dir(runs)
    before = records(run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert {e["max_concurrency"] for e in manifest["endpoints"]} == {"auto"}
    n_items = manifest["n_items"]
    assert 60 <= len(before) < 2 * n_items

    done = servecmp("mcq", "--resume", str(run_dir), "--json")
    assert done.returncode == 0, done.stderr
    after = records(run_dir)
    keys = Counter((r["item_id"], r["endpoint"]) for r in after)
    assert len(keys) == 2 * n_items and max(keys.values()) == 1
    assert after[: len(before)] == before  # finished work kept verbatim
    # The resumed run's concurrency path is on record, with where it ended.
    log = [json.loads(x) for x in (run_dir / "concurrency.jsonl").read_text().splitlines()]
    summaries = [r for r in log if r.get("summary")]
    assert {r["endpoint"] for r in summaries} == {"baseline", "candidate"}
    assert all(r["setting"] == "auto" and r["final"] >= 1 for r in summaries)
    assert "concurrency baseline: auto ended at" in done.stderr


def test_a_run_killed_outright_keeps_its_concurrency_path_so_far(tmp_path: Path) -> None:
    # Slow seats (2 at 0.2 s): the run lasts ~25 s, so it is killed well before its end, after the
    # log's first periodic append (RunWatch.FLUSH_S).
    procs = [_seats_process("base-m", 2, 0.2), _seats_process("cand-m", 2, 0.2)]
    runs = tmp_path / "runs"
    try:
        proc = _mcq_process(procs[0][1], procs[1][1], runs)
        try:
            deadline = time.time() + 90
            while time.time() < deadline:
                if runs.exists() and any(runs.iterdir()) and (only_run_dir(runs) / "concurrency.jsonl").exists():
                    break
                time.sleep(0.01)
            else:
                raise AssertionError("no concurrency log in time")
            assert proc.poll() is None, "the run ended before it could be killed"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
    finally:
        for p, _ in procs:
            p.kill()
            p.wait()
    log = [json.loads(x) for x in (only_run_dir(runs) / "concurrency.jsonl").read_text().splitlines()]
    assert log and not any(r.get("summary") for r in log)  # the summary comes at the end only
    assert {r["endpoint"] for r in log} == {"baseline", "candidate"}
    assert {r["reason"] for r in log if r.get("limit") is not None} >= {"start"}
    assert len({r["segment"] for r in log}) == 1
