"""KL divergence of the next-token distribution at the answer position, from top-k logprobs.

An OpenAI-compatible endpoint returns only the top-k next-token logprobs, so KL(P ‖ Q) between
the baseline's next-token distribution P and the candidate's Q over the whole vocabulary cannot be
computed. `topk_kl` computes a lower bound that is exact whenever the two top-k lists cover all of
both distributions' mass.

The estimator. For one item let ``p`` be the baseline's top-k ``{token: logprob}`` and ``q`` the
candidate's. Partition the vocabulary into

- ``S``: the tokens present in BOTH top-k lists, each its own cell, and
- ``R``: one "rest" bucket holding every other token (including tokens in only one of the lists),

with bucket masses ``p_R = 1 − Σ_{i∈S} p_i`` and ``q_R = 1 − Σ_{i∈S} q_i`` (computed as
``−expm1(logsumexp(logprobs over S))`` for accuracy near 1; rounding negatives are clipped to 0).
Then::

    KL_hat = Σ_{i∈S} p_i · log(p_i / q_i)  +  p_R · log(p_R / q_R)

with ``0 · log 0 = 0``. ``KL_hat`` is the exact KL divergence between the two distributions
coarsened onto the cells ``S ∪ {R}``. Hence:

- ``KL_hat ≤ KL(P ‖ Q)`` always: coarsening can only lose divergence (log-sum inequality, i.e. the
  data-processing inequality);
- ``KL(P ‖ Q) − KL_hat = p_R · KL(P(·|R) ‖ Q(·|R))`` exactly (chain rule of KL), so the gap is at
  most ``p_R`` times the divergence inside the rest bucket. ``p_R``, the "unresolved baseline
  mass", is reported per item next to ``KL_hat`` so users see how much the bound could be off;
- when both top-k lists contain every token with nonzero mass, ``p_R = q_R = 0`` and
  ``KL_hat = KL(P ‖ Q)``.

If ``p_R > 0`` but ``q_R = 0`` (the candidate's list covers all its mass, the baseline's does not)
KL is infinite; ``q_R`` is then replaced by `RESIDUAL_FLOOR` and the item flagged ``floored``. A
token in S whose candidate logprob is ``-inf`` is floored the same way. KL is in nats.

Tokens are compared by the string the endpoint returns, so callers that receive (token, logprob)
pairs must merge duplicate strings (distinct token ids that decode alike) before calling; see
`merge_topk`.

Beside the bound:

- `topk_kl_tight` / `topk_kl_tight_item`: a tighter *estimate* (not a bound) of KL both ways and of
  JS from the same lists: every token either list shows is its own cell (the missing side imputed
  by `complete_topk`), plus a tail term for the tokens neither list shows; derivation in
  `topk_kl_tight_item`. Measured against exact full-vocabulary KL by scripts/bench_kl_topk.py.
- `divergences` / `cell_divergences`: KL(P ‖ Q), KL(Q ‖ P) and Jensen-Shannon over rows (answer
  options, full vocabularies) or cells. KL(baseline ‖ candidate) is the headline everywhere: the
  expectation is under the baseline, i.e. how surprised the candidate is by what the baseline says
  (Dutta et al. 2024 and llama.cpp's KLD use this direction); the other two are shown beside it.
- `exact_kl` / `exact_divergences`: the full-vocabulary references.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.special import log_softmax

from servecmp.metrics.stats import FloatArray

#: What `servecmp.metrics` re-exports from this module (its public API).
__all__ = [
    "CellDivergences", "CompletedTopk", "Divergences", "TopkKl", "TopkKlItem", "TopkTight", "TopkTightItem",
    "cell_divergences", "complete_topk", "divergences", "exact_divergences", "exact_kl", "merge_topk", "topk_kl",
    "topk_kl_item", "topk_kl_tight", "topk_kl_tight_item",
]

#: Stand-in for a candidate probability that is exactly zero where the baseline's is positive.
RESIDUAL_FLOOR = 1e-12

_LOG_FLOOR = math.log(RESIDUAL_FLOOR)


@dataclass(frozen=True)
class TopkKlItem:
    """The top-k KL estimate for one item (see the module docstring)."""

    kl_hat: float
    #: Baseline mass outside the shared tokens: the "unresolved baseline mass".
    p_rest: float
    #: Candidate mass outside the shared tokens.
    q_rest: float
    #: Number of tokens in both top-k lists.
    n_shared: int
    #: Whether `RESIDUAL_FLOOR` replaced a zero candidate probability.
    floored: bool
    #: KL(candidate ‖ baseline) over the same cells S ∪ {R}: a lower bound of the reverse KL.
    kl_cb_hat: float = math.nan
    #: Jensen-Shannon divergence over S ∪ {R}: a lower bound of the full JS.
    js_hat: float = math.nan


@dataclass(frozen=True)
class TopkKl:
    """`TopkKlItem` fields as per-item arrays; NaN (and n_shared -1) where an item had no top-k."""

    kl_hat: FloatArray
    p_rest: FloatArray
    q_rest: FloatArray
    n_shared: npt.NDArray[np.int64]
    floored: npt.NDArray[np.bool_]
    #: Lower bounds of KL(candidate ‖ baseline) and of JS, over the same cells.
    kl_cb_hat: FloatArray | None = None
    js_hat: FloatArray | None = None

    @property
    def available(self) -> npt.NDArray[np.bool_]:
        """Items that had top-k logprobs from both endpoints."""
        return np.asarray(np.isfinite(self.kl_hat))


def _log(x: float) -> float:
    return math.log(x) if x > 0.0 else -math.inf


def _rest_mass(logprobs: Sequence[float]) -> float:
    """``1 − Σ exp(logprobs)``, via ``−expm1(logsumexp)`` so it stays accurate when the sum is near 1.

    Plain Python: on top-k lists of ~20 entries scipy's logsumexp costs ~100x more per call.
    """
    top = max(logprobs, default=-math.inf)
    if top == -math.inf:
        return 1.0
    lse = top + math.log(math.fsum(math.exp(x - top) for x in logprobs))
    return max(0.0, -math.expm1(lse))


def topk_kl_item(p: Mapping[str, float], q: Mapping[str, float]) -> TopkKlItem:
    """Top-k estimate of KL(baseline ‖ candidate) for one item.

    ``p`` and ``q`` map each token of the baseline's and the candidate's top-k list to its
    logprob. ValueError on NaN or ``+inf`` logprobs.
    """
    for name, d in (("baseline", p), ("candidate", q)):
        for tok, v in d.items():
            if math.isnan(v) or v == math.inf:
                raise ValueError(f"{name} top-k logprob of {tok!r} is {v}")
    shared = [t for t in p if t in q]
    lp_s = [p[t] for t in shared]
    lq_s = [q[t] for t in shared]
    floored = False
    head = 0.0
    for a, b in zip(lp_s, lq_s, strict=True):
        if a == -math.inf:
            continue
        if b == -math.inf:
            b, floored = _LOG_FLOOR, True
        head += math.exp(a) * (a - b)
    p_rest, q_rest = _rest_mass(lp_s), _rest_mass(lq_s)
    tail = 0.0
    if p_rest > 0.0:
        if q_rest == 0.0:
            q_eff, floored = RESIDUAL_FLOOR, True
        else:
            q_eff = q_rest
        tail = p_rest * math.log(p_rest / q_eff)
    # The reverse KL and JS over the same cells are lower bounds too: the data-processing
    # inequality holds for every f-divergence, not only KL(P ‖ Q).
    cells_p = [*lp_s, _log(p_rest)]
    cells_q = [*lq_s, _log(q_rest)]
    both = cell_divergences(cells_p, cells_q)
    return TopkKlItem(kl_hat=head + tail, p_rest=p_rest, q_rest=q_rest, n_shared=len(shared),
                      floored=floored, kl_cb_hat=both.kl_qp, js_hat=both.js)


def topk_kl(base_topk: Sequence[Mapping[str, float] | None],
            cand_topk: Sequence[Mapping[str, float] | None]) -> TopkKl:
    """`topk_kl_item` over paired items; an item where either side is ``None`` or empty gets NaN."""
    if len(base_topk) != len(cand_topk):
        raise ValueError(f"top-k lists differ in length: {len(base_topk)} vs {len(cand_topk)}")
    n = len(base_topk)
    kl = np.full(n, np.nan)
    p_rest = np.full(n, np.nan)
    q_rest = np.full(n, np.nan)
    n_shared = np.full(n, -1, dtype=np.int64)
    floored = np.zeros(n, dtype=bool)
    kl_cb = np.full(n, np.nan)
    js = np.full(n, np.nan)
    for i, (p, q) in enumerate(zip(base_topk, cand_topk, strict=True)):
        if not p or not q:
            continue
        r = topk_kl_item(p, q)
        kl[i], p_rest[i], q_rest[i] = r.kl_hat, r.p_rest, r.q_rest
        n_shared[i], floored[i] = r.n_shared, r.floored
        kl_cb[i], js[i] = r.kl_cb_hat, r.js_hat
    return TopkKl(kl_hat=kl, p_rest=p_rest, q_rest=q_rest, n_shared=n_shared, floored=floored,
                  kl_cb_hat=kl_cb, js_hat=js)


def merge_topk(pairs: Iterable[tuple[str, float]]) -> dict[str, float]:
    """(token, logprob) pairs as a dict; repeated token strings are merged by adding their
    probabilities (log-sum-exp), so the string, not the token id, is the partition cell."""
    out: dict[str, float] = {}
    for tok, lp in pairs:
        out[tok] = float(np.logaddexp(out[tok], lp)) if tok in out else float(lp)
    return out


def exact_kl(p_logprobs_full: npt.ArrayLike, q_logprobs_full: npt.ArrayLike) -> FloatArray:
    """Exact KL(P ‖ Q) per row over full-vocabulary rows, in nats, for reference and tests.

    Rows are log-probabilities (or logits: each row is renormalised with log-softmax). Terms with
    ``p = 0`` are 0; ``p > 0`` with ``q = 0`` gives ``inf``. Accepts 1-D input as a single row.
    """
    lp = log_softmax(np.atleast_2d(np.asarray(p_logprobs_full, dtype=np.float64)), axis=-1)
    lq = log_softmax(np.atleast_2d(np.asarray(q_logprobs_full, dtype=np.float64)), axis=-1)
    if lp.shape != lq.shape:
        raise ValueError(f"rows differ in shape: {lp.shape} vs {lq.shape}")
    p = np.exp(lp)
    with np.errstate(invalid="ignore"):
        log_ratio = np.where(p > 0, lp - lq, 0.0)
    return np.asarray((p * log_ratio).sum(axis=-1))


# --- both directions and Jensen-Shannon -----------------------------------------------------------


@dataclass(frozen=True)
class CellDivergences:
    """KL both ways and JS between two distributions given as log-probabilities over the same cells."""

    kl_pq: float
    kl_qp: float
    js: float
    #: A cell had ``p > 0`` and ``q = 0`` (resp. the reverse) and `RESIDUAL_FLOOR` stood in for zero.
    floored_pq: bool
    floored_qp: bool


_LN2 = math.log(2.0)


def cell_divergences(lp: Sequence[float], lq: Sequence[float]) -> CellDivergences:
    """KL(P ‖ Q), KL(Q ‖ P) and JS(P, Q) in nats, ``lp``/``lq`` the cells' log-probabilities
    (``-inf`` for zero; each side should sum to 1). ``0 · log 0 = 0``; a zero opposite a positive
    probability is floored at `RESIDUAL_FLOOR` for the KLs (and flagged); JS needs no floor.
    Rounding negatives are clipped to 0. One pass, one exp per side per cell: it runs per item.
    """
    kl_pq = kl_qp = js = 0.0
    f_pq = f_qp = False
    for a, b in zip(lp, lq, strict=True):
        a_in, b_in = a != -math.inf, b != -math.inf
        if not (a_in or b_in):
            continue
        pa = math.exp(a) if a_in else 0.0
        qb = math.exp(b) if b_in else 0.0
        if a_in:
            if b_in:
                kl_pq += pa * (a - b)
            else:
                kl_pq += pa * (a - _LOG_FLOOR)
                f_pq = True
        if b_in:
            if a_in:
                kl_qp += qb * (b - a)
            else:
                kl_qp += qb * (b - _LOG_FLOOR)
                f_qp = True
        # JS = ½ Σ p log(p/m) + ½ Σ q log(q/m), m = (p + q)/2, log m by log-add-exp so tiny cells keep
        # their precision. Always finite (at most ln 2): a zero on one side needs no floor.
        hi, lo = (a, b) if a >= b else (b, a)
        log_m = hi + math.log1p(math.exp(lo - hi)) - _LN2 if lo != -math.inf else hi - _LN2
        if a_in:
            js += 0.5 * pa * (a - log_m)
        if b_in:
            js += 0.5 * qb * (b - log_m)
    return CellDivergences(kl_pq=max(kl_pq, 0.0), kl_qp=max(kl_qp, 0.0), js=min(max(js, 0.0), _LN2),
                           floored_pq=f_pq, floored_qp=f_qp)


@dataclass(frozen=True)
class Divergences:
    """Per-row divergences between baseline rows P and candidate rows Q, nats; NaN for rows where
    either side has no finite log-probability."""

    #: KL(P ‖ Q) = KL(baseline ‖ candidate): the headline direction.
    kl_bc: FloatArray
    #: KL(Q ‖ P) = KL(candidate ‖ baseline).
    kl_cb: FloatArray
    #: Jensen-Shannon divergence (symmetric, at most ln 2).
    js: FloatArray
    #: Rows where a floor stood in for a zero candidate (resp. baseline) probability.
    floored_bc: npt.NDArray[np.bool_]
    floored_cb: npt.NDArray[np.bool_]


def divergences(base_lp: npt.ArrayLike, cand_lp: npt.ArrayLike, *,
                floor: float | None = RESIDUAL_FLOOR) -> Divergences:
    """KL both ways and JS per row of two ``(n, m)`` (or ``(m,)``) log-probability arrays.

    Each row is renormalised over its finite entries (log-softmax; ``-inf`` is probability 0), so
    the rows may be option logprobs or full-vocabulary logprobs or logits. A zero probability
    opposite a positive one is replaced by ``floor`` for the KLs (the row is flagged), or gives
    ``inf`` with ``floor=None`` (the exact value). Used for the answer options (exact over the
    options) and, over full-vocabulary rows, as the reference the top-k estimators are tested with.
    """
    p_arr = np.atleast_2d(np.asarray(base_lp, dtype=np.float64))
    q_arr = np.atleast_2d(np.asarray(cand_lp, dtype=np.float64))
    if p_arr.shape != q_arr.shape:
        raise ValueError(f"rows differ in shape: {p_arr.shape} vs {q_arr.shape}")
    if np.isnan(p_arr).any() or np.isnan(q_arr).any() or np.isposinf(p_arr).any() or np.isposinf(q_arr).any():
        raise ValueError("log-probabilities hold NaN or +inf; use -inf for zero probability")
    n = p_arr.shape[0]
    out = {name: np.full(n, np.nan) for name in ("kl_bc", "kl_cb", "js")}
    fl_bc, fl_cb = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    ok = np.isfinite(p_arr).any(axis=1) & np.isfinite(q_arr).any(axis=1)
    if ok.any():
        lp = log_softmax(p_arr[ok], axis=1)
        lq = log_softmax(q_arr[ok], axis=1)
        p, q = np.exp(lp), np.exp(lq)
        log_floor = -np.inf if floor is None else math.log(floor)

        def kl(pa: FloatArray, la: FloatArray, lb: FloatArray) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
            needs = (pa > 0) & np.isneginf(lb)
            lb = np.where(needs, log_floor, lb)
            with np.errstate(invalid="ignore"):
                # Terms with p == 0 are 0 by convention; computing them only there avoids -inf - -inf.
                ratio = np.subtract(la, lb, out=np.zeros_like(la), where=pa > 0)
            flagged = needs.any(axis=1) if floor is not None else np.zeros(pa.shape[0], dtype=bool)
            return np.maximum((pa * ratio).sum(axis=1), 0.0), np.asarray(flagged, dtype=bool)

        out["kl_bc"][ok], fl_bc[ok] = kl(p, lp, lq)
        out["kl_cb"][ok], fl_cb[ok] = kl(q, lq, lp)
        m = 0.5 * (p + q)
        with np.errstate(divide="ignore"):
            log_m = np.log(m)
        t_p = np.subtract(lp, log_m, out=np.zeros_like(lp), where=p > 0)
        t_q = np.subtract(lq, log_m, out=np.zeros_like(lq), where=q > 0)
        out["js"][ok] = np.clip(0.5 * (p * t_p).sum(axis=1) + 0.5 * (q * t_q).sum(axis=1), 0.0, _LN2)
    return Divergences(kl_bc=out["kl_bc"], kl_cb=out["kl_cb"], js=out["js"], floored_bc=fl_bc, floored_cb=fl_cb)


def exact_divergences(p_logprobs_full: npt.ArrayLike, q_logprobs_full: npt.ArrayLike) -> Divergences:
    """`divergences` without a floor: exact KL both ways (``inf`` where due) and JS per full row."""
    return divergences(p_logprobs_full, q_logprobs_full, floor=None)


# --- the tighter top-k estimate ------------------------------------------------------------------


@dataclass(frozen=True)
class CompletedTopk:
    """Two top-k lists completed onto the same cells: every token either list shows, plus one rest
    cell (see `complete_topk`). Log-probabilities, ``-inf`` for zero."""

    tokens: list[str]
    #: Baseline log-probabilities over ``tokens`` then the rest cell (len(tokens) + 1 entries).
    lp: list[float]
    #: Candidate log-probabilities over the same cells.
    lq: list[float]
    #: Candidate-only tokens whose baseline probability was imputed, and the reverse.
    n_imputed_base: int
    n_imputed_cand: int


def _impute(listed: Sequence[float], unlisted_mass: float, n_missing: int) -> float:
    """Log-probability given to each of ``n_missing`` tokens a list does not show.

    A token absent from a top-k list has at most the list's smallest probability ``m``, so ``m``
    is its upper bound and, since the two distributions are close, the token was very likely just
    below the list's cut: ``m`` is also the natural point estimate. Capped at an equal share
    ``u / (n_missing + 1)`` of the list's unlisted mass ``u`` so the imputed tokens never take more
    mass than the list left unassigned, and the rest cell keeps a share too.
    """
    if n_missing == 0:
        return -math.inf
    m = math.exp(min(listed)) if listed else 0.0
    share = unlisted_mass / (n_missing + 1)
    v = min(m, share)
    return math.log(v) if v > 0.0 else -math.inf


def _sample_variance(x: Sequence[float]) -> float:
    mean = math.fsum(x) / len(x)
    return math.fsum((v - mean) ** 2 for v in x) / (len(x) - 1)


def complete_topk(p: Mapping[str, float], q: Mapping[str, float]) -> CompletedTopk:
    """Both top-k lists over U = every token either list shows, plus one rest cell R.

    Rule (see `topk_kl_tight_item`): a token one list shows and the other does not gets, on the
    side that does not show it, that list's smallest probability, capped by `_impute`'s equal
    share of its unlisted mass; R gets what is left on each side (never negative).
    """
    tokens = list(p) + [t for t in q if t not in p]
    only_p = [t for t in p if t not in q]
    only_q = [t for t in q if t not in p]
    u_p, u_q = _rest_mass(list(p.values())), _rest_mass(list(q.values()))
    imp_q = _impute(list(q.values()), u_q, len(only_p))
    imp_p = _impute(list(p.values()), u_p, len(only_q))
    lp = [p.get(t, imp_p) for t in tokens]
    lq = [q.get(t, imp_q) for t in tokens]
    rest_p = max(0.0, u_p - len(only_q) * (math.exp(imp_p) if only_q else 0.0))
    rest_q = max(0.0, u_q - len(only_p) * (math.exp(imp_q) if only_p else 0.0))
    return CompletedTopk(tokens=tokens, lp=[*lp, _log(rest_p)], lq=[*lq, _log(rest_q)],
                         n_imputed_base=len(only_q), n_imputed_cand=len(only_p))


#: The tail term needs a spread of log-ratios: at least this many tokens shown by both lists.
MIN_SHARED_FOR_TAIL = 3


@dataclass(frozen=True)
class TopkTightItem:
    """The tighter top-k estimate for one item (see `topk_kl_tight_item`)."""

    kl_bc: float
    kl_cb: float
    js: float
    #: The part of ``kl_bc`` that is the tail term ``p_R · s²/2`` (0 below `MIN_SHARED_FOR_TAIL`).
    tail: float
    #: Tokens either list shows (|U|).
    n_union: int
    n_imputed_base: int
    n_imputed_cand: int
    floored: bool


@dataclass(frozen=True)
class TopkTight:
    """`TopkTightItem` fields as per-item arrays; NaN (counts -1) where an item had no top-k."""

    kl_bc: FloatArray
    kl_cb: FloatArray
    js: FloatArray
    tail: FloatArray
    n_union: npt.NDArray[np.int64]
    n_imputed_base: npt.NDArray[np.int64]
    n_imputed_cand: npt.NDArray[np.int64]
    floored: npt.NDArray[np.bool_]

    @property
    def available(self) -> npt.NDArray[np.bool_]:
        return np.asarray(np.isfinite(self.kl_bc))


def topk_kl_tight_item(p: Mapping[str, float], q: Mapping[str, float]) -> TopkTightItem:
    """A tighter estimate of KL(baseline ‖ candidate), KL(candidate ‖ baseline) and JS from two
    top-k lists, in two steps.

    1. Cells: the lower bound (`topk_kl_item`) puts a token shown by only one list into the rest
       bucket, where its divergence is averaged away, though such tokens are where the two
       distributions disagree. Here every token either list shows is its own cell, its missing
       side imputed (`complete_topk`); only tokens neither list shows share the rest cell R.
    2. Tail: by the chain rule, KL(P ‖ Q) = KL over the cells + p_R · KL(P(·|R) ‖ Q(·|R)); the
       bound drops the second term. Writing d = log p − log q per token, a second-order expansion
       gives KL(P(·|R) ‖ Q(·|R)) ≈ Var_{P(·|R)}(d) / 2. The unlisted tokens' log-ratios are not
       seen, so their variance is taken to be the sample variance s² of d over the tokens both
       lists show (the same model and the same quantization noise act on every logit). The term
       added is ``p_R · s²/2`` (``tail``); for KL(Q ‖ P) ``q_R · s²/2``; for JS, whose kernel is a
       quarter as curved, ``(p_R + q_R)/2 · s²/8``. No tail below `MIN_SHARED_FOR_TAIL` shared
       tokens.

    This is an estimate, not a bound: the imputed probabilities and the tail's variance may be
    high or low (the benchmark scripts/bench_kl_topk.py measures it against exact KL). ValueError
    on NaN or ``+inf`` logprobs.
    """
    for name, d in (("baseline", p), ("candidate", q)):
        for tok, v in d.items():
            if math.isnan(v) or v == math.inf:
                raise ValueError(f"{name} top-k logprob of {tok!r} is {v}")
    c = complete_topk(p, q)
    cells = cell_divergences(c.lp, c.lq)
    ratios = [p[t] - q[t] for t in p if t in q and p[t] != -math.inf and q[t] != -math.inf]
    s2 = _sample_variance(ratios) if len(ratios) >= MIN_SHARED_FOR_TAIL else 0.0
    p_r, q_r = math.exp(c.lp[-1]), math.exp(c.lq[-1])
    tail_bc, tail_cb, tail_js = p_r * s2 / 2, q_r * s2 / 2, (p_r + q_r) / 2 * s2 / 8
    return TopkTightItem(kl_bc=cells.kl_pq + tail_bc, kl_cb=cells.kl_qp + tail_cb, js=min(cells.js + tail_js, _LN2),
                         tail=tail_bc, n_union=len(c.tokens),
                         n_imputed_base=c.n_imputed_base, n_imputed_cand=c.n_imputed_cand,
                         floored=cells.floored_pq or cells.floored_qp)


def topk_kl_tight(base_topk: Sequence[Mapping[str, float] | None],
                  cand_topk: Sequence[Mapping[str, float] | None]) -> TopkTight:
    """`topk_kl_tight_item` over paired items; an item where either side is ``None`` or empty gets NaN."""
    if len(base_topk) != len(cand_topk):
        raise ValueError(f"top-k lists differ in length: {len(base_topk)} vs {len(cand_topk)}")
    n = len(base_topk)
    f = {name: np.full(n, np.nan) for name in ("kl_bc", "kl_cb", "js", "tail")}
    i64 = {name: np.full(n, -1, dtype=np.int64) for name in ("n_union", "n_imputed_base", "n_imputed_cand")}
    floored = np.zeros(n, dtype=bool)
    for i, (p, q) in enumerate(zip(base_topk, cand_topk, strict=True)):
        if not p or not q:
            continue
        r = topk_kl_tight_item(p, q)
        f["kl_bc"][i], f["kl_cb"][i], f["js"][i], f["tail"][i] = r.kl_bc, r.kl_cb, r.js, r.tail
        i64["n_union"][i], i64["n_imputed_base"][i], i64["n_imputed_cand"][i] = (
            r.n_union, r.n_imputed_base, r.n_imputed_cand)
        floored[i] = r.floored
    return TopkTight(kl_bc=f["kl_bc"], kl_cb=f["kl_cb"], js=f["js"], tail=f["tail"], n_union=i64["n_union"],
                     n_imputed_base=i64["n_imputed_base"], n_imputed_cand=i64["n_imputed_cand"], floored=floored)
