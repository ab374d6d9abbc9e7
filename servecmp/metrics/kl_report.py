"""llama.cpp's KL-divergence report (``llama-perplexity --kl-divergence``) over per-position arrays.

The quantization community compares a quantized model with its base by the block llama.cpp's
``perplexity`` tool prints; `kl_report` computes the same statistics, and `llama_cpp_text` prints
them with llama.cpp's labels and number formats, so the two reports can be put side by side::

    ====== KL divergence statistics ======
    Mean    KLD:   0.017475 ±   0.000763
    Maximum KLD:  11.152802
    99.9%   KLD:   1.098822
    ...
    ====== Token probability statistics ======
    Mean    Δp: -0.523 ± 0.053 %
    ...
    RMS Δp    :  3.402 ± 0.101 %
    Same top p: 93.281 ± 0.161 %

Inputs are one entry per position (an MCQ item's answer position, or one teacher-forced token of a
shadow response): the KL(base ‖ quantized) at that position, the probability the base and the
quantized model give the position's token, and whether their most likely tokens agree. Each
statistic is computed as llama.cpp's ``kl_divergence()`` computes it (tools/perplexity/perplexity.cpp):

- "Mean KLD" and "Mean Δp": the mean ± its standard error, ``sqrt((mean(x²) − mean(x)²)/(n − 1))``
  (equal to the sample standard deviation over √n);
- percentiles: linear interpolation at ``fraction · (n − 1)`` of the sorted values (numpy's default,
  which is what llama.cpp's ``percentile`` lambda does); "Median" is the usual median;
- "RMS Δp": ``sqrt(mean(Δp²))``, its error ``SE(Δp²) / (2 · RMS)`` (first-order propagation);
- "Same top p": the share of positions whose argmax agrees, error ``sqrt(p(1 − p)/(n − 1))``.

Δp at a position is ``p_quantized(token) − p_base(token)``. In llama.cpp the token is the one the
evaluated text continues with. Callers pick it: shadow's teacher-forced positions pass the
primary's answer token (the text, as in llama.cpp); an MCQ item has no continuation text, so the
MCQ summary passes the baseline's most likely token (under greedy decoding that is the token the
baseline would write; see `top_token_probs`).

Departures from llama.cpp, on purpose: llama.cpp reports an error of 0 below 11 positions and prints
no block below 100; here errors are given from n = 2 (None below, and for RMS when it is 0) and the
caller shows n beside every number. Errors are one standard error (llama.cpp's ±), not the 95%
intervals of the rest of servecmp's report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from servecmp.metrics.kl import complete_topk
from servecmp.metrics.stats import FloatArray

#: What `servecmp.metrics` re-exports from this module (its public API).
__all__ = [
    "KlReport", "MeanError", "TopTokenProbs", "kl_report", "llama_cpp_text", "mean_and_error", "top_token",
    "top_token_probs",
]

#: KLD percentiles llama.cpp prints, as (key, fraction, label), top to bottom.
KLD_PERCENTILES: tuple[tuple[str, float, str], ...] = (
    ("max", 1.0, "Maximum KLD"),
    ("p99_9", 0.999, "99.9%   KLD"),
    ("p99", 0.99, "99.0%   KLD"),
    ("p95", 0.95, "95.0%   KLD"),
    ("p90", 0.90, "90.0%   KLD"),
    ("median", 0.5, "Median  KLD"),
    ("p10", 0.10, "10.0%   KLD"),
    ("p5", 0.05, " 5.0%   KLD"),
    ("p1", 0.01, " 1.0%   KLD"),
    ("p0_1", 0.001, " 0.1%   KLD"),
    ("min", 0.0, "Minimum KLD"),
)
#: Δp percentiles llama.cpp prints (it adds the quartiles to the KLD list).
DP_PERCENTILES: tuple[tuple[str, float, str], ...] = (
    ("max", 1.0, "Maximum Δp"),
    ("p99_9", 0.999, "99.9%   Δp"),
    ("p99", 0.99, "99.0%   Δp"),
    ("p95", 0.95, "95.0%   Δp"),
    ("p90", 0.90, "90.0%   Δp"),
    ("p75", 0.75, "75.0%   Δp"),
    ("median", 0.5, "Median  Δp"),
    ("p25", 0.25, "25.0%   Δp"),
    ("p10", 0.10, "10.0%   Δp"),
    ("p5", 0.05, " 5.0%   Δp"),
    ("p1", 0.01, " 1.0%   Δp"),
    ("p0_1", 0.001, " 0.1%   Δp"),
    ("min", 0.0, "Minimum Δp"),
)


@dataclass(frozen=True)
class MeanError:
    """A mean and its standard error (llama.cpp's "value ± error"); None when undefined."""

    value: float | None
    error: float | None


@dataclass(frozen=True)
class KlReport:
    """llama.cpp's KL-divergence statistics over ``n`` positions (see the module docstring).

    Percentile dicts are keyed as in `KLD_PERCENTILES` / `DP_PERCENTILES` (``max``, ``p99_9``, ...,
    ``median``, ..., ``min``). Δp values are probabilities (fractions), not percent.
    """

    n: int
    #: "Mean    KLD"
    kld_mean: MeanError
    kld_percentiles: dict[str, float | None]
    #: "Mean    Δp"
    dp_mean: MeanError
    dp_percentiles: dict[str, float | None]
    #: "RMS Δp"
    dp_rms: MeanError
    #: "Same top p": positions whose most likely token agrees, of `n`.
    same_top_count: int
    same_top: MeanError


@dataclass(frozen=True)
class NextTokenReport(KlReport):
    """`KlReport` over a run's answer positions, saying what its per-item KLD is and which token
    its Δp is about (the MCQ summary's ``next_token_report``)."""

    kld_source: str
    dp_token: str
    #: Items whose candidate probability of that token was imputed (not in its top-k list).
    n_dp_imputed: int


def mean_and_error(x: npt.ArrayLike) -> MeanError:
    """Mean ± standard error as llama.cpp's ``mean_and_uncertainty``: sqrt(population variance /
    (n − 1)); the error is None for n < 2 and the mean None for n = 0."""
    a = np.asarray(x, dtype=np.float64)
    n = a.size
    if n == 0:
        return MeanError(None, None)
    mean = float(a.mean())
    if n < 2:
        return MeanError(mean, None)
    var = float(np.mean(a * a) - mean * mean)
    return MeanError(mean, math.sqrt(max(var, 0.0) / (n - 1)))


def _percentiles(x: FloatArray, table: tuple[tuple[str, float, str], ...]) -> dict[str, float | None]:
    if x.size == 0:
        return {key: None for key, _, _ in table}
    return {key: float(np.median(x)) if key == "median" else float(np.quantile(x, frac))
            for key, frac, _ in table}


def kl_report(kld: npt.ArrayLike, p_base: npt.ArrayLike, p_cand: npt.ArrayLike,
              same_top: npt.ArrayLike) -> KlReport:
    """llama.cpp's statistics over positions with a defined KL (NaN entries of any input drop the
    position).

    ``kld``: KL(base ‖ candidate) per position, nats; ``p_base``/``p_cand``: the probability each
    model gives the position's token (Δp = p_cand − p_base); ``same_top``: whether the two most
    likely tokens agree.
    """
    k = np.asarray(kld, dtype=np.float64)
    pb = np.asarray(p_base, dtype=np.float64)
    pc = np.asarray(p_cand, dtype=np.float64)
    st = np.asarray(same_top, dtype=bool)
    if not (k.shape == pb.shape == pc.shape == st.shape) or k.ndim != 1:
        raise ValueError(f"per-position arrays must be 1-D of equal length, got {k.shape}, {pb.shape}, "
                         f"{pc.shape}, {st.shape}")
    ok = np.isfinite(k) & np.isfinite(pb) & np.isfinite(pc)
    k, dp, st = k[ok], (pc - pb)[ok], st[ok]
    n = int(k.size)
    mse = mean_and_error(dp * dp)
    if mse.value is None:
        rms = MeanError(None, None)
    else:
        r = math.sqrt(mse.value)
        rms = MeanError(r, None if mse.error is None or r == 0.0 else 0.5 / r * mse.error)
    same = int(np.count_nonzero(st))
    if n == 0:
        same_top_est = MeanError(None, None)
    else:
        rate = same / n
        same_top_est = MeanError(rate, math.sqrt(rate * (1 - rate) / (n - 1)) if n > 1 else None)
    return KlReport(n=n, kld_mean=mean_and_error(k), kld_percentiles=_percentiles(k, KLD_PERCENTILES),
                    dp_mean=mean_and_error(dp), dp_percentiles=_percentiles(dp, DP_PERCENTILES),
                    dp_rms=rms, same_top_count=same, same_top=same_top_est)


@dataclass(frozen=True)
class TopTokenProbs:
    """Per item: the baseline's most likely token's probability under each side, and top-1 agreement."""

    p_base: FloatArray
    p_cand: FloatArray
    same_top: npt.NDArray[np.bool_]
    #: The candidate's list did not show the baseline's top token: ``p_cand`` is imputed (`complete_topk`'s
    #: rule: the candidate list's smallest probability, capped), so that item's Δp is an estimate.
    imputed: npt.NDArray[np.bool_]


def top_token(d: Mapping[str, float]) -> str:
    """The most likely token of a top-k list."""
    # The highest logprob; ties go to the first listed (servers list the most likely first).
    best = next(iter(d))
    for t, v in d.items():
        if v > d[best]:
            best = t
    return best


def top_token_probs(base_topk: Sequence[Mapping[str, float] | None],
                    cand_topk: Sequence[Mapping[str, float] | None]) -> TopTokenProbs:
    """Δp inputs for the MCQ answer position from the two top-k lists (NaN where either is missing).

    The token is the baseline's most likely one; its candidate probability is read from the
    candidate's list, or imputed when the list does not show it (flagged in ``imputed``). Top-1
    agreement is exact: each list always shows its own most likely token.
    """
    if len(base_topk) != len(cand_topk):
        raise ValueError(f"top-k lists differ in length: {len(base_topk)} vs {len(cand_topk)}")
    n = len(base_topk)
    pb, pc = np.full(n, np.nan), np.full(n, np.nan)
    same, imputed = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    for i, (p, q) in enumerate(zip(base_topk, cand_topk, strict=True)):
        if not p or not q:
            continue
        tok = top_token(p)
        pb[i] = math.exp(p[tok])
        same[i] = top_token(q) == tok
        if tok in q:
            pc[i] = math.exp(q[tok])
        else:
            c = complete_topk(p, q)
            pc[i] = math.exp(c.lq[c.tokens.index(tok)])
            imputed[i] = True
    return TopTokenProbs(p_base=pb, p_cand=pc, same_top=same, imputed=imputed)


def _fmt(x: float | None, spec: str) -> str:
    return "nan" if x is None else format(x, spec)


def llama_cpp_text(r: KlReport) -> str:
    """The report in llama.cpp's layout, labels and number formats (KLD in nats with 6 decimals,
    Δp and same-top in percent)."""
    lines = ["====== KL divergence statistics ======",
             f"Mean    KLD: {_fmt(r.kld_mean.value, '10.6f')} ± {_fmt(r.kld_mean.error, '10.6f')}"]
    lines += [f"{label}: {_fmt(r.kld_percentiles[key], '10.6f')}" for key, _, label in KLD_PERCENTILES]
    lines += ["", "====== Token probability statistics ======"]

    def pct(x: float | None) -> float | None:
        return None if x is None else 100.0 * x

    lines.append(f"Mean    Δp: {_fmt(pct(r.dp_mean.value), '6.3f')} ± {_fmt(pct(r.dp_mean.error), '5.3f')} %")
    lines += [f"{label}: {_fmt(pct(r.dp_percentiles[key]), '6.3f')}%" for key, _, label in DP_PERCENTILES]
    lines.append(f"RMS Δp    : {_fmt(pct(r.dp_rms.value), '6.3f')} ± {_fmt(pct(r.dp_rms.error), '5.3f')} %")
    lines.append(f"Same top p: {_fmt(pct(r.same_top.value), '6.3f')} ± {_fmt(pct(r.same_top.error), '5.3f')} %")
    return "\n".join(lines)
