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
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.special import log_softmax

from servecmp.metrics.stats import FloatArray

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


@dataclass(frozen=True)
class TopkKl:
    """`TopkKlItem` fields as per-item arrays; NaN (and n_shared -1) where an item had no top-k."""

    kl_hat: FloatArray
    p_rest: FloatArray
    q_rest: FloatArray
    n_shared: npt.NDArray[np.int64]
    floored: npt.NDArray[np.bool_]

    @property
    def available(self) -> npt.NDArray[np.bool_]:
        """Items that had top-k logprobs from both endpoints."""
        return np.asarray(np.isfinite(self.kl_hat))


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
    return TopkKlItem(kl_hat=head + tail, p_rest=p_rest, q_rest=q_rest, n_shared=len(shared),
                      floored=floored)


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
    for i, (p, q) in enumerate(zip(base_topk, cand_topk, strict=True)):
        if not p or not q:
            continue
        r = topk_kl_item(p, q)
        kl[i], p_rest[i], q_rest[i] = r.kl_hat, r.p_rest, r.q_rest
        n_shared[i], floored[i] = r.n_shared, r.floored
    return TopkKl(kl_hat=kl, p_rest=p_rest, q_rest=q_rest, n_shared=n_shared, floored=floored)


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
