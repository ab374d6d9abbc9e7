"""summarize_mcq / summarize_records: layout, JSON safety, hand-checked figures, degenerate inputs."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from servecmp.errors import UserError
from servecmp.mcq.from_records import summarize_records
from servecmp.mcq.records import McqRecord
from servecmp.metrics import SCHEMA, summarize_mcq
from servecmp.records import EndpointRole

N_BOOT = 1000

# The 10-item example of test_metrics_mcq.py (each row's figures are explained there): baseline
# right on items 0,1,2,3,6,8,9, candidate on 0,1,4,6,9; flips 2,3,8 (right->wrong) and 4
# (wrong->right); answers change on 2,3,4,5,8; baseline top margins
# .65,.35,.05,.45,.05,.25,.85,.35,.45,1.0.
GOLD = np.array([0, 1, 2, 3, 0, 0, 1, 2, 3, 0])
with np.errstate(divide="ignore"):
    BASE = np.log(np.array([
        [0.75, 0.10, 0.10, 0.05], [0.10, 0.55, 0.20, 0.15], [0.30, 0.10, 0.35, 0.25],
        [0.10, 0.20, 0.05, 0.65], [0.40, 0.45, 0.10, 0.05], [0.20, 0.50, 0.25, 0.05],
        [0.05, 0.90, 0.05, 0.00], [0.55, 0.20, 0.15, 0.10], [0.10, 0.05, 0.20, 0.65],
        [1.00, 0.00, 0.00, 0.00],
    ]))
    CAND = np.log(np.array([
        [0.60, 0.20, 0.10, 0.10], [0.10, 0.50, 0.30, 0.10], [0.40, 0.10, 0.30, 0.20],
        [0.10, 0.50, 0.10, 0.30], [0.50, 0.40, 0.05, 0.05], [0.20, 0.30, 0.40, 0.10],
        [0.10, 0.80, 0.10, 0.00], [0.60, 0.20, 0.10, 0.10], [0.10, 0.10, 0.50, 0.30],
        [0.90, 0.10, 0.00, 0.00],
    ]))


@pytest.fixture(autouse=True)
def _warnings_are_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def _assert_plain_json(obj: Any) -> None:
    """Only dict/list/str/int/float/bool/None, no NaN or infinity anywhere."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            assert type(key) is str
            _assert_plain_json(value)
    elif isinstance(obj, list):
        for value in obj:
            _assert_plain_json(value)
    elif isinstance(obj, float):
        assert math.isfinite(obj)
    else:
        assert obj is None or type(obj) in (str, int, bool), type(obj)


def test_summary_of_the_ten_item_example() -> None:
    topk_b = [{"A": -0.1, "B": -2.5}] * 10
    topk_c = [{"A": -0.2, "B": -2.0}] * 9 + [None]
    s = summarize_mcq(BASE, CAND, GOLD, option_lengths=[2, 2, 2, 2], base_topk=topk_b, cand_topk=topk_c,
                      groups={"subject": ["algebra"] * 5 + ["biology"] * 5}, n_boot=N_BOOT, seed=3)
    _assert_plain_json(s)
    json.dumps(s, allow_nan=False)
    assert s["schema"] == SCHEMA
    assert (s["n_items"], s["n_options"]) == (10, 4)
    assert s["settings"]["n_boot"] == N_BOOT and s["settings"]["seed"] == 3
    acc = s["accuracy"]
    assert (acc["baseline"]["point"], acc["candidate"]["point"]) == (0.7, 0.5)
    assert acc["diff"]["point"] == pytest.approx(-0.2)
    for est in acc.values():
        assert est["n"] == 10 and est["low"] <= est["point"] <= est["high"]
    f = s["flips"]
    assert (f["flips"], f["correct_to_wrong"], f["wrong_to_correct"]) == (4, 3, 1)
    assert f["rate"]["rate"] == 0.4 and f["mcnemar_p"] == pytest.approx(0.625)
    assert (s["answer_changes"]["count"], s["answer_changes"]["n"]) == (5, 10)
    # Equal option lengths: acc_norm equals acc.
    assert s["acc_norm"] == {key: s[key] for key in ("accuracy", "flips", "answer_changes")}
    assert s["no_answer"] == {"baseline": 0, "candidate": 0}
    assert s["option_kl"]["n"] == 10 and s["option_kl"]["n_floored"] == 0
    assert s["option_kl"]["max"] == pytest.approx(max(_option_kl_by_item()))
    tm = s["top_margin"]
    assert tm["n"] == 10
    assert tm["by_baseline_correctness"]["when_correct"]["point"] == pytest.approx(3.8 / 7)
    assert [b["changes"]["n"] for b in tm["change_by_bucket"]] == [2, 0, 1, 2, 2, 0, 1, 0, 1, 1]
    assert tm["margin_change_correlation"]["spearman_r"] < 0  # small margins change more
    # Top-k: S = {A, B} on 9 items, one item without a candidate list.
    p_a, p_b, q_a, q_b = math.exp(-0.1), math.exp(-2.5), math.exp(-0.2), math.exp(-2.0)
    p_r, q_r = 1 - p_a - p_b, 1 - q_a - q_b
    kl_hat = p_a * 0.1 + p_b * -0.5 + p_r * math.log(p_r / q_r)
    tk = s["topk_kl"]
    assert tk["n"] == 9
    assert tk["kl_hat"]["mean"] == pytest.approx(kl_hat)
    assert tk["kl_hat"]["mean_ci"] == {"point": pytest.approx(kl_hat), "low": pytest.approx(kl_hat),
                                       "high": pytest.approx(kl_hat), "n": 9}
    assert tk["unresolved_baseline_mass"]["median"] == pytest.approx(p_r)
    assert tk["shared_tokens"] == {"mean": 2.0, "min": 2}
    rows = s["groups"]["subject"]
    assert [(r["group"], r["flips"], r["n"]) for r in rows] == [("algebra", 3, 5), ("biology", 1, 5)]
    assert rows[1]["mean_topk_kl"] == pytest.approx(kl_hat)


def _option_kl_by_item() -> list[float]:
    p, q = np.exp(BASE), np.exp(CAND)
    out = []
    for pi, qi in zip(p, q, strict=True):
        out.append(sum(a * math.log(a / b) for a, b in zip(pi, qi, strict=True) if a > 0))
    return out


def test_summary_is_deterministic_for_a_seed() -> None:
    a = summarize_mcq(BASE, CAND, GOLD, n_boot=N_BOOT, seed=1)
    b = summarize_mcq(BASE, CAND, GOLD, n_boot=N_BOOT, seed=1)
    assert a == b
    assert a["acc_norm"] is None and a["topk_kl"] is None and a["groups"] == {}


def test_acc_norm_section_differs_when_lengths_change_the_choice() -> None:
    base = np.array([[-4.0, -6.0], [-1.0, -3.0], [-2.0, -1.0]])
    cand = np.array([[-4.0, -13.0], [-1.0, -3.0], [-2.0, -1.0]])
    gold = np.array([1, 0, 1])
    s = summarize_mcq(base, cand, gold, option_lengths=[[2, 6], [2, 6], [2, 6]], n_boot=N_BOOT)
    # Raw logprobs: both endpoints pick 0, 0, 1 -> 2/3 right, no flip.
    assert s["accuracy"]["baseline"]["point"] == pytest.approx(2 / 3)
    assert s["accuracy"]["candidate"]["point"] == pytest.approx(2 / 3)
    assert s["flips"]["flips"] == 0
    # Per character: baseline [-2, -1] -> 1, [-.5, -.5] -> 0 (tie), [-1, -.17] -> 1: all right;
    # candidate [-2, -2.17] -> 0 (wrong), then 0, 1 as the baseline: one right -> wrong flip.
    norm = s["acc_norm"]
    assert norm["accuracy"]["baseline"]["point"] == 1.0
    assert norm["accuracy"]["candidate"]["point"] == pytest.approx(2 / 3)
    assert (norm["flips"]["correct_to_wrong"], norm["answer_changes"]["count"]) == (1, 1)


def test_all_correct_identical_endpoints() -> None:
    lp = np.log(np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]))
    s = summarize_mcq(lp, lp, np.array([0, 1, 0]), n_boot=N_BOOT)
    _assert_plain_json(s)
    assert s["accuracy"]["diff"] == {"point": 0.0, "low": 0.0, "high": 0.0, "n": 3}
    assert s["accuracy"]["baseline"] == {"point": 1.0, "low": 1.0, "high": 1.0, "n": 3}
    assert s["flips"]["flips"] == 0 and s["flips"]["mcnemar_p"] == 1.0
    assert s["option_kl"]["max"] == 0.0
    wrong = s["top_margin"]["by_baseline_correctness"]["when_wrong"]
    assert wrong == {"point": None, "low": None, "high": None, "n": 0}
    assert s["top_margin"]["by_baseline_correctness"]["mann_whitney_p"] is None
    corr = s["top_margin"]["margin_change_correlation"]
    assert corr["n"] == 3 and corr["spearman_r"] is None


def test_unanswered_items() -> None:
    base = np.array([[-0.1, -2.0], [-0.3, -1.0]])
    cand = np.array([[-np.inf, -np.inf], [-0.3, -1.0]])
    s = summarize_mcq(base, cand, np.array([0, 0]), n_boot=N_BOOT)
    assert s["no_answer"] == {"baseline": 0, "candidate": 1}
    assert s["accuracy"]["candidate"]["point"] == 0.5
    assert s["flips"]["correct_to_wrong"] == 1
    assert s["option_kl"]["n"] == 1


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="no items"):
        summarize_mcq(np.zeros((0, 4)), np.zeros((0, 4)), np.zeros(0, dtype=int))
    with pytest.raises(ValueError, match="gold"):
        summarize_mcq(BASE, CAND, GOLD + 1)
    with pytest.raises(ValueError, match="shape"):
        summarize_mcq(BASE, CAND[:, :3], GOLD)
    with pytest.raises(ValueError, match="top-k"):
        summarize_mcq(BASE, CAND, GOLD, base_topk=[{}], cand_topk=[{}])


def _record(item: str, endpoint: EndpointRole, lp: list[float], gold: int, **extra: Any) -> McqRecord:
    return McqRecord(item_id=item, endpoint=endpoint, task="mmlu", gold=gold, option_logprobs=lp,
                     chosen=int(np.argmax(lp)), **extra)


def test_summarize_records_pairs_and_groups() -> None:
    base = [
        _record("q1", "baseline", [-0.1, -3.0], 0, subject="math", category="stem",
                topk=[(" A", -0.1), (" B", -3.0)], option_lengths=[2, 2]),
        _record("q2", "baseline", [-2.0, -0.2], 1, subject="law", category="humanities",
                topk=[(" B", -0.2), (" A", -2.0)], option_lengths=[2, 2]),
        _record("q3", "baseline", [-0.5, -1.0, -3.0], 0, subject="law", category="humanities",
                option_lengths=[2, 2, 2]),
        _record("only-base", "baseline", [-0.1, -3.0], 0),
    ]
    cand = [
        _record("q2", "candidate", [-0.3, -1.5], 1, subject="law", category="humanities",
                topk=[(" A", -0.3), (" B", -1.5)], option_lengths=[2, 2]),
        _record("q1", "candidate", [-0.2, -2.0], 0, subject="math", category="stem",
                topk=[(" A", -0.2), (" B", -2.0)], option_lengths=[2, 2]),
        _record("q3", "candidate", [-0.5, -1.0, -3.0], 0, subject="law", category="humanities",
                option_lengths=[2, 2, 2]),
    ]
    s = summarize_records(base, cand, n_boot=N_BOOT)
    _assert_plain_json(s)
    assert s["pairing"] == {"paired": 3, "unpaired_baseline": 1, "unpaired_candidate": 0,
                            "duplicates_baseline": 0, "duplicates_candidate": 0,
                            "stored_choice_mismatch": {"baseline": 0, "candidate": 0}}
    assert s["tasks"] == ["mmlu"]
    assert s["n_options"] == 3  # q1, q2 padded with -inf
    # q2 flips right -> wrong (candidate prefers option 0).
    assert s["flips"]["correct_to_wrong"] == 1 and s["flips"]["flips"] == 1
    assert s["topk_kl"]["n"] == 2
    assert set(s["groups"]) == {"subject", "category"}
    assert [r["group"] for r in s["groups"]["subject"]] == ["law", "math"]
    assert s["acc_norm"] is not None


def test_summarize_records_duplicates_and_errors() -> None:
    first = _record("q1", "baseline", [-3.0, -0.1], 0)
    rerun = _record("q1", "baseline", [-0.1, -3.0], 0)
    cand = [_record("q1", "candidate", [-0.1, -3.0], 0)]
    s = summarize_records([first, rerun], cand, n_boot=N_BOOT)
    assert s["pairing"]["duplicates_baseline"] == 1
    assert s["accuracy"]["baseline"]["point"] == 1.0  # the later record wins
    assert s["acc_norm"] is None  # no option lengths recorded
    with pytest.raises(UserError, match="share no item"):
        summarize_records([first], [_record("q9", "candidate", [-0.1, -3.0], 0)])
    with pytest.raises(UserError, match="same task"):
        summarize_records([first], [_record("q1", "candidate", [-0.1, -3.0], 1)])
    tie = _record("q1", "candidate", [-1.0, -1.0], 0)
    tie.chosen = 1  # a scorer with another tie rule
    assert summarize_records([rerun], [tie], n_boot=N_BOOT)["pairing"]["stored_choice_mismatch"] == {
        "baseline": 0, "candidate": 1}


def _pair_of_runs() -> tuple[list[McqRecord], list[McqRecord]]:
    base = [_record("q1", "baseline", [-0.1, -3.0], 0, subject="math", topk=[(" A", -0.1), (" B", -3.0)],
                    option_lengths=[2, 2]),
            _record("q2", "baseline", [-2.0, -0.2], 1, subject="law", topk=[(" B", -0.2), (" A", -2.0)],
                    option_lengths=[2, 2])]
    cand = [_record("q1", "candidate", [-0.2, -2.0], 0, subject="math", topk=[(" A", -0.2), (" B", -2.0)],
                    option_lengths=[2, 2]),
            _record("q2", "candidate", [-0.3, -1.5], 1, subject="law", topk=[(" A", -0.3), (" B", -1.5)],
                    option_lengths=[2, 2])]
    return base, cand


def test_the_typed_summary_mirrors_the_metrics_layout(tmp_path: Path) -> None:
    from servecmp.mcq import summary as typed
    from servecmp.metrics import SCHEMA_VERSION

    assert (typed.SCHEMA, typed.VERSION) == (SCHEMA, SCHEMA_VERSION)
    base, cand = _pair_of_runs()
    run = typed.RunInfo(task="mmlu", source="a test", endpoints={
        "baseline": typed.RunEndpoint(url="http://a/v1", model="m"),
        "candidate": typed.RunEndpoint(url="http://b/v1", model="m-int8")})
    s = typed.summary_from_records(base, cand, run, seed=0)
    # Every key of the metrics dict is a field (the models forbid unknown keys), and back again.
    plain = summarize_records(base, cand)
    assert s.model_dump(mode="json") == {**plain, "run": run.model_dump(mode="json")}
    # Typed access: q2 flips right -> wrong, hand-checked in test_summarize_records_pairs_and_groups.
    assert (s.flips.flips, s.flips.correct_to_wrong, s.accuracy.diff.point) == (1, 1, -0.5)
    assert s.topk_kl is not None and s.topk_kl.n == 2
    assert [g.group for g in s.groups["subject"]] == ["law", "math"]

    (tmp_path / "summary.json").write_text(json.dumps(s.model_dump(mode="json")))
    assert typed.load_summary(tmp_path) == s
    drifted = {**s.model_dump(mode="json"), "new_metric": 1}
    (tmp_path / "summary.json").write_text(json.dumps(drifted))
    with pytest.raises(UserError, match=r"summary.json: not a valid MCQ summary \(new_metric: Extra inputs"):
        typed.load_summary(tmp_path)
    old = {**s.model_dump(mode="json"), "schema": "servecmp.mcq_summary/1"}
    del old["version"]
    (tmp_path / "summary.json").write_text(json.dumps(old))
    with pytest.raises(UserError, match=r"is an MCQ summary of layout servecmp.mcq_summary/1, not "
                                        r"servecmp.mcq_summary/3; recompute it from the records with: servecmp report"):
        typed.load_summary(tmp_path / "summary.json")


def test_summarize_records_does_not_depend_on_the_records_order() -> None:
    # Records land in the order requests finish, and a resumed or stored-baseline run appends them in
    # another: the same records in any order must give the same summary, bootstrap intervals included
    # (the intervals resample positions, so they moved with the order before the pairing sorted ids).
    rng = np.random.default_rng(3)
    base, cand = [], []
    for i in range(40):
        gold = int(rng.integers(0, 4))
        base.append(_record(f"q{i}", "baseline", list(rng.normal(-1.5, 1.0, 4)), gold))
        cand.append(_record(f"q{i}", "candidate", list(rng.normal(-1.5, 1.0, 4)), gold))
    first = summarize_records(base, cand, n_boot=N_BOOT)
    order_b, order_c = rng.permutation(40), rng.permutation(40)
    again = summarize_records([base[j] for j in order_b], [cand[j] for j in order_c], n_boot=N_BOOT)
    assert json.dumps(again, sort_keys=True) == json.dumps(first, sort_keys=True)
    # The check can fail: the seeded bootstrap resamples positions, so the same values in another
    # order give another interval.
    from servecmp.metrics.stats import paired_bootstrap_diff_ci

    ok_b = np.array([float(np.argmax(r.option_logprobs) == r.gold) for r in base])
    ok_c = np.array([float(np.argmax(r.option_logprobs) == r.gold) for r in cand])
    perm = rng.permutation(40)
    one = paired_bootstrap_diff_ci(ok_b, ok_c, n_boot=N_BOOT, seed=0)
    other = paired_bootstrap_diff_ci(ok_b[perm], ok_c[perm], n_boot=N_BOOT, seed=0)
    assert (one.low, one.high) != (other.low, other.high)
