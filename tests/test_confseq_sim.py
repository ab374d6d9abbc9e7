"""Coverage when a run stops at its first decided look (issue 20): the anytime-valid confidence
sequence keeps >= 95%, fixed-n Wilson and bootstrap intervals used the same way do not.

The stopping rule is the harshest one for coverage: the gate's threshold is the true mean, so a
look "decides" exactly when the interval excludes the truth, and the run stops there miscovering.
Coverage is then the share of replications whose interval never excluded the truth at any look.
The CS decides a threshold by the capital at that very value (`confidence_sequence` puts every
threshold on its grid), so the simulation evaluates `hedged_log_capital` at the truth only;
`test_grid_decision_matches_capital` checks that the interval function decides the same way.
"""

from __future__ import annotations

import math

import numpy as np

from servecmp.metrics.sequential import confidence_sequence, hedged_log_capital
from servecmp.metrics.stats import wilson_ci

ALPHA = 0.05
BATCH = 10


def _wilson_excludes(k: np.ndarray, n: np.ndarray, p: float) -> np.ndarray:
    """Whether the 95% Wilson interval at k successes of n excludes p (vectorised; checked
    against servecmp.metrics.stats.wilson_ci below)."""
    z = 1.959963984540054
    phat = k / n
    denom = 1 + z * z / n
    center = (phat + z * z / (2 * n)) / denom
    half = z * np.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / denom
    return (center - half > p) | (center + half < p)


def test_vectorised_wilson_matches_stats() -> None:
    for k, n in ((0, 10), (3, 40), (17, 120)):
        ci = wilson_ci(k, n)
        assert ci.low is not None and ci.high is not None
        assert not _wilson_excludes(np.array([k]), np.array([n]), ci.low + 1e-9)[0]
        assert _wilson_excludes(np.array([k]), np.array([n]), ci.high + 1e-6)[0]


def test_iid_flips_cs_covers_and_wilson_does_not() -> None:
    p, reps, t_max = 0.1, 3000, 400
    rng = np.random.default_rng(20)
    x = (rng.random((reps, t_max)) < p).astype(float)
    looks = np.arange(BATCH, t_max + 1, BATCH)
    log_k = hedged_log_capital(x, [p], alpha=ALPHA)[..., 0]
    cs_stopped = (np.maximum.accumulate(log_k, axis=1)[:, looks - 1] >= math.log(1 / ALPHA)).any(axis=1)
    k = np.cumsum(x, axis=1)[:, looks - 1]
    wilson_stopped = _wilson_excludes(k, np.broadcast_to(looks, k.shape).astype(float), p).any(axis=1)
    cs_cover, wilson_cover = 1 - cs_stopped.mean(), 1 - wilson_stopped.mean()
    print(f"i.i.d. flips: CS coverage {cs_cover:.4f}, Wilson {wilson_cover:.4f}")
    assert cs_cover >= 0.95
    assert wilson_cover < 0.90


def test_without_replacement_cs_covers_and_wilson_does_not() -> None:
    # A finite item set of 400 with exactly 40 flips, asked in uniformly random orders.
    n_pop, reps = 400, 3000
    pop = np.zeros(n_pop)
    pop[:40] = 1.0
    truth = pop.mean()
    rng = np.random.default_rng(21)
    x = np.stack([rng.permutation(pop) for _ in range(reps)])[:, : n_pop - BATCH]
    looks = np.arange(BATCH, n_pop - BATCH + 1, BATCH)
    log_k = hedged_log_capital(x, [truth], alpha=ALPHA, n_population=n_pop)[..., 0]
    cs_stopped = (np.maximum.accumulate(log_k, axis=1)[:, looks - 1] >= math.log(1 / ALPHA)).any(axis=1)
    k = np.cumsum(x, axis=1)[:, looks - 1]
    wilson_stopped = _wilson_excludes(k, np.broadcast_to(looks, k.shape).astype(float), truth).any(axis=1)
    cs_cover, wilson_cover = 1 - cs_stopped.mean(), 1 - wilson_stopped.mean()
    print(f"without replacement: CS coverage {cs_cover:.4f}, Wilson {wilson_cover:.4f}")
    assert cs_cover >= 0.95
    assert wilson_cover < 0.90


def test_continuous_cs_covers_and_bootstrap_does_not() -> None:
    # Per-item KL-like values: Beta(0.5, 9.5) has mean 0.05 exactly.
    reps, t_max, n_boot = 600, 200, 300
    truth = 0.5 / (0.5 + 9.5)
    rng = np.random.default_rng(22)
    x = rng.beta(0.5, 9.5, size=(reps, t_max))
    looks = np.arange(20, t_max + 1, 20)
    log_k = hedged_log_capital(x, [truth], alpha=ALPHA)[..., 0]
    cs_stopped = (np.maximum.accumulate(log_k, axis=1)[:, looks - 1] >= math.log(1 / ALPHA)).any(axis=1)
    boot_stopped = np.zeros(reps, dtype=bool)
    for n in looks:
        idx = rng.integers(0, n, size=(n_boot, n))
        means = x[:, idx].mean(axis=2)  # (reps, n_boot)
        low, high = np.percentile(means, [2.5, 97.5], axis=1)
        boot_stopped |= (low > truth) | (high < truth)
    cs_cover, boot_cover = 1 - cs_stopped.mean(), 1 - boot_stopped.mean()
    print(f"continuous: CS coverage {cs_cover:.4f}, bootstrap {boot_cover:.4f}")
    assert cs_cover >= 0.95
    assert boot_cover < 0.90


def test_grid_decision_matches_capital() -> None:
    # The interval function excludes a threshold exactly when the running capital at it reached 1/alpha.
    rng = np.random.default_rng(23)
    for _ in range(40):
        x = (rng.random(60) < 0.15).astype(float)
        seq = confidence_sequence(x, 0.0, 1.0, thresholds=(0.1,))
        rejected = bool(np.max(hedged_log_capital(x, [0.1])[:, 0]) >= math.log(1 / ALPHA))
        assert seq.inside[0] == (not rejected)
