"""The MCQ noise floor: each endpoint against itself (--secondary, --noise-floor), the candidate's
excess over it (flips_excess, kl_excess) with the paired tests, against hand values; and end to end
on stub endpoints, gates on the excess included."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from servecmp.mcq.compare import compare_run
from servecmp.metrics.floor import combine_floors, excess_over_floor, item_differences
from tests.stub_openai import StubServer, StubState
from tests.test_mcq_cli import only_run_dir, records, servecmp, write_items
from tests.test_mcq_multi import WRONG, P, kl, make_run, record


def test_excess_over_floor_hand_values() -> None:
    n = 20
    cand = np.zeros(n, dtype=bool)
    cand[:10] = True
    floor = np.zeros(n, dtype=bool)
    ex = excess_over_floor(cand, floor, np.zeros(n), np.zeros(n))
    assert ex.n == 20 and ex.flips_excess.point == pytest.approx(0.5)
    assert (ex.candidate_only_flips, ex.floor_only_flips) == (10, 0)
    # Exact McNemar: 10 discordant items all one way: 2 · 0.5^10.
    assert ex.mcnemar_p == pytest.approx(2 * 0.5**10)
    assert ex.flips_excess.low is not None and ex.flips_excess.low > 0 and ex.within_floor is False
    # The same flips as the floor: excess exactly 0, a collapsed interval, within the floor.
    same = excess_over_floor(cand, cand, np.zeros(n), np.zeros(n))
    assert (same.flips_excess.point, same.flips_excess.low, same.flips_excess.high) == (0.0, 0.0, 0.0)
    assert same.within_floor is True and same.mcnemar_p == 1.0
    # KL: five positive differences: Wilcoxon's exact two-sided p is 2/2^5; the mean difference 0.3.
    ck = np.array([0.1, 0.2, 0.3, 0.4, 0.5]) + 0.05
    fk = np.full(5, 0.05)
    kx = excess_over_floor(np.zeros(5, bool), np.zeros(5, bool), ck, fk)
    assert kx.kl_excess.point == pytest.approx(0.3) and kx.wilcoxon_p == pytest.approx(2 / 32)
    assert (kx.candidate_kl_mean, kx.floor_kl_mean, kx.kl_n) == (pytest.approx(0.35), pytest.approx(0.05), 5)
    # Items whose KL is undefined (NaN) are left out of the KL comparison only.
    nan = excess_over_floor(np.zeros(3, bool), np.zeros(3, bool), [0.2, np.nan, 0.4], [0.0, 0.1, np.nan])
    assert (nan.n, nan.kl_n, nan.kl_excess.point) == (3, 1, pytest.approx(0.2))


def test_floors_combine_by_any_flip_and_largest_kl() -> None:
    lp = np.log
    a = item_differences(lp([[0.7, 0.3], [0.7, 0.3]]), lp([[0.7, 0.3], [0.3, 0.7]]), [0, 0])
    b = item_differences(lp([[0.7, 0.3], [0.7, 0.3]]), lp([[0.6, 0.4], [0.7, 0.3]]), [0, 0])
    assert a.flipped.tolist() == [False, True] and b.flipped.tolist() == [False, False]
    f = combine_floors([a, b])
    assert f.flipped.tolist() == [False, True] and f.changed.tolist() == [False, True]
    assert f.kl[0] == pytest.approx(0.7 * math.log(0.7 / 0.6) + 0.3 * math.log(0.3 / 0.4))
    assert f.kl[1] == pytest.approx(0.4 * math.log(0.7 / 0.3))


def test_floor_from_records_hand_values(tmp_path: Path) -> None:
    # Candidate flips on q0 and q1; the secondary flips q2; asked again, the baseline repeats itself and
    # the candidate changes its mind on q1 (WRONG, then P).
    rep = (record(0, "baseline", P, 1), record(1, "baseline", P, 1), record(0, "candidate", WRONG, 1),
           record(1, "candidate", P, 1))
    run_dir = make_run(tmp_path, {"baseline": [P] * 4, "candidate": [WRONG, WRONG, P, P],
                                  "secondary": [P, P, WRONG, P]}, secondary=True, noise_floor=2, extra=rep)
    comp = compare_run(run_dir)
    cand = comp.candidates[0]
    # The main comparison reads only the main pass.
    assert cand.summary.n_items == 4 and cand.summary.flips.flips == 2
    floor = comp.floor
    assert floor is not None and floor.repeat_items == 2 and floor.secondary is not None
    checks = {(c.endpoint, c.method): c for c in floor.checks}
    assert set(checks) == {("baseline", "secondary"), ("baseline", "repeat"), ("candidate", "repeat")}
    assert checks[("baseline", "secondary")].summary.flips.flips == 1
    assert checks[("baseline", "secondary")].summary.n_items == 4
    assert checks[("baseline", "repeat")].reproducible and checks[("baseline", "repeat")].exact
    assert checks[("baseline", "repeat")].max_option_kl == 0
    assert checks[("candidate", "repeat")].summary.n_items == 2 and not checks[("candidate", "repeat")].reproducible
    assert floor.not_reproducible == ["baseline", "candidate"]
    ex = cand.floor
    assert ex is not None
    assert ex.sources == ["baseline vs secondary", "baseline vs itself", "candidate vs itself"]
    # On q0, q1 (the items every floor measured): candidate flips (1, 1), floor flips (0, 1).
    assert ex.n == 2 and ex.candidate_flip_rate == 1.0 and ex.floor_flip_rate == 0.5
    assert ex.flips_excess.point == pytest.approx(0.5)
    assert (ex.candidate_only_flips, ex.floor_only_flips, ex.mcnemar_p) == (1, 0, 1.0)
    # KL: candidate (k, k), floor (0, KL(WRONG ‖ P) = k): excess k/2; one nonzero difference.
    k = kl(P, WRONG)
    assert kl(WRONG, P) == pytest.approx(k)
    assert ex.candidate_kl_mean == pytest.approx(k) and ex.floor_kl_mean == pytest.approx(k / 2)
    assert ex.kl_excess.point == pytest.approx(k / 2) and ex.wilcoxon_p == pytest.approx(1.0)
    assert ex.within_floor is True  # two items: the interval [0, 1] contains 0
    assert comp.leaderboard[0].flips_excess == ex.flips_excess


def test_reproducible_allows_float_rounding_only(tmp_path: Path) -> None:
    nudged = (0.7 + 1e-9, 0.1, 0.1, 0.1 - 1e-9)  # same answers, KL ~1e-17 nats
    moved = (0.69, 0.11, 0.1, 0.1)  # same answers, KL ~5e-4 nats
    rep = (record(0, "baseline", nudged, 1), record(1, "baseline", P, 1), record(0, "candidate", moved, 1),
           record(1, "candidate", P, 1))
    run_dir = make_run(tmp_path, {"baseline": [P] * 4, "candidate": [P] * 4}, noise_floor=2, extra=rep)
    floor = compare_run(run_dir).floor
    assert floor is not None
    checks = {c.endpoint: c for c in floor.checks}
    base, cand = checks["baseline"], checks["candidate"]
    assert base.reproducible and not base.exact and 0 < (base.max_option_kl or 0) <= 1e-9
    assert not cand.reproducible and not cand.exact and cand.max_option_kl == pytest.approx(kl(P, moved))
    assert floor.not_reproducible == ["candidate"]


def test_noise_floor_and_secondary_end_to_end(tmp_path: Path) -> None:
    data = tmp_path / "items.jsonl"
    write_items(data, 10)
    runs = tmp_path / "runs"
    with StubServer(StubState(model="base")) as b, StubServer(StubState(model="cand")) as c, \
            StubServer(StubState(model="base")) as s:
        proc = servecmp("mcq", "--baseline", b.url, "--candidate", c.url, "--secondary", s.url, "--noise-floor", "4",
                        "--task", f"jsonl:{data}", "--runs-dir", str(runs), "--top-k", "5", "--concurrency", "3",
                        "--gate", "flips_excess<=100%", "--gate", "kl_excess<=100", "--json")
        assert proc.returncode == 0, proc.stderr
        # Resuming the finished run sends nothing more (the repeat pass included) and prints the report.
        run_dir = only_run_dir(runs)
        n_before = len(records(run_dir))
        text = servecmp("mcq", "--resume", str(run_dir))
        assert text.returncode == 0, text.stderr
    recs = records(run_dir)
    assert len(recs) == n_before
    again = [r for r in recs if r["repeat"] == 1]
    assert sorted({str(r["endpoint"]) for r in again}) == ["baseline", "candidate"] and len(again) == 8
    assert len([r for r in recs if r["repeat"] == 0]) == 30
    out = json.loads(proc.stdout)
    assert out["schema"] == "servecmp.mcq_comparison/1"
    floor = out["floor"]
    # The stubs answer deterministically: every endpoint reproduces itself exactly.
    assert [(ch["endpoint"], ch["method"], ch["reproducible"]) for ch in floor["checks"]] == [
        ("baseline", "secondary", True), ("baseline", "repeat", True), ("candidate", "repeat", True)]
    assert floor["not_reproducible"] == []
    cand = out["candidates"][0]
    ex = cand["floor"]
    assert ex["n"] == 4 and ex["floor_flip_rate"] == 0.0 and ex["floor_kl_mean"] == 0.0
    assert ex["flips_excess"]["point"] == pytest.approx(ex["candidate_flip_rate"])
    gates = {g["metric"]: g for g in out["verdict"]["gates"]}
    assert gates["flips_excess"]["status"] == "pass" and gates["flips_excess"]["n"] == 4
    assert gates["kl_excess"]["status"] == "pass"
    # The same items asked again, in another order: the records of the repeat are a sample of the items.
    assert {r["item_id"] for r in again if r["endpoint"] == "baseline"} <= {f"q{i}" for i in range(10)}
    assert "Noise floor" in text.stdout
    assert "baseline vs secondary: reproduced exactly on 10 items" in text.stdout
    assert "candidate asked again: reproduced exactly on 4 items" in text.stdout
    assert "its flips are" in text.stdout
