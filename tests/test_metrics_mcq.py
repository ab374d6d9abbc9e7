"""servecmp.metrics.mcq on a 10-item example whose every figure is worked out by hand below."""

from __future__ import annotations

import math

import numpy as np
import pytest

from servecmp.metrics.kl import exact_kl
from servecmp.metrics.mcq import (
    NO_ANSWER,
    PROB_FLOOR,
    answer_changes,
    change_by_margin,
    changed_answers,
    chosen_options,
    correct,
    flips,
    group_breakdown,
    length_normalised_choices,
    margin_by_correctness,
    option_kl,
    top_margin,
)

# Ten 4-option items. Baseline rows are chosen so that p_top1 - p_top2 (the top margin) never lies
# on a bucket edge except item 9 (margin exactly 1.0, the closed end of the last bucket).
GOLD = np.array([0, 1, 2, 3, 0, 0, 1, 2, 3, 0])
BASE_P = [
    [0.75, 0.10, 0.10, 0.05],  # 0: picks 0 (right), margin .65
    [0.10, 0.55, 0.20, 0.15],  # 1: picks 1 (right), margin .35
    [0.30, 0.10, 0.35, 0.25],  # 2: picks 2 (right), margin .05
    [0.10, 0.20, 0.05, 0.65],  # 3: picks 3 (right), margin .45
    [0.40, 0.45, 0.10, 0.05],  # 4: picks 1 (wrong), margin .05
    [0.20, 0.50, 0.25, 0.05],  # 5: picks 1 (wrong), margin .25
    [0.05, 0.90, 0.05, 0.00],  # 6: picks 1 (right), margin .85; option 3 missing (-inf)
    [0.55, 0.20, 0.15, 0.10],  # 7: picks 0 (wrong), margin .35
    [0.10, 0.05, 0.20, 0.65],  # 8: picks 3 (right), margin .45
    [1.00, 0.00, 0.00, 0.00],  # 9: picks 0 (right), margin 1.0
]
CAND_P = [
    [0.60, 0.20, 0.10, 0.10],  # 0: picks 0 (right)            same answer
    [0.10, 0.50, 0.30, 0.10],  # 1: picks 1 (right)            same answer
    [0.40, 0.10, 0.30, 0.20],  # 2: picks 0 (wrong)  right->wrong, changed
    [0.10, 0.50, 0.10, 0.30],  # 3: picks 1 (wrong)  right->wrong, changed
    [0.50, 0.40, 0.05, 0.05],  # 4: picks 0 (right)  wrong->right, changed
    [0.20, 0.30, 0.40, 0.10],  # 5: picks 2 (wrong)  still wrong,  changed
    [0.10, 0.80, 0.10, 0.00],  # 6: picks 1 (right)            same answer
    [0.60, 0.20, 0.10, 0.10],  # 7: picks 0 (wrong)            same answer
    [0.10, 0.10, 0.50, 0.30],  # 8: picks 2 (wrong)  right->wrong, changed
    [0.90, 0.10, 0.00, 0.00],  # 9: picks 0 (right)            same answer
]
with np.errstate(divide="ignore"):
    BASE = np.log(np.array(BASE_P))
    CAND = np.log(np.array(CAND_P))


def test_choices_and_correctness() -> None:
    assert chosen_options(BASE).tolist() == [0, 1, 2, 3, 1, 1, 1, 0, 3, 0]
    assert chosen_options(CAND).tolist() == [0, 1, 0, 1, 0, 2, 1, 0, 2, 0]
    assert correct(chosen_options(BASE), GOLD).sum() == 7  # items 0,1,2,3,6,8,9
    assert correct(chosen_options(CAND), GOLD).sum() == 5  # items 0,1,4,6,9


def test_ties_go_to_the_lowest_index_and_empty_rows_answer_nothing() -> None:
    lp = np.array([[-1.0, -0.5, -0.5], [-np.inf, -np.inf, -np.inf], [-2.0, -np.inf, -2.0]])
    assert chosen_options(lp).tolist() == [1, NO_ANSWER, 0]
    with pytest.raises(ValueError):
        chosen_options(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError):
        chosen_options(np.array([0.0, -1.0]))


def test_flips_and_mcnemar() -> None:
    b = correct(chosen_options(BASE), GOLD)
    c = correct(chosen_options(CAND), GOLD)
    f = flips(b, c)
    # right->wrong: items 2, 3, 8; wrong->right: item 4.
    assert (f.n, f.flips, f.correct_to_wrong, f.wrong_to_correct) == (10, 4, 3, 1)
    assert f.rate.rate == pytest.approx(0.4)
    # Exact McNemar: 2 * P(X <= 1), X ~ Bin(4, 1/2) = 2 * (C(4,0) + C(4,1)) / 16.
    assert f.mcnemar_p == pytest.approx(2 * (math.comb(4, 0) + math.comb(4, 1)) / 16)
    no_flip = flips([True, False], [True, False])
    assert (no_flip.flips, no_flip.mcnemar_p, no_flip.rate.rate) == (0, 1.0, 0.0)


def test_answer_changes() -> None:
    ch = answer_changes(chosen_options(BASE), chosen_options(CAND))
    # Items 2, 3, 4, 5, 8 changed their answer (5 included though it stays wrong).
    assert (ch.count, ch.n, ch.rate) == (5, 10, 0.5)
    assert ch.low is not None and ch.high is not None and ch.low < 0.5 < ch.high


def test_option_kl_two_options_by_hand() -> None:
    # Unnormalised rows renormalise to p = [.8, .2] and q = [.6, .4]:
    # KL = .8 ln(.8/.6) + .2 ln(.2/.4) = 0.2301456580 - 0.1386294361 = 0.0915162218.
    base = np.log([[0.4, 0.1]])
    cand = np.log([[0.3, 0.2]])
    res = option_kl(base, cand)
    assert res.kl[0] == pytest.approx(0.0915162218, abs=1e-10)
    assert not res.floored[0]


def test_option_kl_matches_exact_kl_on_the_example() -> None:
    kl = option_kl(BASE, CAND).kl
    # Item 9: p = [1, 0, 0, 0], q = [.9, .1, 0, 0] -> KL = ln(1/.9).
    assert kl[9] == pytest.approx(math.log(1 / 0.9))
    # Item 6: both give option 3 zero mass; KL = .05 ln(.05/.1) + .9 ln(.9/.8) + .05 ln(.05/.1).
    assert kl[6] == pytest.approx(0.1 * math.log(0.5) + 0.9 * math.log(0.9 / 0.8))
    finite = [i for i in range(10) if i not in (6, 9)]
    assert np.allclose(kl[finite], exact_kl(BASE[finite], CAND[finite]), atol=1e-14)


def test_option_kl_floor_and_unanswered() -> None:
    # The candidate gives option 1 no logprob while the baseline gives it .5.
    res = option_kl(np.log([[0.5, 0.5]]), np.array([[0.0, -np.inf]]))
    expected = 0.5 * math.log(0.5) + 0.5 * math.log(0.5 / PROB_FLOOR)
    assert res.floored[0]
    assert res.kl[0] == pytest.approx(expected, rel=1e-12)
    nothing = option_kl(np.array([[-np.inf, -np.inf]]), np.array([[-1.0, -2.0]]))
    assert np.isnan(nothing.kl[0]) and not nothing.floored[0]


def test_top_margin() -> None:
    m = top_margin(BASE)
    assert np.allclose(m, [0.65, 0.35, 0.05, 0.45, 0.05, 0.25, 0.85, 0.35, 0.45, 1.0], atol=1e-12)
    assert np.isnan(top_margin(np.array([[-np.inf, -np.inf]]))[0])
    assert top_margin(np.array([[-0.5]]))[0] == 1.0


def test_change_by_margin_buckets() -> None:
    changed = changed_answers(chosen_options(BASE), chosen_options(CAND))
    buckets = change_by_margin(top_margin(BASE), changed)
    # bucket: items -> (n, changed)
    #   [0, .1): 2, 4 -> (2, 2)   [.2, .3): 5 -> (1, 1)   [.3, .4): 1, 7 -> (2, 0)
    #   [.4, .5): 3, 8 -> (2, 2)  [.6, .7): 0 -> (1, 0)   [.8, .9): 6 -> (1, 0)
    #   [.9, 1.0]: 9 -> (1, 0)    (closed on the right)   others empty
    expected = [(2, 2), (0, 0), (1, 1), (2, 0), (2, 2), (0, 0), (1, 0), (0, 0), (1, 0), (1, 0)]
    assert [(b.changes.n, b.changes.count) for b in buckets] == expected
    assert [b.low_edge for b in buckets] == pytest.approx([i / 10 for i in range(10)])
    assert buckets[-1].high_edge == 1.0
    assert buckets[0].changes.rate == 1.0
    assert buckets[1].changes.rate is None
    assert buckets[3].changes.rate == 0.0


def test_change_by_margin_custom_edges_and_errors() -> None:
    margin = np.array([0.0, 0.5, 0.99, 1.0, np.nan])
    changed = np.array([True, False, True, True, True])
    two = change_by_margin(margin, changed, [0.0, 0.5, 1.0])
    # [0, .5): item 0 changed; [.5, 1.0]: items 1, 2, 3, two of them changed; NaN not counted.
    assert [(b.changes.n, b.changes.count) for b in two] == [(1, 1), (3, 2)]
    with pytest.raises(ValueError):
        change_by_margin(margin, changed, [0.5, 0.5])


def test_margin_by_correctness() -> None:
    base_ok = correct(chosen_options(BASE), GOLD)
    res = margin_by_correctness(top_margin(BASE), base_ok, n_boot=1000)
    # Right: items 0,1,2,3,6,8,9 -> (.65+.35+.05+.45+.85+.45+1.0)/7 = 3.8/7.
    # Wrong: items 4,5,7 -> (.05+.25+.35)/3 = .65/3.
    assert res.when_correct.n == 7 and res.when_wrong.n == 3
    assert res.when_correct.point == pytest.approx(3.8 / 7)
    assert res.when_wrong.point == pytest.approx(0.65 / 3)
    assert res.mann_whitney_p is not None and 0 < res.mann_whitney_p < 1
    all_right = margin_by_correctness(top_margin(BASE), np.ones(10, dtype=bool), n_boot=1000)
    assert all_right.when_wrong.n == 0 and all_right.when_wrong.point is None
    assert all_right.mann_whitney_p is None


def test_length_normalised_choice() -> None:
    # Raw logprobs prefer option 0; per character (-4/2 = -2 vs -6/6 = -1) option 1 wins.
    lp = np.array([[-4.0, -6.0], [-1.0, -3.0]])
    assert length_normalised_choices(lp, [[2, 6], [2, 6]]).tolist() == [1, 0]
    assert length_normalised_choices(lp, [2, 6]).tolist() == [1, 0]
    with pytest.raises(ValueError):
        length_normalised_choices(lp, [0, 6])


def test_group_breakdown() -> None:
    b = correct(chosen_options(BASE), GOLD)
    c = correct(chosen_options(CAND), GOLD)
    changed = changed_answers(chosen_options(BASE), chosen_options(CAND))
    kl = option_kl(BASE, CAND).kl
    labels = ["algebra"] * 5 + ["biology"] * 5
    rows = group_breakdown(labels, b, c, changed, kl)
    # algebra (0-4): base right 0,1,2,3 (.8); cand right 0,1,4 (.6); flips 2,3 (c->w), 4 (w->c);
    #   changes 2,3,4. biology (5-9): base right 6,8,9 (.6); cand right 6,9 (.4); flip 8; changes 5,8.
    assert [r.group for r in rows] == ["algebra", "biology"]
    alg, bio = rows
    assert (alg.n, alg.acc_baseline, alg.acc_candidate, alg.flips) == (5, 0.8, 0.6, 3)
    assert (alg.correct_to_wrong, alg.wrong_to_correct) == (2, 1)
    assert alg.delta_acc == pytest.approx(-0.2)
    assert (alg.flip_rate, alg.answer_change_rate) == (0.6, 0.6)
    assert alg.mean_option_kl == pytest.approx(float(np.mean(kl[:5])))
    assert alg.mean_topk_kl is None
    assert (bio.n, bio.acc_baseline, bio.acc_candidate, bio.flips, bio.flip_rate) == (5, 0.6, 0.4, 1, 0.2)
    assert bio.answer_change_rate == 0.4


def test_group_order_ties_and_missing_values() -> None:
    t = np.array([True] * 6)
    labels = ["b", "b", "a", "a", None, "c"]
    kl = np.array([0.1, np.nan, np.nan, np.nan, 0.3, 0.2])
    rows = group_breakdown(labels, t, t, np.zeros(6, dtype=bool), kl, topk_kl_values=np.full(6, 0.5))
    # No flips anywhere: order by size (a, b: 2 items) then name.
    assert [(r.group, r.n) for r in rows] == [("a", 2), ("b", 2), ("(none)", 1), ("c", 1)]
    by_name = {r.group: r for r in rows}
    assert by_name["b"].mean_option_kl == pytest.approx(0.1)
    assert by_name["a"].mean_option_kl is None
    assert by_name["c"].mean_topk_kl == pytest.approx(0.5)
    with pytest.raises(ValueError):
        group_breakdown(["x"], t, t, np.zeros(6, dtype=bool), kl)
