"""Anytime-valid confidence sequences for the mean of bounded per-item quantities.

A fixed-n interval (Wilson, bootstrap) holds at the one sample size chosen in advance; looked at
after every batch and acted on at the first look that excludes a threshold, it misses the truth far
more often than 5% (tests/test_confseq_sim.py measures it). A confidence sequence (CS) holds at
every sample size at once, so a run may stop at any look, chosen by the data, and keep its 95%.

The construction is the hedged betting CS of Waudby-Smith & Ramdas, "Estimating means of bounded
random variables by betting", JRSS-B 86(1), 2024 (Theorem 3 and Section 5.1, the "hedged capital
process" with the predictable plug-in bets of eq. (26), truncated at ``c/m``; Section 6 for the
without-replacement form). For values x_i in [0, 1] and a candidate mean m:

    K+_t(m) = prod_{i<=t} (1 + lam+_i(m) (x_i - mu_i(m)))
    K-_t(m) = prod_{i<=t} (1 - lam-_i(m) (x_i - mu_i(m)))
    K_t(m)  = max(theta K+_t(m), (1 - theta) K-_t(m))            theta = 1/2
    lam+_i(m) = min(lamdot_i, c / mu_i(m)),  lam-_i(m) = min(lamdot_i, c / (1 - mu_i(m)))   c = 1/2
    lamdot_i  = sqrt(2 log(2/alpha) / (sigma2_{i-1} i log(1 + i)))
    sigma2_i  = (1/4 + sum_{j<=i} (x_j - muhat_j)^2) / (i + 1),  muhat_j = (1/2 + sum_{l<=j} x_l) / (j + 1)

    i.i.d. (N None):        mu_i(m) = m
    without replacement:    mu_i(m) = (N m - sum_{j<i} x_j) / (N - i + 1)   (the mean left in the population)

K_t(m) is a nonnegative supermartingale when m is the true mean (under H0 each factor has
conditional mean 1; the max of the two is below their theta-mixture), so by Ville's inequality
P(exists t: K_t(m) >= 1/alpha) <= alpha, and C_t = {m : max_{s<=t} K_s(m) < 1/alpha} (the running
intersection) covers m at every t simultaneously with probability >= 1 - alpha.

Two targets (`n_population`):

- None, the i.i.d. form: the mean of the distribution the items are drawn from: the same target as
  servecmp's fixed-n Wilson and bootstrap intervals, which treat the item set as a sample of the
  task. servecmp's gates use this one, so a sequential verdict and a fixed-n one speak of the same
  quantity (and a run that spends every item still has an interval, not a point).
- N, the without-replacement form: the mean of the N-item set itself, sampled in a uniformly random
  order. Tighter late in a run, and exact once every item is seen ([S_t/N, (S_t + N - t)/N] is
  intersected in, a point at t = N). Provided and tested for finite-population questions.

The CS is found on a grid of candidate means (`GRID_POINTS` steps over [0, 1]) to which the caller
adds the thresholds it will compare with: a threshold's inclusion is then computed exactly, so
`servecmp.gates.gate_status` on (low, high) decides as the exact CS would; low and high themselves
are the outermost grid points inside the CS (within one grid step, 0.1% of the range, of the
exact ends).

Bounded metrics (`BOUNDS`): shares (flips, c2w, changes, top1_disagree) in [0, 1]; delta_acc, a
per-item difference of correctness, in [-1, 1]; per-item option KL clipped at a cap (at most
`KL_CAP`, 1 nat; `servecmp.mcq.sequential.kl_cap` uses 10x the gate's threshold) and Jensen-Shannon
in [0, ln 2]. The KL cap is a modelling choice stated in every report: a lower end (a FAIL of
``kl<=t``) holds for the uncapped mean too, since capping only lowers values; an upper end (a PASS)
bounds the mean of min(KL, cap), which is the mean KL unless some item's KL exceeds the cap (a PASS
is withheld once one such item is seen).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from servecmp.metrics.stats import FloatArray, as_float_array

__all__ = ["BOUNDS", "GRID_POINTS", "KL_CAP", "Sequence95", "confidence_sequence", "hedged_log_capital",
           "plugin_bets", "to_unit"]

#: Grid steps over [0, 1] on which the CS is evaluated (thresholds are added exactly).
GRID_POINTS = 1000
#: Per-item option KL is clipped here (nats) to make it bounded; see the module docstring.
KL_CAP = 1.0
#: (low, high) of each metric the sequential gates can read.
BOUNDS: dict[str, tuple[float, float]] = {
    "flips": (0.0, 1.0),
    "c2w": (0.0, 1.0),
    "changes": (0.0, 1.0),
    "top1_disagree": (0.0, 1.0),
    "delta_acc": (-1.0, 1.0),
    "kl": (0.0, KL_CAP),
    "js": (0.0, math.log(2.0)),
}
#: Hedging weight theta and bet truncation c (WSR 2024's defaults).
THETA = 0.5
TRUNCATION = 0.5


def to_unit(x: npt.ArrayLike, low: float, high: float) -> FloatArray:
    """Map values in [low, high] to [0, 1], clipping outside values to the ends (KL above its cap)."""
    a = as_float_array(x)
    return np.clip((a - low) / (high - low), 0.0, 1.0)


def plugin_bets(x: FloatArray, alpha: float) -> FloatArray:
    """lamdot_t for t = 1..T (last axis), each from x_1..x_{t-1} only (predictable)."""
    t = np.arange(1, x.shape[-1] + 1, dtype=float)
    csum = np.cumsum(x, axis=-1)
    muhat = (0.5 + csum) / (t + 1)  # muhat_t, uses x_1..x_t
    sq = np.cumsum((x - muhat) ** 2, axis=-1)
    sigma2 = (0.25 + sq) / (t + 1)  # sigma2_t
    prev = np.concatenate([np.full(x.shape[:-1] + (1,), 0.25), sigma2[..., :-1]], axis=-1)  # sigma2_{t-1}
    return np.sqrt(2 * math.log(2 / alpha) / (prev * t * np.log1p(t)))


def hedged_log_capital(x: npt.ArrayLike, m: npt.ArrayLike, *, alpha: float = 0.05, n_population: int | None = None
                       ) -> FloatArray:
    """log K_t(m) for x of shape (..., T) in [0, 1] and candidate means m of shape (G,): shape (..., T, G).

    Not the running maximum: take ``np.maximum.accumulate(..., axis=-2)`` for the running
    intersection. +inf where m is impossible given what was seen (without replacement only)."""
    xs = as_float_array(x) if np.ndim(x) == 1 else np.asarray(x, dtype=float)
    ms = np.atleast_1d(np.asarray(m, dtype=float))
    if xs.size and (xs.min() < 0 or xs.max() > 1):
        raise ValueError("observations must lie in [0, 1]")
    n_obs = xs.shape[-1]
    lam = plugin_bets(xs, alpha)[..., :, None]
    xv = xs[..., :, None]
    if n_population is None:
        mu = np.broadcast_to(ms, xs.shape + ms.shape)
    else:
        if n_obs > n_population:
            raise ValueError(f"{n_obs} observations of a population of {n_population}")
        seen_before = np.concatenate([np.zeros(xs.shape[:-1] + (1,)), np.cumsum(xs, axis=-1)[..., :-1]], axis=-1)
        left = n_population - np.arange(n_obs, dtype=float)  # N - t + 1 for t = 1..T
        mu = (n_population * ms - seen_before[..., :, None]) / left[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        impossible = (mu < 0) | (mu > 1)
        muc = np.clip(mu, 0.0, 1.0)
        lam_p = np.minimum(lam, np.where(muc > 0, TRUNCATION / muc, np.inf))
        lam_m = np.minimum(lam, np.where(muc < 1, TRUNCATION / (1 - muc), np.inf))
        log_p = np.cumsum(np.log1p(lam_p * (xv - muc)), axis=-2)
        log_m = np.cumsum(np.log1p(-lam_m * (xv - muc)), axis=-2)
    out = np.maximum(math.log(THETA) + log_p, math.log(1 - THETA) + log_m)
    if n_population is not None:
        # Once m is impossible it stays excluded (mu_t(m) outside [0, 1] at any t rules m out).
        out = np.where(np.logical_or.accumulate(impossible, axis=-2), np.inf, out)
    return out


@dataclass(frozen=True)
class Sequence95:
    """The CS after the last observation, in the metric's own unit."""

    point: float
    low: float
    high: float
    n: int
    #: Whether each threshold given is inside the CS (in the order given).
    inside: tuple[bool, ...]


def confidence_sequence(values: npt.ArrayLike, low: float, high: float, *, alpha: float = 0.05,
                        n_population: int | None = None, thresholds: tuple[float, ...] = (),
                        grid_points: int = GRID_POINTS) -> Sequence95:
    """The anytime-valid (1 - alpha) CS for the mean of ``values`` (bounded in [low, high], in the
    order they were observed), running intersection over every prefix, at the last observation.

    ``point`` is the plain mean of the values as given (not clipped); the CS is for the clipped
    values (only KL is ever clipped). With ``n_population`` the without-replacement form, intersected
    with what the unseen values can still do."""
    raw = as_float_array(values)
    n = int(raw.size)
    if n == 0:
        raise ValueError("no observations")
    x = to_unit(raw, low, high)
    unit_thr = [min(max((t - low) / (high - low), 0.0), 1.0) for t in thresholds]
    grid = np.unique(np.concatenate([np.linspace(0.0, 1.0, grid_points + 1), unit_thr]))
    log_k = hedged_log_capital(x, grid, alpha=alpha, n_population=n_population)
    accepted = np.maximum.accumulate(log_k, axis=0)[-1] < math.log(1 / alpha)
    if n_population is not None:
        # What the unseen N - n values in [0, 1] can make of the population mean: a hard bound.
        s = float(x.sum())
        accepted &= (grid >= s / n_population - 1e-12) & (grid <= (s + n_population - n) / n_population + 1e-12)
        if n == n_population:
            accepted = np.isclose(grid, s / n_population)
            if not accepted.any():
                grid = np.append(grid, s / n_population)
                accepted = np.append(accepted, True)
    if not accepted.any():
        # The grid stepped over a CS narrower than one step: keep the least-rejected point.
        accepted = np.zeros_like(accepted)
        accepted[int(np.argmin(log_k[-1]))] = True
    idx = np.flatnonzero(accepted)
    lo_u, hi_u = float(grid[idx[0]]), float(grid[idx[-1]])
    inside = tuple(bool(lo_u <= t <= hi_u) for t in unit_thr)
    # Back to the metric's unit; a threshold's own grid point maps back to the threshold exactly, so
    # that float rounding in the mapping can never move an end across it.
    exact = {u: t for u, t in zip(unit_thr, thresholds, strict=True)}
    scale = high - low
    return Sequence95(point=float(raw.mean()), low=exact.get(lo_u, low + lo_u * scale),
                      high=exact.get(hi_u, low + hi_u * scale), n=n, inside=inside)
