"""servecmp.metrics.stats: expected values worked out by hand or from closed-form formulas."""

from __future__ import annotations

import itertools
import math
import statistics
import warnings

import numpy as np
import pytest

from servecmp.metrics.stats import (
    Estimate,
    bootstrap_mean_ci,
    correlation,
    describe,
    joint_bootstrap_means,
    mann_whitney_p,
    mcnemar_exact,
    paired_bootstrap_diff_ci,
    paired_bootstrap_means,
    wilcoxon_paired,
    wilson_ci,
)

N_BOOT = 1000


@pytest.fixture(autouse=True)
def _warnings_are_errors():
    # Degenerate inputs must be handled without NaN or scipy warnings.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def _wilson_closed_form(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    centre = (k + z * z / 2) / (n + z * z)
    half = z / (n + z * z) * math.sqrt(k * (n - k) / n + z * z / 4)
    return centre - half, centre + half


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (10, 10), (1, 1), (37, 14042), (616, 14042)])
def test_wilson_matches_closed_form(k: int, n: int) -> None:
    p = wilson_ci(k, n)
    low, high = _wilson_closed_form(k, n)
    assert p.count == k and p.n == n
    assert p.rate == pytest.approx(k / n)
    assert p.low == pytest.approx(max(low, 0.0), abs=1e-12)
    assert p.high == pytest.approx(min(high, 1.0), abs=1e-12)


def test_wilson_other_confidence_and_empty() -> None:
    low, high = _wilson_closed_form(4, 20, 0.9)
    p = wilson_ci(4, 20, confidence=0.9)
    assert (p.low, p.high) == pytest.approx((low, high), abs=1e-12)
    empty = wilson_ci(0, 0)
    assert (empty.n, empty.rate, empty.low, empty.high) == (0, None, None, None)
    with pytest.raises(ValueError):
        wilson_ci(5, 4)


def test_mcnemar_exact_by_binomial_formula() -> None:
    # b=3, c=1: two-sided p = 2 * P(X <= 1), X ~ Bin(4, 1/2) = 2 * (C(4,0) + C(4,1)) / 2^4 = 10/16.
    assert mcnemar_exact(3, 1) == pytest.approx(0.625, abs=1e-15)
    assert mcnemar_exact(1, 3) == pytest.approx(0.625, abs=1e-15)
    # b=10, c=2: 2 * (C(12,0) + C(12,1) + C(12,2)) / 2^12 = 2 * 79 / 4096.
    expected = 2 * sum(math.comb(12, i) for i in range(3)) / 2**12
    assert expected == pytest.approx(0.03857421875)
    assert mcnemar_exact(10, 2) == pytest.approx(expected, abs=1e-15)
    # Balanced discordant pairs: no evidence of asymmetry.
    assert mcnemar_exact(5, 5) == pytest.approx(1.0)
    assert mcnemar_exact(0, 0) == 1.0


def test_bootstrap_mean_ci_is_seeded_and_brackets_the_mean() -> None:
    x = np.random.default_rng(1).normal(size=200)
    a = bootstrap_mean_ci(x, n_boot=N_BOOT, seed=7)
    b = bootstrap_mean_ci(x, n_boot=N_BOOT, seed=7)
    c = bootstrap_mean_ci(x, n_boot=N_BOOT, seed=8)
    assert a == b
    assert a != c
    assert a.point == pytest.approx(float(np.mean(x)))
    assert a.n == 200
    assert a.low is not None and a.high is not None and a.point is not None
    assert a.low < a.point < a.high


def test_bootstrap_width_matches_normal_approximation() -> None:
    # Bernoulli(0.3) with n=2000: the percentile interval should be close to +-1.96 * sqrt(p(1-p)/n).
    x = (np.random.default_rng(3).random(2000) < 0.3).astype(float)
    est = bootstrap_mean_ci(x, n_boot=N_BOOT, seed=0)
    assert est.low is not None and est.high is not None and est.point is not None
    expected_half = 1.959964 * math.sqrt(est.point * (1 - est.point) / 2000)
    assert (est.high - est.low) / 2 == pytest.approx(expected_half, rel=0.15)


def test_bootstrap_degenerate_inputs() -> None:
    assert bootstrap_mean_ci([]) == Estimate(None, None, None, 0)
    assert bootstrap_mean_ci([0.7] * 50, n_boot=N_BOOT) == Estimate(0.7, 0.7, 0.7, 50)
    assert bootstrap_mean_ci([1.0] * 14, n_boot=N_BOOT) == Estimate(1.0, 1.0, 1.0, 14)
    assert bootstrap_mean_ci([2.5], n_boot=N_BOOT) == Estimate(2.5, 2.5, 2.5, 1)
    with pytest.raises(ValueError):
        bootstrap_mean_ci([1.0, float("nan")])


def test_paired_diff_keeps_the_pairing() -> None:
    # Candidate equals baseline except on 10 of 400 items: the paired interval of the difference is
    # far narrower than the spread of either accuracy.
    rng = np.random.default_rng(5)
    a = (rng.random(400) < 0.6).astype(float)
    b = a.copy()
    b[:10] = 1 - b[:10]
    d = paired_bootstrap_diff_ci(a, b, n_boot=N_BOOT, seed=0)
    assert d.point == pytest.approx(b.mean() - a.mean())
    assert d.low is not None and d.high is not None and d.point is not None
    assert d.low <= d.point <= d.high
    assert d.high - d.low < 0.04
    single = bootstrap_mean_ci(a, n_boot=N_BOOT, seed=0)
    assert single.low is not None and single.high is not None
    assert single.high - single.low > 0.08


def test_paired_means_share_resamples_with_single_calls() -> None:
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=300), rng.normal(size=300)
    pm = paired_bootstrap_means(a, b, n_boot=N_BOOT, seed=4)
    assert pm.a == bootstrap_mean_ci(a, n_boot=N_BOOT, seed=4)
    assert pm.b == bootstrap_mean_ci(b, n_boot=N_BOOT, seed=4)
    assert pm.diff == paired_bootstrap_diff_ci(a, b, n_boot=N_BOOT, seed=4)
    joint = joint_bootstrap_means([a, b], differences=[(0, 1)], n_boot=N_BOOT, seed=4)
    assert joint == [pm.a, pm.b, pm.diff]


def test_paired_diff_degenerate() -> None:
    same = [1.0, 0.0, 1.0, 1.0]
    assert paired_bootstrap_diff_ci(same, same, n_boot=N_BOOT) == Estimate(0.0, 0.0, 0.0, 4)
    # Every pair differs by exactly +1: the interval collapses onto 1.
    shifted = paired_bootstrap_diff_ci([0.0, 2.0, 0.0], [1.0, 3.0, 1.0], n_boot=N_BOOT)
    assert shifted == Estimate(1.0, 1.0, 1.0, 3)
    empty = paired_bootstrap_means([], [])
    assert empty.diff == Estimate(None, None, None, 0)
    with pytest.raises(ValueError):
        paired_bootstrap_diff_ci([1.0, 2.0], [1.0])


def _signed_rank_two_sided_p(d: list[float]) -> float:
    """Exact two-sided Wilcoxon p by enumerating all sign assignments (no ties among |d| assumed)."""
    nz = sorted((x for x in d if x != 0), key=abs)
    ranks = range(1, len(nz) + 1)
    w_plus = sum(r for r, x in zip(ranks, nz, strict=True) if x > 0)
    total = len(nz) * (len(nz) + 1) / 2
    w = min(w_plus, total - w_plus)
    sums = [sum(s) for k in range(len(nz) + 1) for s in itertools.combinations(ranks, k)]
    return min(1.0, 2 * sum(1 for s in sums if s <= w) / len(sums))


def test_wilcoxon_drops_zero_differences() -> None:
    a = [0.0] * 7
    b = [1.0, -2.0, 3.0, 0.0, 0.0, 5.0, 4.0]
    # Nonzero |d| ranks 1..5, W+ = 1+3+4+5 = 13, W- = 2; P(W <= 2) = 3/32 -> p = 0.1875.
    res = wilcoxon_paired(a, b)
    assert (res.n, res.n_nonzero) == (7, 5)
    assert res.statistic == 2.0
    assert res.pvalue == pytest.approx(0.1875)
    assert res.pvalue == pytest.approx(_signed_rank_two_sided_p(b))
    assert res.median_diff == 1.0


def test_wilcoxon_all_zero_differences() -> None:
    res = wilcoxon_paired([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert (res.statistic, res.pvalue, res.n, res.n_nonzero, res.median_diff) == (None, None, 3, 0, 0.0)


def test_correlation_values_and_undefined_cases() -> None:
    x = np.arange(1.0, 11.0)
    y = x**3
    c = correlation(x, y)
    assert c.n == 10
    assert c.spearman_r == pytest.approx(1.0)
    assert c.pearson_r == pytest.approx(float(np.corrcoef(x, y)[0, 1]))
    assert c.pearson_r is not None and c.pearson_r < 1.0
    # n = 10 uses a seeded 20,000-resample permutation test: its smallest p is 1/20,001.
    assert c.spearman_p is not None and c.spearman_p < 1e-3
    for xs, ys in (([1.0, 2.0], [2.0, 1.0]), ([1.0, 2.0, 3.0], [5.0, 5.0, 5.0]), ([], [])):
        u = correlation(xs, ys)
        assert (u.spearman_r, u.spearman_p, u.pearson_r, u.pearson_p) == (None, None, None, None)
        assert u.n == len(xs)


def test_mann_whitney() -> None:
    # Complete separation of 3 vs 3: exact two-sided p = 2 / C(6, 3).
    assert mann_whitney_p([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(2 / math.comb(6, 3))
    assert mann_whitney_p([], [1.0]) is None
    assert mann_whitney_p([0.5, 0.5], [0.5]) == 1.0


def test_describe() -> None:
    x = np.arange(101, dtype=float)  # 0..100: percentiles are the values themselves
    d = describe(x, n_boot=N_BOOT)
    assert (d.n, d.mean, d.median, d.p90, d.p99, d.max) == (101, 50.0, 50.0, 90.0, 99.0, 100.0)
    assert d.mean_ci.point == 50.0
    empty = describe([])
    assert (empty.n, empty.mean, empty.max, empty.mean_ci.point) == (0, None, None, None)


def test_correlation_p_is_exact_for_few_candidates() -> None:
    # 4 perfectly ranked pairs: of the 4! = 24 pairings only the identity and the reversal reach
    # |rho| = 1, so the exact two-sided p is 2/24 (the t approximation would say 0).
    from servecmp.metrics.stats import correlation

    c = correlation([1, 2, 3, 4], [2, 4, 5, 9])
    assert c.spearman_r == 1.0
    assert c.spearman_p == pytest.approx(2 / 24)
    assert c.p_method == "exact permutation"
