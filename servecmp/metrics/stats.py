"""Generic statistics over plain numpy arrays: bootstrap intervals, proportions, paired tests.

Every function here is pure (arrays and numbers in, frozen dataclasses out) and delegates the
statistics to scipy.stats; what this module adds is consistent handling of the edge cases a
comparison report meets in practice:

- empty input gives a result whose numbers are ``None`` (and ``n == 0``) rather than an exception,
  because a subgroup (e.g. "items the baseline got wrong") is legitimately empty when a model is
  perfect on a subject;
- constant input (including a single observation) gives a bootstrap interval collapsed onto the
  point estimate, silently: every resample of a constant sample has the same mean;
- undefined tests (no discordant pairs, all differences zero, constant input to a correlation)
  give ``None`` p-values or, for McNemar, the conventional p = 1.0, and never a NaN or a warning.

Bootstrap intervals are percentile intervals from ``scipy.stats.bootstrap`` with a seeded
``numpy.random.Generator``, so the same inputs and seed always give the same interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import stats

#: What `servecmp.metrics` re-exports from this module (its public API).
__all__ = [
    "Correlation", "Distribution", "Estimate", "PairedMeans", "Proportion", "WilcoxonResult", "bootstrap_mean_ci",
    "correlation", "describe", "joint_bootstrap_means", "mann_whitney_p", "mcnemar_exact", "paired_bootstrap_diff_ci",
    "paired_bootstrap_means", "wilcoxon_paired", "wilson_ci",
]

FloatArray = npt.NDArray[np.float64]

#: Default number of bootstrap resamples.
DEFAULT_N_BOOT = 2000
#: Default confidence level of every interval.
DEFAULT_CONFIDENCE = 0.95
# Resamples are evaluated in batches of about this many gathered elements (batch * n): large enough
# to amortise Python overhead, small enough to stay in cache-friendly memory (~12 MB of float64).
_BATCH_ELEMENTS = 1_500_000


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its confidence interval, over ``n`` observations.

    ``point``, ``low`` and ``high`` are ``None`` when ``n == 0``.
    """

    point: float | None
    low: float | None
    high: float | None
    n: int


@dataclass(frozen=True)
class PairedMeans:
    """Means of two paired samples ``a`` and ``b`` and of their difference ``b - a``, all from the
    same bootstrap resamples."""

    a: Estimate
    b: Estimate
    diff: Estimate


@dataclass(frozen=True)
class Proportion:
    """``count`` successes out of ``n`` with a Wilson score interval; rate/low/high are ``None`` when
    ``n == 0``."""

    count: int
    n: int
    rate: float | None
    low: float | None
    high: float | None


@dataclass(frozen=True)
class Distribution:
    """Summary of a sample: mean (with bootstrap CI), median, 90th/99th percentiles and maximum.

    Percentiles use numpy's default linear interpolation. All numbers are ``None`` when ``n == 0``.
    """

    n: int
    mean: float | None
    median: float | None
    p90: float | None
    p99: float | None
    max: float | None
    mean_ci: Estimate


@dataclass(frozen=True)
class WilcoxonResult:
    """Wilcoxon signed-rank test of paired samples.

    ``n`` counts the pairs, ``n_nonzero`` the pairs whose difference is not zero (the only ones the
    test ranks, see `wilcoxon_paired`). ``statistic``/``pvalue`` are ``None`` when ``n_nonzero == 0``.
    """

    statistic: float | None
    pvalue: float | None
    n: int
    n_nonzero: int
    median_diff: float | None


@dataclass(frozen=True)
class Correlation:
    """Spearman and Pearson correlation with two-sided p-values; all ``None`` when undefined
    (fewer than 3 pairs, or either variable constant)."""

    n: int
    spearman_r: float | None
    spearman_p: float | None
    pearson_r: float | None
    pearson_p: float | None
    #: How the p-values were computed: "exact permutation", "permutation (N resamples)" or "asymptotic".
    p_method: str = "asymptotic"


#: Up to this many pairs the p-values come from all n! pairings (8! = 40,320): correlations across
#: a handful of candidates are where the large-sample approximations are worst.
EXACT_PERMUTATION_MAX_N = 8
#: Up to this many pairs, a seeded Monte Carlo permutation test; beyond it the t approximation is fine.
PERMUTATION_MAX_N = 50
PERMUTATION_RESAMPLES = 20_000


def as_float_array(x: npt.ArrayLike, name: str = "x") -> FloatArray:
    """``x`` as a 1-D float64 array; ValueError if it is not 1-D or holds NaN or infinity."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} holds NaN or infinite values")
    return arr


def _paired(a: npt.ArrayLike, b: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    xa, xb = as_float_array(a, "a"), as_float_array(b, "b")
    if xa.shape != xb.shape:
        raise ValueError(f"paired samples differ in length: {xa.size} vs {xb.size}")
    return xa, xb


def joint_bootstrap_means(columns: Sequence[npt.ArrayLike], *,
                          differences: Sequence[tuple[int, int]] = (),
                          confidence: float = DEFAULT_CONFIDENCE, n_boot: int = DEFAULT_N_BOOT,
                          seed: int = 0) -> list[Estimate]:
    """Mean and percentile bootstrap interval of each of several equally long per-item columns,
    all from one shared set of resamples of the items (paired resampling).

    ``differences`` lists ``(i, j)`` pairs; for each, an estimate of ``mean(columns[j]) -
    mean(columns[i])`` follows the columns' estimates in the returned list.

    ``scipy.stats.bootstrap`` resamples the item indices once per resample (``paired=True``) and
    every column is read at those indices, so the random draws, the costliest part, are shared. A
    column's interval equals that of `bootstrap_mean_ci` on it alone with the same seed, and a
    difference's that of `paired_bootstrap_diff_ci` (up to rounding). Empty columns give ``None``
    values; a constant column or difference (or n == 1) gives a collapsed interval.
    """
    cols = [as_float_array(c, f"columns[{i}]") for i, c in enumerate(columns)]
    diffs = [(int(i), int(j)) for i, j in differences]
    if not cols:
        return []
    n = int(cols[0].size)
    if any(c.size != n for c in cols):
        raise ValueError("columns differ in length")
    if any(not (0 <= i < len(cols) and 0 <= j < len(cols)) for i, j in diffs):
        raise ValueError("differences refer to a column that does not exist")
    if n == 0:
        return [Estimate(None, None, None, 0) for _ in range(len(cols) + len(diffs))]
    constant = [bool(np.ptp(c) == 0) for c in cols] + [bool(np.ptp(cols[j] - cols[i]) == 0) for i, j in diffs]
    # A constant column's mean is its value; np.mean could be off by an ulp (50 x 0.7 -> 0.7000000000000002).
    col_means = [float(c[0]) if constant[k] else float(np.mean(c)) for k, c in enumerate(cols)]
    points = col_means + [
        float(cols[j][0] - cols[i][0]) if constant[len(cols) + k] else col_means[j] - col_means[i]
        for k, (i, j) in enumerate(diffs)
    ]
    if all(constant):
        return [_estimate(p, p, p, n, True) for p in points]

    def means(*samples: FloatArray, axis: int = -1) -> FloatArray:
        m = [np.mean(x, axis=axis) for x in samples]
        return np.stack(m + [m[j] - m[i] for i, j in diffs])

    res = stats.bootstrap(
        tuple(cols),
        means,
        n_resamples=n_boot,
        batch=max(1, min(n_boot, _BATCH_ELEMENTS // n)),
        vectorized=True,
        paired=True,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    low = np.atleast_1d(np.asarray(res.confidence_interval.low, dtype=np.float64))
    high = np.atleast_1d(np.asarray(res.confidence_interval.high, dtype=np.float64))
    return [_estimate(points[i], low[i], high[i], n, constant[i]) for i in range(len(points))]


def _estimate(point: float, low: float, high: float, n: int, constant: bool) -> Estimate:
    if constant:
        # Every resample has the same mean; don't report a rounding-level "interval" around it.
        return Estimate(point=point, low=point, high=point, n=n)
    return Estimate(point=point, low=float(low), high=float(high), n=n)


def bootstrap_mean_ci(x: npt.ArrayLike, *, confidence: float = DEFAULT_CONFIDENCE,
                      n_boot: int = DEFAULT_N_BOOT, seed: int = 0) -> Estimate:
    """Mean of ``x`` with a percentile bootstrap confidence interval (``scipy.stats.bootstrap``).

    Empty ``x`` gives an `Estimate` of ``None`` values with ``n == 0``; constant ``x`` (or a single
    value) gives an interval collapsed onto the mean. ValueError on NaN/infinite values.
    """
    return joint_bootstrap_means([as_float_array(x)], confidence=confidence, n_boot=n_boot, seed=seed)[0]


def paired_bootstrap_diff_ci(a: npt.ArrayLike, b: npt.ArrayLike, *, confidence: float = DEFAULT_CONFIDENCE,
                             n_boot: int = DEFAULT_N_BOOT, seed: int = 0) -> Estimate:
    """Mean paired difference ``mean(b) - mean(a)`` with a paired percentile bootstrap interval.

    Pass ``a=baseline, b=candidate`` to get "candidate − baseline". Items are resampled as pairs
    (the same indices for both samples), which keeps the correlation between the two endpoints and
    so gives a much narrower interval than two independent intervals would suggest. Empty input
    gives ``None`` values; constant differences give a collapsed interval.
    """
    return paired_bootstrap_means(a, b, confidence=confidence, n_boot=n_boot, seed=seed).diff


def paired_bootstrap_means(a: npt.ArrayLike, b: npt.ArrayLike, *, confidence: float = DEFAULT_CONFIDENCE,
                           n_boot: int = DEFAULT_N_BOOT, seed: int = 0) -> PairedMeans:
    """Means of ``a`` and ``b`` and of ``b - a``, each with a percentile interval from one shared set
    of paired bootstrap resamples; with the same seed, the intervals of ``a`` and ``b`` equal those
    `bootstrap_mean_ci` gives each on its own."""
    xa, xb = _paired(a, b)
    ea, eb, ed = joint_bootstrap_means([xa, xb], differences=[(0, 1)], confidence=confidence,
                                       n_boot=n_boot, seed=seed)
    return PairedMeans(a=ea, b=eb, diff=ed)


def wilson_ci(k: int, n: int, *, confidence: float = DEFAULT_CONFIDENCE) -> Proportion:
    """Proportion ``k/n`` with its Wilson score interval (no continuity correction).

    Wilson rather than the normal ("Wald") interval because flip rates are often near 0, where Wald
    collapses to [0, 0]. ``n == 0`` gives ``None`` rate and bounds. ValueError unless 0 <= k <= n.
    """
    k, n = int(k), int(n)
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return Proportion(count=0, n=0, rate=None, low=None, high=None)
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return Proportion(count=k, n=n, rate=k / n, low=float(ci.low), high=float(ci.high))


def mcnemar_exact(b: int, c: int) -> float:
    """Exact McNemar p-value: two-sided binomial test of ``b`` successes in ``b + c`` trials at 1/2.

    ``b`` and ``c`` are the discordant counts (e.g. correct→wrong and wrong→correct); the concordant
    pairs carry no information about the asymmetry. Returns 1.0 when there are no discordant pairs.
    """
    b, c = int(b), int(c)
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be non-negative, got {b} and {c}")
    if b + c == 0:
        return 1.0
    return float(stats.binomtest(b, b + c, 0.5, alternative="two-sided").pvalue)


def wilcoxon_paired(a: npt.ArrayLike, b: npt.ArrayLike) -> WilcoxonResult:
    """Wilcoxon signed-rank test of the paired differences ``b - a`` (two-sided).

    Zero differences are discarded before ranking (scipy's ``zero_method="wilcox"``, Wilcoxon's
    original treatment), so ties between the endpoints neither help nor hurt either side;
    ``n_nonzero`` reports how many pairs the test actually used. When every difference is zero the
    test is undefined and ``statistic``/``pvalue`` are ``None``. scipy picks the exact null
    distribution for small samples without ties and the normal approximation otherwise.
    """
    xa, xb = _paired(a, b)
    d = xb - xa
    n_nonzero = int(np.count_nonzero(d))
    median = float(np.median(d)) if d.size else None
    if n_nonzero == 0:
        return WilcoxonResult(statistic=None, pvalue=None, n=int(d.size), n_nonzero=0, median_diff=median)
    res = stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided")
    return WilcoxonResult(statistic=float(res.statistic), pvalue=float(res.pvalue), n=int(d.size),
                          n_nonzero=n_nonzero, median_diff=median)


def mann_whitney_p(x: npt.ArrayLike, y: npt.ArrayLike) -> float | None:
    """Two-sided Mann-Whitney U p-value for "x and y come from the same distribution"; ``None`` when
    either sample is empty. All-tied samples give p = 1.0."""
    xa, ya = as_float_array(x, "x"), as_float_array(y, "y")
    if xa.size == 0 or ya.size == 0:
        return None
    pooled = np.concatenate([xa, ya])
    if np.ptp(pooled) == 0:
        return 1.0
    return float(stats.mannwhitneyu(xa, ya, alternative="two-sided").pvalue)


def correlation(x: npt.ArrayLike, y: npt.ArrayLike) -> Correlation:
    """Spearman and Pearson correlation of paired samples, with two-sided p-values.

    Undefined cases (fewer than 3 pairs, or either sample constant) give ``None`` everywhere but
    ``n`` instead of scipy's NaN and ConstantInputWarning.
    """
    xa, ya = _paired(x, y)
    n = int(xa.size)
    if n < 3 or np.ptp(xa) == 0 or np.ptp(ya) == 0:
        return Correlation(n=n, spearman_r=None, spearman_p=None, pearson_r=None, pearson_p=None)
    if n <= EXACT_PERMUTATION_MAX_N:
        method: stats.PermutationMethod | None = stats.PermutationMethod(n_resamples=math.factorial(n))
        p_method = "exact permutation"
    elif n <= PERMUTATION_MAX_N:
        method = stats.PermutationMethod(n_resamples=PERMUTATION_RESAMPLES, rng=np.random.default_rng(0))
        p_method = f"permutation ({PERMUTATION_RESAMPLES} resamples)"
    else:
        method, p_method = None, "asymptotic"
    # Spearman is Pearson on ranks, so one permutation machinery serves both.
    sp = stats.pearsonr(stats.rankdata(xa), stats.rankdata(ya), method=method)
    pe = stats.pearsonr(xa, ya, method=method)
    return Correlation(n=n, spearman_r=_finite(sp.statistic), spearman_p=_finite(sp.pvalue),
                       pearson_r=_finite(pe.statistic), pearson_p=_finite(pe.pvalue), p_method=p_method)


def describe(x: npt.ArrayLike, *, confidence: float = DEFAULT_CONFIDENCE, n_boot: int = DEFAULT_N_BOOT,
             seed: int = 0) -> Distribution:
    """`Distribution` of ``x``: mean with bootstrap CI, median, p90, p99, max."""
    arr = as_float_array(x)
    ci = bootstrap_mean_ci(arr, confidence=confidence, n_boot=n_boot, seed=seed)
    return distribution_with_ci(arr, ci)


def distribution_with_ci(x: npt.ArrayLike, mean_ci: Estimate) -> Distribution:
    """`Distribution` of ``x`` around an already computed mean interval (e.g. from
    `joint_bootstrap_means`)."""
    arr = as_float_array(x)
    if arr.size == 0:
        return Distribution(n=0, mean=None, median=None, p90=None, p99=None, max=None, mean_ci=mean_ci)
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    return Distribution(n=int(arr.size), mean=float(np.mean(arr)), median=float(p50), p90=float(p90),
                        p99=float(p99), max=float(np.max(arr)), mean_ci=mean_ci)


def _finite(v: float) -> float | None:
    f = float(v)
    return f if math.isfinite(f) else None
