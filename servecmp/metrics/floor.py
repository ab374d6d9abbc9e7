"""The noise floor: how much of a candidate's difference from the baseline an endpoint shows against
itself, and the candidate's excess over it, as pure functions over per-item arrays.

A self-comparison (baseline vs a replica of it, or an endpoint vs the same endpoint asked again)
gives per item the same three quantities a candidate comparison does (`item_differences`): did
correctness flip, did the chosen option change, and the option KL. For a candidate, the floor of
item ``i`` combines every self-comparison measured on it: it flipped when any of them flipped
(``numpy.logical_or``), and its KL is the largest of theirs (``numpy.fmax``; an endpoint's own
noise is the most the candidate's difference can owe to it). `excess_over_floor` then compares the
candidate with its floor on the same items:

- flips: ``flips_excess`` = mean(candidate flip − floor flip), a paired percentile bootstrap
  interval (items resampled), and the exact McNemar test on the discordant items (candidate
  flipped and the floor did not, vs the floor flipped and the candidate did not);
- KL: ``kl_excess`` = mean(candidate KL − floor KL) with a paired bootstrap interval, and the
  Wilcoxon signed-rank test on the per-item differences (items where either KL is undefined are
  left out).

The candidate's flips are "within the floor" when the ``flips_excess`` interval contains 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from servecmp.metrics import mcq
from servecmp.metrics.stats import (
    DEFAULT_CONFIDENCE,
    DEFAULT_N_BOOT,
    Estimate,
    FloatArray,
    joint_bootstrap_means,
    mcnemar_exact,
    wilcoxon_paired,
)


@dataclass(frozen=True)
class ItemDifferences:
    """Per item, between two answers to it: correctness flipped, chosen option changed, option KL
    (NaN where either side answered nothing)."""

    flipped: mcq.BoolArray
    changed: mcq.BoolArray
    kl: FloatArray


def item_differences(a_lp: npt.ArrayLike, b_lp: npt.ArrayLike, gold: npt.ArrayLike) -> ItemDifferences:
    """`ItemDifferences` of ``(n, k)`` option logprobs ``a_lp`` (the reference) and ``b_lp``."""
    a, b = mcq.as_logprob_matrix(a_lp, "a_lp"), mcq.as_logprob_matrix(b_lp, "b_lp")
    ca, cb = mcq.chosen_options(a), mcq.chosen_options(b)
    g = np.asarray(gold)
    return ItemDifferences(flipped=mcq.correct(ca, g) != mcq.correct(cb, g), changed=ca != cb,
                           kl=mcq.option_kl(a, b).kl)


def combine_floors(floors: list[ItemDifferences]) -> ItemDifferences:
    """One floor from several self-comparisons of the same items: flipped/changed if any did, the
    largest KL (NaN only where every one is NaN)."""
    if not floors:
        raise ValueError("no self-comparison to combine")
    flipped, changed, kl = floors[0].flipped.copy(), floors[0].changed.copy(), floors[0].kl.copy()
    for f in floors[1:]:
        flipped |= f.flipped
        changed |= f.changed
        kl = np.fmax(kl, f.kl)
    return ItemDifferences(flipped=flipped, changed=changed, kl=kl)


@dataclass(frozen=True)
class FloorExcess:
    """A candidate against its noise floor on the same items (see the module docstring)."""

    n: int
    candidate_flip_rate: float | None
    floor_flip_rate: float | None
    #: mean(candidate flip − floor flip), fraction of items.
    flips_excess: Estimate
    #: Discordant items: the candidate flipped and the floor did not / the other way round.
    candidate_only_flips: int
    floor_only_flips: int
    mcnemar_p: float | None
    #: Items with both KLs defined.
    kl_n: int
    candidate_kl_mean: float | None
    floor_kl_mean: float | None
    #: mean(candidate KL − floor KL), nats.
    kl_excess: Estimate
    wilcoxon_p: float | None
    #: The flips_excess interval contains 0 (None with no items).
    within_floor: bool | None


def excess_over_floor(cand_flipped: npt.ArrayLike, floor_flipped: npt.ArrayLike, cand_kl: npt.ArrayLike,
                      floor_kl: npt.ArrayLike, *, seed: int = 0, n_boot: int = DEFAULT_N_BOOT,
                      confidence: float = DEFAULT_CONFIDENCE) -> FloorExcess:
    """The candidate's excess over its floor on the same ``n`` items (arrays in the same order)."""
    cf = np.asarray(cand_flipped, dtype=bool)
    ff = np.asarray(floor_flipped, dtype=bool)
    ck = np.asarray(cand_kl, dtype=np.float64)
    fk = np.asarray(floor_kl, dtype=np.float64)
    n = int(cf.size)
    if not (ff.size == ck.size == fk.size == n):
        raise ValueError("the candidate's and the floor's per-item arrays differ in length")
    kw: dict[str, Any] = {"seed": seed, "n_boot": n_boot, "confidence": confidence}
    flips_est = joint_bootstrap_means([ff.astype(float), cf.astype(float)], differences=[(0, 1)], **kw)[2]
    ok = np.isfinite(ck) & np.isfinite(fk)
    kl_est = joint_bootstrap_means([fk[ok], ck[ok]], differences=[(0, 1)], **kw)[2]
    b = int(np.count_nonzero(cf & ~ff))
    c = int(np.count_nonzero(~cf & ff))
    within = None
    if flips_est.low is not None and flips_est.high is not None:
        within = bool(flips_est.low <= 0.0 <= flips_est.high)
    wil = wilcoxon_paired(fk[ok], ck[ok]) if ok.any() else None
    return FloorExcess(
        n=n,
        candidate_flip_rate=float(cf.mean()) if n else None,
        floor_flip_rate=float(ff.mean()) if n else None,
        flips_excess=flips_est,
        candidate_only_flips=b,
        floor_only_flips=c,
        mcnemar_p=mcnemar_exact(b, c) if n else None,
        kl_n=int(np.count_nonzero(ok)),
        candidate_kl_mean=float(ck[ok].mean()) if ok.any() else None,
        floor_kl_mean=float(fk[ok].mean()) if ok.any() else None,
        kl_excess=kl_est,
        wilcoxon_p=wil.pvalue if wil is not None else None,
        within_floor=within,
    )
