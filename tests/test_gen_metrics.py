"""servecmp.metrics.gen on small fixtures whose values are worked out by hand (in the comments) or,
for Wilson intervals, by the textbook formula written out here independently of scipy."""

from __future__ import annotations

import math

import pytest

from servecmp.metrics.gen import (
    divergence_summary,
    endpoint_rates,
    first_divergence,
    length_ratio,
    majority_correct,
    majority_flips,
    majority_vote,
    paired_correctness,
    paired_pass_at_1,
    pass_rates,
)

Z95 = 1.959963984540054


def wilson(k: int, n: int) -> tuple[float, float]:
    """Wilson score interval, from the formula (Wilson 1927), no continuity correction."""
    p = k / n
    denom = 1 + Z95**2 / n
    centre = (p + Z95**2 / (2 * n)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denom
    return centre - half, centre + half


@pytest.mark.parametrize(("a", "b", "expected"), [
    ("abc", "abd", 2),
    ("abc", "abc", None),
    ("ab", "abc", 2),          # a prefix: the shorter length
    ("abc", "ab", 2),
    ("", "x", 0),
    ("", "", None),
    ([1, 2, 3], [1, 5], 1),    # token ids
    ([7, 8], [7, 8], None),
    ("x", "y", 0),
])
def test_first_divergence(a: object, b: object, expected: int | None) -> None:
    assert first_divergence(a, b) == expected  # type: ignore[arg-type]


def test_divergence_summary() -> None:
    # 2 of 5 identical; differing positions 3, 7, 5 -> mean 5, median 5, max 7.
    d = divergence_summary([None, 3, 7, None, 5])
    assert (d.identical.count, d.identical.n, d.identical.rate) == (2, 5, 0.4)
    assert (d.identical.low, d.identical.high) == pytest.approx(wilson(2, 5), abs=1e-12)
    assert (d.position.n, d.position.mean, d.position.median, d.position.max) == (3, 5.0, 5.0, 7.0)
    assert d.position.mean_ci.low is not None and d.position.mean_ci.high is not None
    assert 3.0 <= d.position.mean_ci.low <= 5.0 <= d.position.mean_ci.high <= 7.0


def test_divergence_summary_all_identical() -> None:
    d = divergence_summary([None, None])
    assert (d.identical.count, d.identical.n) == (2, 2)
    assert d.position.n == 0 and d.position.mean is None


def test_paired_correctness_worked_example() -> None:
    # Baseline right on items 0-5, candidate right on 4-5 only: 4 correct->wrong, 0 wrong->correct.
    base = [1, 1, 1, 1, 1, 1, 0, 0, 0, 0]
    cand = [0, 0, 0, 0, 1, 1, 0, 0, 0, 0]
    r = paired_correctness(base, cand)
    assert r.n == 10
    assert (r.flips.flips, r.flips.correct_to_wrong, r.flips.wrong_to_correct) == (4, 4, 0)
    # McNemar exact: 4 of 4 discordant pairs one way, two-sided: 2 * (1/2)^4 = 0.125.
    assert r.flips.mcnemar_p == pytest.approx(0.125, abs=1e-12)
    assert (r.correct_to_wrong.count, r.correct_to_wrong.rate) == (4, 0.4)
    assert (r.correct_to_wrong.low, r.correct_to_wrong.high) == pytest.approx(wilson(4, 10), abs=1e-12)
    assert (r.wrong_to_correct.count, r.wrong_to_correct.rate, r.wrong_to_correct.low) == (0, 0.0, 0.0)
    assert r.wrong_to_correct.high == pytest.approx(wilson(0, 10)[1], abs=1e-12)
    assert (r.baseline_accuracy.rate, r.candidate_accuracy.rate) == (0.6, 0.2)
    assert r.delta_acc.point == pytest.approx(-0.4, abs=1e-12)
    assert r.delta_acc.low is not None and r.delta_acc.high is not None
    # Per-item differences are -1 (4 items) or 0: every resample's mean lies in [-1, 0].
    assert -1.0 <= r.delta_acc.low < -0.4 < r.delta_acc.high <= 0.0


def test_paired_correctness_mixed_flips() -> None:
    # c->w on items 1 and 5, w->c on item 3: McNemar binomtest(2, 3): every outcome of 3 fair coins
    # is at most as likely as 2-of-3 (3/8), so p = 1.
    base = [1, 1, 1, 0, 0, 1, 0, 1]
    cand = [1, 0, 1, 1, 0, 0, 0, 1]
    r = paired_correctness(base, cand)
    assert (r.flips.correct_to_wrong, r.flips.wrong_to_correct) == (2, 1)
    assert r.flips.mcnemar_p == pytest.approx(1.0)
    assert r.delta_acc.point == pytest.approx(-1 / 8)


def test_paired_correctness_no_discordant_pairs() -> None:
    r = paired_correctness([True, False, True], [True, False, True])
    assert r.flips.flips == 0 and r.flips.mcnemar_p == 1.0
    assert (r.delta_acc.point, r.delta_acc.low, r.delta_acc.high) == (0.0, 0.0, 0.0)


def test_paired_correctness_length_mismatch() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        paired_correctness([1, 0], [1])


def test_length_ratio() -> None:
    # sums 60 and 90 -> 1.5; per-item ratios 2, 1 and 5/3 bound every resample's ratio of sums.
    r = length_ratio([10, 20, 30], [20, 20, 50])
    assert r.point == pytest.approx(1.5)
    assert r.n == 3 and r.low is not None and r.high is not None
    assert 1.0 <= r.low < 1.5 < r.high <= 2.0


def test_length_ratio_proportional_collapses() -> None:
    r = length_ratio([10, 20], [15, 30])
    assert (r.point, r.low, r.high, r.n) == (1.5, 1.5, 1.5, 2)


def test_length_ratio_undefined() -> None:
    assert length_ratio([], []).point is None
    zero = length_ratio([0, 0], [3, 4])
    assert (zero.point, zero.low, zero.high, zero.n) == (None, None, None, 2)


def test_pass_rates_and_paired_pass_at_1() -> None:
    base = [[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]]  # rates .5, 1, 0 -> pass@1 0.5
    cand = [[1, 0, 0, 0], [1, 1, 1, 0], [0, 0, 0, 1]]  # rates .25, .75, .25 -> 1.25/3
    assert list(pass_rates(base)) == [0.5, 1.0, 0.0]
    r = paired_pass_at_1(base, cand)
    assert r.a.point == pytest.approx(0.5)
    assert r.b.point == pytest.approx(1.25 / 3)
    # Per-item differences -0.25, -0.25, +0.25: mean -1/12; every resample's mean lies in [-.25, .25].
    assert r.diff.point == pytest.approx(-1 / 12)
    assert r.diff.low is not None and r.diff.high is not None
    assert -0.25 <= r.diff.low < -1 / 12 < r.diff.high <= 0.25


def test_paired_pass_at_1_constant_difference() -> None:
    base = [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]  # .5, 1, .25
    cand = [[1, 0, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]]  # .25, .75, 0: every item loses 0.25
    r = paired_pass_at_1(base, cand)
    assert (r.a.point, r.b.point) == pytest.approx((1.75 / 3, 1 / 3))
    assert (r.diff.point, r.diff.low, r.diff.high) == pytest.approx((-0.25, -0.25, -0.25))


def test_pass_rates_ragged_and_empty() -> None:
    assert list(pass_rates([[1, 0], [1, 1, 1], [0, 0, 1]])) == pytest.approx([0.5, 1.0, 1 / 3])
    with pytest.raises(ValueError, match="no samples"):
        pass_rates([[1], []])


@pytest.mark.parametrize(("answers", "expected"), [
    (["5", "6", "6", None], "6"),
    (["5", "6"], "5"),                   # tie: the first to appear
    (["7", None, "8", "8", "7"], "7"),   # 2-2 tie: "7" appeared first
    ([None, None], None),
    ([None, "3", None, None], "3"),      # no-answer does not vote
])
def test_majority_vote(answers: list[str | None], expected: str | None) -> None:
    assert majority_vote(answers) == expected


def test_majority_correct_and_flips() -> None:
    base_answers: list[list[str | None]] = [["5", "6", "6"], ["1", "2"], [None, None]]
    base_correct = [[False, True, True], [True, False], [False, False]]
    assert list(majority_correct(base_answers, base_correct)) == [True, True, False]
    # Candidate: item 0 majority "5" (wrong), item 1 majority "2" (wrong), item 2 majority "9" (right).
    cand_answers: list[list[str | None]] = [["5", "5", "6"], ["2", "2"], ["9", None]]
    cand_correct = [[False, False, True], [False, False], [True, False]]
    r = majority_flips(base_answers, base_correct, cand_answers, cand_correct)
    assert (r.flips.correct_to_wrong, r.flips.wrong_to_correct, r.n) == (2, 1, 3)
    assert r.delta_acc.point == pytest.approx(-1 / 3)


def test_majority_correct_shape_errors() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        majority_correct([["1"]], [])
    with pytest.raises(ValueError, match="item 0"):
        majority_correct([["1", "2"]], [[True]])


def test_endpoint_rates() -> None:
    r = endpoint_rates(["1", None, "2", None], ["stop", "length", "stop", "stop"])
    assert (r.no_answer.count, r.no_answer.n, r.no_answer.rate) == (2, 4, 0.5)
    assert (r.truncated.count, r.truncated.rate) == (1, 0.25)
    assert (r.truncated.low, r.truncated.high) == pytest.approx(wilson(1, 4), abs=1e-12)
    empty = endpoint_rates([], [])
    assert empty.no_answer.rate is None and empty.truncated.n == 0
