"""servecmp.metrics.kl: the top-k KL lower bound against exact full-vocabulary KL."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import log_softmax

from servecmp.metrics.kl import RESIDUAL_FLOOR, exact_kl, merge_topk, topk_kl, topk_kl_item

VOCAB = 200


def _topk(row: np.ndarray, k: int) -> dict[str, float]:
    idx = np.argsort(-row, kind="stable")[:k]
    return {f"t{i}": float(row[i]) for i in idx}


def _random_pairs(seed: int, rows: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Baseline logprobs and a perturbed candidate's, over the full vocabulary."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(rows, VOCAB)) * scale
    cand = base + rng.normal(size=(rows, VOCAB)) * (0.3 * scale)
    return log_softmax(base, axis=1), log_softmax(cand, axis=1)


def _conditional_gap(p_row: np.ndarray, q_row: np.ndarray, shared: set[str]) -> tuple[float, float]:
    """p_R and p_R * KL(P(.|R) || Q(.|R)) over the tokens outside ``shared``, from the full rows."""
    rest = np.array([f"t{i}" not in shared for i in range(VOCAB)])
    p, q = np.exp(p_row[rest]), np.exp(q_row[rest])
    p_r, q_r = p.sum(), q.sum()
    cond = float(np.sum(p / p_r * np.log((p / p_r) / (q / q_r))))
    return float(p_r), float(p_r * cond)


@pytest.mark.parametrize(("scale", "k"), [(1.0, 5), (1.0, 20), (3.0, 20), (8.0, 10)])
def test_topk_estimate_is_a_lower_bound_with_the_chain_rule_gap(scale: float, k: int) -> None:
    # scale 8 makes peaked distributions (top token near 1), where the rest mass is tiny.
    p_full, q_full = _random_pairs(seed=int(scale * 100) + k, rows=300, scale=scale)
    exact = exact_kl(p_full, q_full)
    base_topk = [_topk(r, k) for r in p_full]
    cand_topk = [_topk(r, k) for r in q_full]
    est = topk_kl(base_topk, cand_topk)
    assert est.available.all()
    assert np.all(est.kl_hat <= exact + 1e-12)
    for i in range(300):
        shared = set(base_topk[i]) & set(cand_topk[i])
        p_r, gap = _conditional_gap(p_full[i], q_full[i], shared)
        assert est.n_shared[i] == len(shared)
        assert est.p_rest[i] == pytest.approx(p_r, rel=1e-9, abs=1e-15)
        assert exact[i] - est.kl_hat[i] == pytest.approx(gap, rel=1e-7, abs=1e-12)
    assert not est.floored.any()


def test_full_vocabulary_topk_is_exact() -> None:
    p_full, q_full = _random_pairs(seed=11, rows=200, scale=2.0)
    est = topk_kl([_topk(r, VOCAB) for r in p_full], [_topk(r, VOCAB) for r in q_full])
    assert np.allclose(est.kl_hat, exact_kl(p_full, q_full), rtol=0, atol=1e-12)
    assert np.all(est.n_shared == VOCAB)
    assert np.all(est.p_rest < 1e-12)


def test_hand_worked_example() -> None:
    # p: a .5, b .3, c .1 (+ .1 elsewhere); q: a .4, b .5, d .05 (+ .05 elsewhere).
    # S = {a, b}; p_R = 1 - .8 = .2; q_R = 1 - .9 = .1.
    # KL_hat = .5 ln(.5/.4) + .3 ln(.3/.5) + .2 ln(.2/.1)
    #        = .5 * 0.2231435513 + .3 * (-0.5108256238) + .2 * 0.6931471806
    #        = 0.1115717757 - 0.1532476871 + 0.1386294361 = 0.0969535246
    p = {"a": math.log(0.5), "b": math.log(0.3), "c": math.log(0.1)}
    q = {"a": math.log(0.4), "b": math.log(0.5), "d": math.log(0.05)}
    r = topk_kl_item(p, q)
    assert r.n_shared == 2
    assert r.p_rest == pytest.approx(0.2, abs=1e-15)
    assert r.q_rest == pytest.approx(0.1, abs=1e-15)
    assert r.kl_hat == pytest.approx(0.0969535246, abs=1e-10)
    assert not r.floored


def test_no_shared_token_gives_zero_and_full_rest_mass() -> None:
    r = topk_kl_item({"a": -0.1}, {"b": -0.1})
    assert (r.kl_hat, r.p_rest, r.q_rest, r.n_shared) == (0.0, 1.0, 1.0, 0)


def test_zero_candidate_rest_is_floored() -> None:
    # The candidate puts all its mass on "a", the baseline leaves .5 outside S = {a}:
    # KL_hat = .5 ln(.5 / 1) for "a" plus .5 ln(.5 / floor) for the rest bucket (q_R = 0).
    p = {"a": math.log(0.5), "z": math.log(0.5)}
    q = {"a": 0.0}
    r = topk_kl_item(p, q)
    expected = 0.5 * math.log(0.5 / 1.0) + 0.5 * math.log(0.5 / RESIDUAL_FLOOR)
    assert r.floored
    assert r.q_rest == 0.0
    assert r.kl_hat == pytest.approx(expected, rel=1e-12)


def test_missing_items_are_nan_and_lengths_checked() -> None:
    est = topk_kl([{"a": -0.1}, None, {}], [{"a": -0.2}, {"a": -0.1}, {"a": -0.1}])
    assert est.available.tolist() == [True, False, False]
    assert np.isnan(est.kl_hat[1]) and np.isnan(est.p_rest[2])
    assert est.n_shared.tolist() == [1, -1, -1]
    with pytest.raises(ValueError):
        topk_kl([{"a": -0.1}], [])
    with pytest.raises(ValueError):
        topk_kl_item({"a": float("nan")}, {"a": -1.0})


def test_merge_topk_adds_duplicate_tokens() -> None:
    merged = merge_topk([("x", math.log(0.2)), ("y", math.log(0.1)), ("x", math.log(0.3))])
    assert merged.keys() == {"x", "y"}
    assert merged["x"] == pytest.approx(math.log(0.5))
    assert merged["y"] == pytest.approx(math.log(0.1))


def test_exact_kl_hand_values() -> None:
    # KL([.8, .2] || [.6, .4]) = .8 ln(4/3) + .2 ln(1/2) = 0.2301456580 - 0.1386294361 = 0.0915162218
    kl = exact_kl(np.log([0.8, 0.2]), np.log([0.6, 0.4]))
    assert kl.shape == (1,)
    assert kl[0] == pytest.approx(0.0915162218, abs=1e-10)
    # Zero baseline probability contributes nothing; zero candidate probability makes KL infinite.
    assert exact_kl([0.0, -np.inf], [np.log(0.5), np.log(0.5)])[0] == pytest.approx(math.log(2))
    assert exact_kl([np.log(0.5), np.log(0.5)], [0.0, -np.inf])[0] == np.inf
