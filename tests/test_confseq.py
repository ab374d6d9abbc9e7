"""The betting confidence sequence (servecmp.metrics.sequential) against hand computations and an
independent scalar re-implementation of WSR 2024's formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest

from servecmp.metrics.sequential import confidence_sequence, hedged_log_capital, plugin_bets, to_unit

LOG40 = math.log(40)  # log(2 / alpha) at alpha = 0.05


def test_plugin_bets_by_hand() -> None:
    # lamdot_1 from the prior variance 1/4; after x_1 = 1: muhat_1 = (1/2 + 1)/2 = 3/4,
    # sigma2_1 = (1/4 + (1 - 3/4)^2) / 2 = 0.15625.
    bets = plugin_bets(np.array([1.0, 0.0]), 0.05)
    assert bets[0] == pytest.approx(math.sqrt(2 * LOG40 / (0.25 * 1 * math.log(2))))
    assert bets[1] == pytest.approx(math.sqrt(2 * LOG40 / (0.15625 * 2 * math.log(3))))


def test_iid_capital_by_hand() -> None:
    # m = 1/2: both bets truncated at c/m = c/(1-m) = 1 (lamdot_1 = 6.52, lamdot_2 = 4.64).
    # t=1, x=1: K+ = 1.5, K- = 0.5 -> K = max(0.75, 0.25) = 0.75
    # t=2, x=0: K+ = 1.5 * 0.5 = 0.75, K- = 0.5 * 1.5 = 0.75 -> K = 0.375
    log_k = hedged_log_capital([1.0, 0.0], [0.5])
    assert np.exp(log_k[:, 0]) == pytest.approx([0.75, 0.375])


def test_without_replacement_capital_by_hand() -> None:
    # N = 4, m = 1/4, x = [1, 1]. mu_1 = 1/4; lam+ = min(6.52, 2) = 2, lam- = min(6.52, 2/3).
    # K+_1 = 1 + 2 * 3/4 = 2.5; K-_1 = 1 - 2/3 * 3/4 = 0.5.
    # mu_2 = (4 * 1/4 - 1) / 3 = 0: lam+ = lamdot_2 (no truncation at mu = 0), lam- = min(lamdot_2, 1/2) = 1/2.
    # K+_2 = 2.5 * (1 + lamdot_2); K-_2 = 0.5 * (1 - 1/2) = 0.25.
    lamdot_2 = math.sqrt(2 * LOG40 / (0.15625 * 2 * math.log(3)))
    log_k = hedged_log_capital([1.0, 1.0], [0.25], n_population=4)
    assert np.exp(log_k[:, 0]) == pytest.approx([0.5 * 2.5, 0.5 * 2.5 * (1 + lamdot_2)])
    # mu_3 would be (1 - 2)/2 < 0: m = 1/4 is impossible after a third 1 (capital +inf from then on).
    assert np.isinf(hedged_log_capital([1.0, 1.0, 1.0], [0.25], n_population=4)[2, 0])


def _scalar_log_capital(x: list[float], m: float, alpha: float, n_pop: int | None) -> list[float]:
    """WSR 2024, eq. (26) bets and the hedged capital, one step at a time (the independent check)."""
    kp = km = 1.0
    s = 0.0
    sq = 0.0
    sigma2_prev = 0.25
    out: list[float] = []
    for t, xt in enumerate(x, start=1):
        if out and out[-1] == math.inf:
            out.append(math.inf)
            continue
        lamdot = math.sqrt(2 * math.log(2 / alpha) / (sigma2_prev * t * math.log(1 + t)))
        mu = m if n_pop is None else (n_pop * m - s) / (n_pop - t + 1)
        if not 0 <= mu <= 1:  # no values in [0, 1] left can make the mean m
            out.append(math.inf)
            continue
        lp = lamdot if mu == 0 else min(lamdot, 0.5 / mu)
        lm = lamdot if mu == 1 else min(lamdot, 0.5 / (1 - mu))
        kp *= 1 + lp * (xt - mu)
        km *= 1 - lm * (xt - mu)
        out.append(math.log(max(0.5 * kp, 0.5 * km)))
        s += xt
        muhat = (0.5 + s) / (t + 1)
        sq += (xt - muhat) ** 2
        sigma2_prev = (0.25 + sq) / (t + 1)
    return out


@pytest.mark.parametrize("n_pop", [None, 50])
def test_vectorised_equals_scalar(n_pop: int | None) -> None:
    rng = np.random.default_rng(5)
    x = rng.beta(0.7, 3.0, size=30)
    for m in (0.1, 0.2, 0.35):
        got = hedged_log_capital(x, [m], alpha=0.05, n_population=n_pop)[:, 0]
        assert got == pytest.approx(_scalar_log_capital(list(x), m, 0.05, n_pop), rel=1e-9, abs=1e-12)


def test_interval_on_a_demo_like_flip_sequence() -> None:
    # 60 items with 9 flips (15%): the CS at the threshold 5% is decided (capital >= 20 there).
    x = np.zeros(60)
    x[::7][:9] = 1.0
    seq = confidence_sequence(x, 0.0, 1.0, thresholds=(0.05,))
    assert seq.point == pytest.approx(0.15)
    assert seq.inside == (False,)
    assert seq.low > 0.05
    assert seq.high < 1
    # The exact ends lie within one grid step: the step below low and above high are rejected.
    log_k = np.maximum.accumulate(hedged_log_capital(x, [seq.low - 0.001, seq.high + 0.001]), axis=0)[-1]
    assert (log_k >= math.log(20)).all()
    log_in = np.maximum.accumulate(hedged_log_capital(x, [seq.low, seq.high]), axis=0)[-1]
    assert (log_in < math.log(20)).all()


def test_delta_acc_range_and_threshold_exact() -> None:
    # delta_acc per item in {-1, 0, 1}: mapped to [0, 1]; a threshold comes back exactly.
    d = np.array([0.0] * 30 + [-1.0] * 3)
    seq = confidence_sequence(d, -1.0, 1.0, thresholds=(-0.02,))
    assert seq.point == pytest.approx(-3 / 33)
    assert seq.inside == (True,)
    assert seq.low <= -0.02 <= seq.high
    assert to_unit([-1.0, 0.0, 1.0], -1.0, 1.0) == pytest.approx([0.0, 0.5, 1.0])
    # KL above its cap counts as the cap.
    assert to_unit([0.5, 3.0], 0.0, 1.0) == pytest.approx([0.5, 1.0])


def test_without_replacement_is_exact_at_the_end_and_bounded_before() -> None:
    x = np.array([1.0, 1.0, 0.0, 0.0])
    assert confidence_sequence(x, 0.0, 1.0, n_population=4).low == pytest.approx(0.5)
    assert confidence_sequence(x, 0.0, 1.0, n_population=4).high == pytest.approx(0.5)
    # Two 1s seen out of 4: the mean is at least 2/4 whatever the other two are.
    seq = confidence_sequence(x[:2], 0.0, 1.0, n_population=4)
    assert seq.low == pytest.approx(0.5)
    assert seq.high == pytest.approx(1.0)


def test_kl_cap_and_a_pass_withheld_above_it() -> None:
    from servecmp.gates import parse_gates
    from servecmp.mcq.sequential import anytime_estimates, kl_cap

    assert kl_cap(parse_gates(["kl<=0.02"], "mcq")) == pytest.approx(0.2)
    assert kl_cap(parse_gates(["kl<=0.5", "kl<=0.02"], "mcq")) == 1.0
    assert kl_cap(parse_gates(["flips<=5%"], "mcq")) == 1.0
    gates = parse_gates(["kl<=0.02"], "mcq")
    calm = {"kl": np.full(400, 0.001)}
    est = anytime_estimates(calm, gates)["kl"]
    assert est.high is not None and est.high < 0.02  # decided PASS on calm items
    one_wild = {"kl": np.append(np.full(400, 0.001), 0.5)}  # one item above the 0.2 cap
    est = anytime_estimates(one_wild, gates)["kl"]
    assert est.high is not None and est.high >= 0.2  # no PASS any more
