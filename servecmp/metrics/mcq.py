"""Multiple-choice comparison metrics of a baseline and a candidate endpoint (Dutta et al. 2024).

Inputs are per-item option log-probability matrices of shape ``(n, k)``: row ``i`` holds each
endpoint's log-probability of option ``j`` of item ``i``. An option an endpoint gave no logprob for
(or padding, when items have fewer than ``k`` options) is ``-inf``. A row with no finite entry means
the endpoint answered nothing: its choice is ``NO_ANSWER`` (-1, never correct) and the item is left
out of the option-distribution metrics (option KL, top margin), whose per-item arrays hold NaN there.

All functions are pure and vectorised; per-item arrays come out, and the summary statistics over
them come from `servecmp.metrics.stats`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.special import log_softmax

from servecmp.metrics.stats import (
    DEFAULT_CONFIDENCE,
    DEFAULT_N_BOOT,
    Estimate,
    FloatArray,
    Proportion,
    bootstrap_mean_ci,
    mann_whitney_p,
    mcnemar_exact,
    wilson_ci,
)

#: What `servecmp.metrics` re-exports from this module (its public API).
__all__ = [
    "DEFAULT_MARGIN_EDGES", "NO_ANSWER", "Flips", "GroupRow", "MarginBucket", "MarginByCorrectness", "OptionKl",
    "answer_changes", "change_by_margin", "changed_answers", "chosen_options", "correct", "flips", "group_breakdown",
    "length_normalised_choices", "margin_by_correctness", "option_kl", "option_log_probs", "top_margin",
]

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

#: The choice recorded for an item whose option logprobs are all ``-inf``.
NO_ANSWER = -1
#: Probability floor used where the baseline gives an outcome positive probability and the
#: candidate exactly zero; KL would be infinite, which no mean or JSON report survives.
PROB_FLOOR = 1e-12
#: Top-margin bucket edges of the paper's Figure 3: ten buckets of width 0.1, the last one closed.
DEFAULT_MARGIN_EDGES: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def as_logprob_matrix(lp: npt.ArrayLike, name: str = "logprobs") -> FloatArray:
    """``lp`` as an ``(n, k)`` float64 array; ValueError on another shape, NaN or ``+inf``."""
    arr = np.asarray(lp, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise ValueError(f"{name} must have shape (n_items, n_options), got {arr.shape}")
    if np.isnan(arr).any() or np.isposinf(arr).any():
        raise ValueError(f"{name} holds NaN or +inf; use -inf for a missing option")
    return arr


def answered(lp: FloatArray) -> BoolArray:
    """Items whose row has at least one finite option logprob."""
    return np.asarray(np.isfinite(lp).any(axis=1))


def chosen_options(lp: npt.ArrayLike) -> IntArray:
    """Index of each row's most likely option.

    Ties go to the lowest index (``numpy.argmax``'s rule, which lm-eval also uses). Rows without a
    finite logprob give `NO_ANSWER`.
    """
    arr = as_logprob_matrix(lp)
    chosen = np.argmax(arr, axis=1).astype(np.int64)
    chosen[~answered(arr)] = NO_ANSWER
    return chosen


def length_normalised_choices(lp: npt.ArrayLike, lengths: npt.ArrayLike) -> IntArray:
    """lm-eval's ``acc_norm`` choice: argmax of ``logprob / option length in characters``.

    ``lengths`` has the shape of ``lp`` (or ``(k,)``, shared by every item) and must be positive;
    ties and unanswered rows are handled as in `chosen_options`.
    """
    arr = as_logprob_matrix(lp)
    ln = np.broadcast_to(np.asarray(lengths, dtype=np.float64), arr.shape)
    if not np.all(ln > 0):
        raise ValueError("option lengths must be positive")
    return chosen_options(arr / ln)


def correct(chosen: npt.ArrayLike, gold: npt.ArrayLike) -> BoolArray:
    """Whether each choice equals the gold index."""
    c, g = np.asarray(chosen), np.asarray(gold)
    if c.shape != g.shape:
        raise ValueError(f"chosen and gold differ in shape: {c.shape} vs {g.shape}")
    return np.asarray(c == g)


def option_log_probs(lp: npt.ArrayLike) -> FloatArray:
    """Each row renormalised over its options (log-softmax); NaN rows for unanswered items."""
    arr = as_logprob_matrix(lp)
    out = np.full(arr.shape, np.nan)
    ok = answered(arr)
    out[ok] = log_softmax(arr[ok], axis=1)
    return out


@dataclass(frozen=True)
class OptionKl:
    """Per-item KL(baseline ‖ candidate) over the renormalised options, in nats.

    ``kl`` is NaN where either endpoint answered nothing; ``floored`` marks items where the candidate
    gave zero probability to an option the baseline did not, and `PROB_FLOOR` stood in for it.
    """

    kl: FloatArray
    floored: BoolArray


def option_kl(base_lp: npt.ArrayLike, cand_lp: npt.ArrayLike) -> OptionKl:
    """KL(p ‖ q) per item, where p and q are the softmax of the baseline's and the candidate's option
    logprobs: ``sum_j p_j (log p_j - log q_j)`` with ``0 · log 0 = 0``.

    An option with ``p_j > 0`` and ``q_j = 0`` would make KL infinite; ``log q_j`` is floored at
    ``log(PROB_FLOOR)`` instead and the item is flagged in ``floored``.
    """
    base, cand = as_logprob_matrix(base_lp, "base_lp"), as_logprob_matrix(cand_lp, "cand_lp")
    if base.shape != cand.shape:
        raise ValueError(f"base_lp and cand_lp differ in shape: {base.shape} vs {cand.shape}")
    ok = answered(base) & answered(cand)
    kl = np.full(base.shape[0], np.nan)
    floored = np.zeros(base.shape[0], dtype=bool)
    if ok.any():
        lp_p = log_softmax(base[ok], axis=1)
        lp_q = log_softmax(cand[ok], axis=1)
        p = np.exp(lp_p)
        needs_floor = (p > 0) & np.isneginf(lp_q)
        lp_q = np.where(needs_floor, np.log(PROB_FLOOR), lp_q)
        # Terms with p == 0 are 0 by convention; computing them only where p > 0 avoids -inf - -inf.
        log_ratio = np.subtract(lp_p, lp_q, out=np.zeros_like(lp_p), where=p > 0)
        kl[ok] = np.maximum((p * log_ratio).sum(axis=1), 0.0)
        floored[ok] = needs_floor.any(axis=1)
    return OptionKl(kl=kl, floored=floored)


def top_margin(lp: npt.ArrayLike) -> FloatArray:
    """``p_top1 - p_top2`` of each row's renormalised option distribution (NaN if unanswered).

    With a single option with nonzero probability the margin is 1.
    """
    probs = np.exp(option_log_probs(lp))
    if probs.shape[1] == 1:
        return np.where(np.isnan(probs[:, 0]), np.nan, 1.0)
    top2 = -np.partition(-probs, 1, axis=1)[:, :2]
    return np.asarray(top2[:, 0] - top2[:, 1])


@dataclass(frozen=True)
class Flips:
    """Items whose correctness differs between the endpoints.

    ``rate`` is the share of flipped items with a Wilson interval; ``mcnemar_p`` tests whether
    flips go one way more than the other (exact McNemar, see `mcnemar_exact`).
    """

    n: int
    flips: int
    correct_to_wrong: int
    wrong_to_correct: int
    rate: Proportion
    #: None where a stored summary has no p (JSON has no NaN).
    mcnemar_p: float | None


def flips(base_correct: npt.ArrayLike, cand_correct: npt.ArrayLike, *,
          confidence: float = DEFAULT_CONFIDENCE) -> Flips:
    """Count correct→wrong and wrong→correct items (baseline → candidate)."""
    b, c = _bools(base_correct, cand_correct)
    c2w = int(np.count_nonzero(b & ~c))
    w2c = int(np.count_nonzero(~b & c))
    n = int(b.size)
    return Flips(n=n, flips=c2w + w2c, correct_to_wrong=c2w, wrong_to_correct=w2c,
                 rate=wilson_ci(c2w + w2c, n, confidence=confidence), mcnemar_p=mcnemar_exact(c2w, w2c))


def answer_changes(base_chosen: npt.ArrayLike, cand_chosen: npt.ArrayLike, *,
                   confidence: float = DEFAULT_CONFIDENCE) -> Proportion:
    """Share of items whose chosen option differs, whatever the gold, with a Wilson interval."""
    changed = changed_answers(base_chosen, cand_chosen)
    return wilson_ci(int(np.count_nonzero(changed)), int(changed.size), confidence=confidence)


def changed_answers(base_chosen: npt.ArrayLike, cand_chosen: npt.ArrayLike) -> BoolArray:
    """Per item: did the chosen option change?"""
    b, c = np.asarray(base_chosen), np.asarray(cand_chosen)
    if b.shape != c.shape:
        raise ValueError(f"chosen arrays differ in shape: {b.shape} vs {c.shape}")
    return np.asarray(b != c)


@dataclass(frozen=True)
class MarginBucket:
    """Answer changes among items whose baseline top margin lies in ``[low_edge, high_edge)``
    (closed on the right for the last bucket)."""

    low_edge: float
    high_edge: float
    changes: Proportion


def change_by_margin(margin: npt.ArrayLike, changed: npt.ArrayLike,
                     edges: Sequence[float] = DEFAULT_MARGIN_EDGES, *,
                     confidence: float = DEFAULT_CONFIDENCE) -> list[MarginBucket]:
    """Answer-change rate per top-margin bucket (the paper's Figure 3 as a table).

    Bucket ``i`` holds margins in ``[edges[i], edges[i+1])``; the last bucket also holds
    ``edges[-1]``. Margins that are NaN (unanswered) or outside the edges are not counted.
    """
    m = np.asarray(margin, dtype=np.float64)
    ch = np.asarray(changed, dtype=bool)
    if m.shape != ch.shape or m.ndim != 1:
        raise ValueError(f"margin and changed must be 1-D of equal length, got {m.shape} and {ch.shape}")
    e = np.asarray(edges, dtype=np.float64)
    if e.ndim != 1 or e.size < 2 or not np.all(np.diff(e) > 0):
        raise ValueError("bucket edges must be at least two strictly increasing numbers")
    n_buckets = e.size - 1
    idx = np.searchsorted(e, m, side="right") - 1
    idx[m == e[-1]] = n_buckets - 1
    inside = np.isfinite(m) & (idx >= 0) & (idx < n_buckets)
    counts = np.bincount(idx[inside], minlength=n_buckets)
    hits = np.bincount(idx[inside], weights=ch[inside].astype(np.float64), minlength=n_buckets)
    return [
        MarginBucket(low_edge=float(e[i]), high_edge=float(e[i + 1]),
                     changes=wilson_ci(int(round(hits[i])), int(counts[i]), confidence=confidence))
        for i in range(n_buckets)
    ]


@dataclass(frozen=True)
class MarginByCorrectness:
    """Mean baseline top margin when the baseline is right vs wrong (the paper's Table 1)."""

    when_correct: Estimate
    when_wrong: Estimate
    #: Two-sided Mann-Whitney U p-value for "the margins come from the same distribution".
    mann_whitney_p: float | None


def margin_by_correctness(margin: npt.ArrayLike, base_correct: npt.ArrayLike, *,
                          confidence: float = DEFAULT_CONFIDENCE, n_boot: int = DEFAULT_N_BOOT,
                          seed: int = 0) -> MarginByCorrectness:
    """Split the baseline's top margins by baseline correctness; NaN margins are left out."""
    m = np.asarray(margin, dtype=np.float64)
    ok = np.asarray(base_correct, dtype=bool)
    if m.shape != ok.shape:
        raise ValueError(f"margin and base_correct differ in shape: {m.shape} vs {ok.shape}")
    finite = np.isfinite(m)
    right, wrong = m[finite & ok], m[finite & ~ok]
    return MarginByCorrectness(when_correct=bootstrap_mean_ci(right, confidence=confidence, n_boot=n_boot,
                                                              seed=seed),
                               when_wrong=bootstrap_mean_ci(wrong, confidence=confidence, n_boot=n_boot,
                                                            seed=seed),
                               mann_whitney_p=mann_whitney_p(right, wrong))


@dataclass(frozen=True)
class GroupRow:
    """Comparison figures for one group of items (one subject, one category, ...)."""

    group: str
    n: int
    acc_baseline: float
    acc_candidate: float
    #: candidate − baseline
    delta_acc: float
    flips: int
    correct_to_wrong: int
    wrong_to_correct: int
    flip_rate: float
    answer_change_rate: float
    #: Mean over the group's items with a defined option KL; None if there are none.
    mean_option_kl: float | None
    #: Same for the top-k next-token KL estimate, when one was given.
    mean_topk_kl: float | None


def group_breakdown(labels: Sequence[str | None], base_correct: npt.ArrayLike, cand_correct: npt.ArrayLike,
                    changed: npt.ArrayLike, option_kl_values: npt.ArrayLike,
                    topk_kl_values: npt.ArrayLike | None = None) -> list[GroupRow]:
    """Per-group figures, sorted by flip rate (descending), then size (descending), then name.

    ``labels[i]`` names item ``i``'s group; ``None`` becomes the group ``"(none)"``. KL arrays may
    hold NaN for items where the KL is undefined; group means skip them.
    """
    b, c = _bools(base_correct, cand_correct)
    n = b.size
    ch = np.asarray(changed, dtype=bool)
    kl = np.asarray(option_kl_values, dtype=np.float64)
    tk = np.full(n, np.nan) if topk_kl_values is None else np.asarray(topk_kl_values, dtype=np.float64)
    if len(labels) != n or ch.shape != (n,) or kl.shape != (n,) or tk.shape != (n,):
        raise ValueError("labels and per-item arrays differ in length")
    names, inv = np.unique(np.asarray(["(none)" if x is None else str(x) for x in labels], dtype=object),
                           return_inverse=True)
    g = len(names)

    def total(x: npt.ArrayLike) -> FloatArray:
        return np.bincount(inv, weights=np.asarray(x, dtype=np.float64), minlength=g).astype(np.float64)

    size = np.bincount(inv, minlength=g)
    acc_b, acc_c = total(b) / size, total(c) / size
    c2w, w2c = total(b & ~c), total(~b & c)
    rate_ch = total(ch) / size
    mean_kl, mean_tk = _group_nanmean(inv, kl, g), _group_nanmean(inv, tk, g)
    rows = [
        GroupRow(group=str(names[i]), n=int(size[i]), acc_baseline=float(acc_b[i]),
                 acc_candidate=float(acc_c[i]), delta_acc=float(acc_c[i] - acc_b[i]),
                 flips=int(c2w[i] + w2c[i]), correct_to_wrong=int(c2w[i]), wrong_to_correct=int(w2c[i]),
                 flip_rate=float((c2w[i] + w2c[i]) / size[i]), answer_change_rate=float(rate_ch[i]),
                 mean_option_kl=mean_kl[i], mean_topk_kl=mean_tk[i])
        for i in range(g)
    ]
    rows.sort(key=lambda r: (-r.flip_rate, -r.n, r.group))
    return rows


def _group_nanmean(inv: npt.NDArray[np.intp], x: FloatArray, g: int) -> list[float | None]:
    ok = np.isfinite(x)
    cnt = np.bincount(inv[ok], minlength=g)
    tot = np.bincount(inv[ok], weights=x[ok], minlength=g)
    return [float(tot[i] / cnt[i]) if cnt[i] else None for i in range(g)]


def _bools(a: npt.ArrayLike, b: npt.ArrayLike) -> tuple[BoolArray, BoolArray]:
    xa, xb = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if xa.shape != xb.shape or xa.ndim != 1:
        raise ValueError(f"correctness arrays must be 1-D of equal length, got {xa.shape} and {xb.shape}")
    return xa, xb
