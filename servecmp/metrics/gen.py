"""Metrics of generated answers: where two generations part, paired flips, accuracy and pass@1
differences, length ratios, majority votes, per-endpoint rates.

Pure functions over arrays and sequences; every interval and test comes from `servecmp.metrics.stats`
(Wilson, exact McNemar, paired percentile bootstrap) or directly from ``scipy.stats``, so a gen run's
numbers are computed the way the MCQ run kind computes its own.

Conventions (baseline first, candidate second, as everywhere in servecmp):

- differences are candidate − baseline; ratios are candidate / baseline;
- "paired" means the items are resampled together: the bootstrap draws item indices once and reads
  both endpoints (and all K samples of an item) at those indices;
- the accuracy difference's interval is the paired percentile bootstrap of the per-item difference
  of correctness (`stats.paired_bootstrap_means`), the same interval the MCQ summary gives for
  delta_acc. With no discordant item the difference is constant and the interval collapses to 0;
  the flip counts and their Wilson intervals are what say how much room is left there.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import stats as sps

from servecmp.metrics.mcq import Flips, flips
from servecmp.metrics.stats import (
    DEFAULT_CONFIDENCE,
    DEFAULT_N_BOOT,
    Distribution,
    Estimate,
    PairedMeans,
    Proportion,
    as_float_array,
    describe,
    paired_bootstrap_means,
    wilson_ci,
)

BoolArray = npt.NDArray[np.bool_]


# ---- where two generations part ----------------------------------------------------------------


def first_divergence(a: Sequence[object] | str, b: Sequence[object] | str) -> int | None:
    """Index of the first position where ``a`` and ``b`` differ (token ids or characters).

    None when they are equal; the shorter length when one is a proper prefix of the other (the
    position where one generation went on and the other stopped).
    """
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return None if len(a) == len(b) else n


@dataclass(frozen=True)
class Divergence:
    """Identical generations and, over the items that differ, the first differing position."""

    #: Items whose two generations are identical, with a Wilson interval.
    identical: Proportion
    #: First differing position over the items that differ (mean with bootstrap CI, median, ...).
    position: Distribution


def divergence_summary(positions: Sequence[int | None], *, confidence: float = DEFAULT_CONFIDENCE,
                       n_boot: int = DEFAULT_N_BOOT, seed: int = 0) -> Divergence:
    """Summarise per-item `first_divergence` results (None = identical)."""
    differing = [int(p) for p in positions if p is not None]
    return Divergence(
        identical=wilson_ci(len(positions) - len(differing), len(positions), confidence=confidence),
        position=describe(np.asarray(differing, dtype=np.float64), confidence=confidence, n_boot=n_boot,
                          seed=seed),
    )


# ---- correctness: flips and accuracy -----------------------------------------------------------


@dataclass(frozen=True)
class PairedCorrectness:
    """Paired correctness of baseline and candidate on the same items."""

    n: int
    #: Counts, total flip rate with Wilson, exact McNemar p (binomial test of c→w among the flips).
    flips: Flips
    #: correct→wrong and wrong→correct, each as a share of all n items with a Wilson interval.
    correct_to_wrong: Proportion
    wrong_to_correct: Proportion
    #: Accuracies (with Wilson intervals) of each endpoint.
    baseline_accuracy: Proportion
    candidate_accuracy: Proportion
    #: Candidate − baseline accuracy with a paired percentile bootstrap interval.
    delta_acc: Estimate


def paired_correctness(base_correct: npt.ArrayLike, cand_correct: npt.ArrayLike, *,
                       confidence: float = DEFAULT_CONFIDENCE, n_boot: int = DEFAULT_N_BOOT,
                       seed: int = 0) -> PairedCorrectness:
    """Flips (with McNemar), per-direction flip rates, accuracies and the accuracy difference."""
    b, c = _bool_pair(base_correct, cand_correct)
    f = flips(b, c, confidence=confidence)
    n = int(b.size)
    means = paired_bootstrap_means(b.astype(np.float64), c.astype(np.float64), confidence=confidence,
                                   n_boot=n_boot, seed=seed)
    return PairedCorrectness(
        n=n,
        flips=f,
        correct_to_wrong=wilson_ci(f.correct_to_wrong, n, confidence=confidence),
        wrong_to_correct=wilson_ci(f.wrong_to_correct, n, confidence=confidence),
        baseline_accuracy=wilson_ci(int(np.count_nonzero(b)), n, confidence=confidence),
        candidate_accuracy=wilson_ci(int(np.count_nonzero(c)), n, confidence=confidence),
        delta_acc=means.diff,
    )


# ---- lengths -----------------------------------------------------------------------------------


def length_ratio(base_tokens: npt.ArrayLike, cand_tokens: npt.ArrayLike, *,
                 confidence: float = DEFAULT_CONFIDENCE, n_boot: int = DEFAULT_N_BOOT,
                 seed: int = 0) -> Estimate:
    """Ratio of mean completion lengths, mean(candidate) / mean(baseline), with a paired percentile
    bootstrap interval (items resampled together, the ratio recomputed on each resample).

    A ratio of means rather than a mean of per-item ratios: one item where the baseline stops after
    a token would otherwise dominate. None values when there are no items or the baseline's mean
    length is 0; a collapsed interval when the ratio is the same on every resample (e.g. n == 1 or
    candidate = r × baseline on every item).
    """
    b, c = as_float_array(base_tokens, "base_tokens"), as_float_array(cand_tokens, "cand_tokens")
    if b.shape != c.shape:
        raise ValueError(f"paired samples differ in length: {b.size} vs {c.size}")
    n = int(b.size)
    if n == 0 or float(np.sum(b)) == 0.0:
        return Estimate(point=None, low=None, high=None, n=n)
    point = float(np.sum(c) / np.sum(b))
    # Proportional lengths (incl. n == 1) give the same ratio on every resample with a non-zero
    # baseline; say so exactly instead of reporting a rounding-level interval.
    if np.all(c * b[0] == b * c[0]) and np.all(b > 0):
        return Estimate(point=point, low=point, high=point, n=n)

    def ratio(x: npt.NDArray[np.float64], y: npt.NDArray[np.float64], axis: int = -1) -> npt.NDArray[np.float64]:
        sx = np.sum(x, axis=axis)
        sy = np.sum(y, axis=axis)
        # A resample made only of zero-length baseline items has no ratio; count it as infinite so
        # it lands in the tail instead of being silently dropped (percentile of inf stays inf).
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(sx > 0, sy / np.where(sx > 0, sx, 1.0), np.inf)

    res = sps.bootstrap((b, c), ratio, n_resamples=n_boot, vectorized=True, paired=True,
                        confidence_level=confidence, method="percentile", rng=np.random.default_rng(seed))
    return Estimate(point=point, low=float(res.confidence_interval.low), high=float(res.confidence_interval.high),
                    n=n)


# ---- repeated sampling -------------------------------------------------------------------------


def pass_rates(correct: Sequence[Sequence[bool]] | npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Per item, the share of its samples that are correct (an unbiased pass@1 per item).

    ``correct`` is one row per item of that item's K sample results; rows may differ in length
    (a sample lost to a failed request is left out, not counted wrong). An item with no sample is an
    error: it has no pass rate to compare.
    """
    rows = [np.asarray(row, dtype=bool).ravel() for row in correct]  # type: ignore[union-attr]
    if any(r.size == 0 for r in rows):
        raise ValueError("an item has no samples")
    return np.asarray([float(np.count_nonzero(r)) / r.size for r in rows], dtype=np.float64)


def paired_pass_at_1(base_correct: Sequence[Sequence[bool]] | npt.ArrayLike,
                     cand_correct: Sequence[Sequence[bool]] | npt.ArrayLike, *,
                     confidence: float = DEFAULT_CONFIDENCE, n_boot: int = DEFAULT_N_BOOT,
                     seed: int = 0) -> PairedMeans:
    """pass@1 of each endpoint (mean of per-item pass rates) and their difference (candidate −
    baseline), all with intervals from one paired bootstrap over items: an item's K samples stay
    together, so the interval reflects item-to-item variation, not only sampling noise."""
    pb, pc = pass_rates(base_correct), pass_rates(cand_correct)
    if pb.shape != pc.shape:
        raise ValueError(f"paired samples differ in length: {pb.size} vs {pc.size}")
    return paired_bootstrap_means(pb, pc, confidence=confidence, n_boot=n_boot, seed=seed)


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """The most frequent extracted answer among an item's samples (None = nothing extracted does not
    vote). Ties go to the answer that appeared first, so the result does not depend on hashing.
    None when no sample has an answer."""
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return None
    top = max(votes.values())
    return next(a for a in answers if a is not None and votes[a] == top)


def majority_correct(answers: Sequence[Sequence[str | None]],
                     correct: Sequence[Sequence[bool]]) -> BoolArray:
    """Per item: is the majority-vote answer correct? Read from the correctness of the first sample
    that gave that answer (the grader is deterministic, so equal answers grade equally). An item
    with no answer at all is wrong."""
    if len(answers) != len(correct):
        raise ValueError(f"answers and correct differ in length: {len(answers)} vs {len(correct)}")
    out = np.zeros(len(answers), dtype=bool)
    for i, (item_answers, item_correct) in enumerate(zip(answers, correct, strict=True)):
        if len(item_answers) != len(item_correct):
            raise ValueError(f"item {i}: {len(item_answers)} answers but {len(item_correct)} grades")
        winner = majority_vote(item_answers)
        if winner is not None:
            out[i] = bool(item_correct[list(item_answers).index(winner)])
    return out


def majority_flips(base_answers: Sequence[Sequence[str | None]], base_correct: Sequence[Sequence[bool]],
                   cand_answers: Sequence[Sequence[str | None]], cand_correct: Sequence[Sequence[bool]], *,
                   confidence: float = DEFAULT_CONFIDENCE, n_boot: int = DEFAULT_N_BOOT,
                   seed: int = 0) -> PairedCorrectness:
    """`paired_correctness` of the per-item majority-vote answers of the two endpoints."""
    return paired_correctness(majority_correct(base_answers, base_correct),
                              majority_correct(cand_answers, cand_correct),
                              confidence=confidence, n_boot=n_boot, seed=seed)


# ---- per-endpoint rates ------------------------------------------------------------------------


@dataclass(frozen=True)
class EndpointRates:
    """Per-endpoint shares over its generations (items × samples), with Wilson intervals."""

    #: Generations from which no answer could be extracted.
    no_answer: Proportion
    #: Generations cut by the token limit (finish_reason "length").
    truncated: Proportion


def endpoint_rates(answers: Sequence[str | None], finish_reasons: Sequence[str | None], *,
                   confidence: float = DEFAULT_CONFIDENCE) -> EndpointRates:
    """No-answer and truncation rates of one endpoint's generations."""
    if len(answers) != len(finish_reasons):
        raise ValueError(f"answers and finish_reasons differ in length: {len(answers)} vs {len(finish_reasons)}")
    n = len(answers)
    return EndpointRates(
        no_answer=wilson_ci(sum(a is None for a in answers), n, confidence=confidence),
        truncated=wilson_ci(sum(r == "length" for r in finish_reasons), n, confidence=confidence),
    )


def _bool_pair(a: npt.ArrayLike, b: npt.ArrayLike) -> tuple[BoolArray, BoolArray]:
    xa, xb = np.asarray(a, dtype=bool).ravel(), np.asarray(b, dtype=bool).ravel()
    if xa.shape != xb.shape:
        raise ValueError(f"paired samples differ in length: {xa.size} vs {xb.size}")
    return xa, xb
