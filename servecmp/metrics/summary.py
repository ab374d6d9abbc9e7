"""Assemble every MCQ comparison metric into one JSON-ready dict (layout: see `servecmp.metrics`)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from servecmp.metrics import kl as kl_mod
from servecmp.metrics import mcq
from servecmp.metrics.kl_report import NextTokenReport, TopTokenProbs, kl_report, top_token_probs
from servecmp.metrics.stats import (
    DEFAULT_CONFIDENCE,
    DEFAULT_N_BOOT,
    Distribution,
    Estimate,
    FloatArray,
    bootstrap_mean_ci,
    correlation,
    distribution_with_ci,
    joint_bootstrap_means,
)

#: What `servecmp.metrics` re-exports from this module (its public API).
__all__ = ["SCHEMA", "SCHEMA_VERSION", "jsonable", "summarize_mcq"]

#: Identifies the layout of the dict `summarize_mcq` returns; bump both when a key changes meaning.
#: Version 2 added `version` and the typed `run` section (`servecmp.mcq.summary.McqSummary`).
#: Version 3 added KL(candidate ‖ baseline) and Jensen-Shannon (``option_kl_cb``, ``option_js``, and in
#: ``topk_kl`` the bounds ``kl_cb_hat``/``js_hat`` and the ``tight`` estimate) and llama.cpp's
#: KL-divergence block over the next-token distributions (``next_token_report``).
SCHEMA = "servecmp.mcq_summary/3"
SCHEMA_VERSION = 3


def summarize_mcq(
    base_lp: npt.ArrayLike,
    cand_lp: npt.ArrayLike,
    gold: npt.ArrayLike,
    *,
    option_lengths: npt.ArrayLike | None = None,
    base_topk: Sequence[Mapping[str, float] | None] | None = None,
    cand_topk: Sequence[Mapping[str, float] | None] | None = None,
    groups: Mapping[str, Sequence[str | None]] | None = None,
    seed: int = 0,
    n_boot: int = DEFAULT_N_BOOT,
    confidence: float = DEFAULT_CONFIDENCE,
    margin_edges: Sequence[float] = mcq.DEFAULT_MARGIN_EDGES,
) -> dict[str, Any]:
    """Compare a baseline and a candidate on ``n`` multiple-choice items.

    ``base_lp``/``cand_lp``: ``(n, k)`` option logprobs (``-inf`` for a missing option);
    ``gold``: ``(n,)`` correct option indices; ``option_lengths``: ``(n, k)`` or ``(k,)`` option
    lengths in characters, enabling the ``acc_norm`` section; ``base_topk``/``cand_topk``: per item
    ``{token: logprob}`` at the answer position (or ``None``), enabling the ``topk_kl`` section;
    ``groups``: per grouping name (e.g. ``"subject"``), one label per item.

    Returns plain dicts/lists/floats/ints/strings/None (no numpy types, no NaN), laid out as the
    `servecmp.metrics` docstring describes. ValueError on empty or inconsistent input.
    """
    base = mcq.as_logprob_matrix(base_lp, "base_lp")
    cand = mcq.as_logprob_matrix(cand_lp, "cand_lp")
    g = np.asarray(gold)
    n, k = base.shape
    if n == 0:
        raise ValueError("no items to summarise")
    if cand.shape != base.shape:
        raise ValueError(f"base_lp and cand_lp differ in shape: {base.shape} vs {cand.shape}")
    if g.shape != (n,) or not np.issubdtype(g.dtype, np.integer) or g.min() < 0 or g.max() >= k:
        raise ValueError(f"gold must be {n} integer indices in [0, {k})")
    kw: dict[str, Any] = {"confidence": confidence, "n_boot": n_boot, "seed": seed}

    base_choice, cand_choice = mcq.chosen_options(base), mcq.chosen_options(cand)
    changed = mcq.changed_answers(base_choice, cand_choice)
    base_ok, cand_ok = mcq.correct(base_choice, g), mcq.correct(cand_choice, g)
    okl = mcq.option_kl(base, cand)
    # The other direction and JS over the same renormalised options (KL(b‖c) stays `okl`, the headline).
    odiv = kl_mod.divergences(base, cand, floor=mcq.PROB_FLOOR)
    margin = mcq.top_margin(base)

    norm: tuple[mcq.IntArray, mcq.IntArray] | None = None
    if option_lengths is not None:
        bn = mcq.length_normalised_choices(base, option_lengths)
        cn = mcq.length_normalised_choices(cand, option_lengths)
        norm = (bn, cn)
    tk: kl_mod.TopkKl | None = None
    tight: kl_mod.TopkTight | None = None
    top: TopTokenProbs | None = None
    if base_topk is not None and cand_topk is not None:
        if len(base_topk) != n or len(cand_topk) != n:
            raise ValueError(f"top-k lists must have one entry per item ({n})")
        tk = kl_mod.topk_kl(base_topk, cand_topk)
        tight = kl_mod.topk_kl_tight(base_topk, cand_topk)
        top = top_token_probs(base_topk, cand_topk)

    # Every per-item mean is bootstrapped from one shared resampling (see `_mean_cis`).
    columns: dict[str, FloatArray] = {
        "acc_b": base_ok.astype(float), "acc_c": cand_ok.astype(float), "option_kl": okl.kl,
        "option_kl_cb": odiv.kl_cb, "option_js": odiv.js,
    }
    differences = {"acc_d": ("acc_b", "acc_c")}
    if norm is not None:
        columns["norm_b"] = mcq.correct(norm[0], g).astype(float)
        columns["norm_c"] = mcq.correct(norm[1], g).astype(float)
        differences["norm_d"] = ("norm_b", "norm_c")
    if tk is not None and tight is not None:
        assert tk.kl_cb_hat is not None and tk.js_hat is not None
        columns.update(topk_kl=tk.kl_hat, topk_rest=tk.p_rest, topk_kl_cb=tk.kl_cb_hat, topk_js=tk.js_hat,
                       tight_kl_bc=tight.kl_bc, tight_kl_cb=tight.kl_cb, tight_js=tight.js)
    ci = _mean_cis(columns, differences, kw)

    out: dict[str, Any] = {
        "schema": SCHEMA,
        "version": SCHEMA_VERSION,
        "settings": {"confidence": confidence, "n_boot": n_boot, "seed": seed, "kl_units": "nats",
                     "prob_floor": mcq.PROB_FLOOR, "margin_edges": list(margin_edges)},
        "n_items": n,
        "n_options": k,
        "no_answer": {"baseline": int(np.count_nonzero(base_choice == mcq.NO_ANSWER)),
                      "candidate": int(np.count_nonzero(cand_choice == mcq.NO_ANSWER))},
        **_choice_metrics(base_ok, cand_ok, base_choice, cand_choice, ci, "acc", confidence),
        "acc_norm": None,
        "option_kl": {**dataclasses.asdict(_distribution(okl.kl, ci["option_kl"])),
                      "n_floored": int(np.count_nonzero(okl.floored))},
        "option_kl_cb": {**dataclasses.asdict(_distribution(odiv.kl_cb, ci["option_kl_cb"])),
                         "n_floored": int(np.count_nonzero(odiv.floored_cb))},
        "option_js": _distribution(odiv.js, ci["option_js"]),
        "topk_kl": None,
        "next_token_report": None,
    }
    if norm is not None:
        bn, cn = norm
        out["acc_norm"] = _choice_metrics(mcq.correct(bn, g), mcq.correct(cn, g), bn, cn, ci, "norm",
                                          confidence)
    if tk is not None and tight is not None and top is not None:
        out["topk_kl"] = _topk_section(tk, tight, ci)
        out["next_token_report"] = _next_token_report(tight, top)

    has_margin = np.isfinite(margin)
    out["top_margin"] = {
        "n": int(np.count_nonzero(has_margin)),
        "by_baseline_correctness": mcq.margin_by_correctness(margin, base_ok, **kw),
        "change_by_bucket": mcq.change_by_margin(margin, changed, margin_edges, confidence=confidence),
        "margin_change_correlation": correlation(margin[has_margin], changed[has_margin].astype(float)),
    }
    topk_values = tk.kl_hat if tk is not None else None
    out["groups"] = {
        name: mcq.group_breakdown(labels, base_ok, cand_ok, changed, okl.kl, topk_values)
        for name, labels in (groups or {}).items()
    }
    result = jsonable(out)
    assert isinstance(result, dict)
    return result


def _mean_cis(columns: Mapping[str, FloatArray], differences: Mapping[str, tuple[str, str]],
              kw: dict[str, Any]) -> dict[str, Estimate]:
    """Mean with bootstrap CI of each per-item column (NaN entries left out) and of each named
    difference ``mean(b) - mean(a)`` of two NaN-free columns.

    NaN-free columns share one paired resampling (`joint_bootstrap_means`): one draw of indices
    instead of one per column, and per column the same interval a separate `bootstrap_mean_ci`
    call with the same seed gives. Columns with NaN are bootstrapped over their finite entries.
    """
    # A column equal to an earlier one (acc_norm choices equal to acc choices, as on letter tasks
    # whose options all have the same length) reuses that column's interval.
    twin: dict[str, str] = {}
    unique: list[str] = []
    for name, x in columns.items():
        match = next((u for u in unique if np.array_equal(columns[u], x, equal_nan=True)), None)
        if match is None:
            unique.append(name)
        twin[name] = match or name
    full = [name for name in unique if np.all(np.isfinite(columns[name]))]
    diff_pairs: dict[tuple[int, int], list[str]] = {}
    for name, (a, b) in differences.items():
        diff_pairs.setdefault((full.index(twin[a]), full.index(twin[b])), []).append(name)
    estimates = joint_bootstrap_means([columns[name] for name in full], differences=list(diff_pairs), **kw)
    out = dict(zip(full, estimates[: len(full)], strict=True))
    for names, est in zip(diff_pairs.values(), estimates[len(full):], strict=True):
        out.update(dict.fromkeys(names, est))
    for name in unique:
        if name not in out:
            x = columns[name]
            out[name] = bootstrap_mean_ci(x[np.isfinite(x)], **kw)
    out.update({name: out[twin[name]] for name in columns})
    return out


def _choice_metrics(base_ok: mcq.BoolArray, cand_ok: mcq.BoolArray, base_choice: mcq.IntArray,
                    cand_choice: mcq.IntArray, ci: Mapping[str, Estimate], prefix: str,
                    confidence: float) -> dict[str, Any]:
    return {
        "accuracy": {"baseline": ci[f"{prefix}_b"], "candidate": ci[f"{prefix}_c"],
                     "diff": ci[f"{prefix}_d"]},
        "flips": mcq.flips(base_ok, cand_ok, confidence=confidence),
        "answer_changes": mcq.answer_changes(base_choice, cand_choice, confidence=confidence),
    }


def _distribution(values: FloatArray, mean_ci: Estimate) -> Distribution:
    return distribution_with_ci(values[np.isfinite(values)], mean_ci)


def _topk_section(tk: kl_mod.TopkKl, tight: kl_mod.TopkTight, ci: Mapping[str, Estimate]) -> dict[str, Any]:
    ok = tk.available
    shared = tk.n_shared[ok]
    assert tk.kl_cb_hat is not None and tk.js_hat is not None
    t_ok = tight.available
    return {
        "n": int(np.count_nonzero(ok)),
        "kl_hat": _distribution(tk.kl_hat, ci["topk_kl"]),
        "unresolved_baseline_mass": _distribution(tk.p_rest, ci["topk_rest"]),
        "n_exact": int(np.count_nonzero(ok & (tk.p_rest == 0) & (tk.q_rest == 0))),
        "n_floored": int(np.count_nonzero(tk.floored)),
        "shared_tokens": {"mean": float(shared.mean()) if shared.size else None,
                          "min": int(shared.min()) if shared.size else None},
        "estimator": "lower bound: KL over the tokens in both top-k lists plus one rest bucket",
        "kl_cb_hat": _distribution(tk.kl_cb_hat, ci["topk_kl_cb"]),
        "js_hat": _distribution(tk.js_hat, ci["topk_js"]),
        "tight": {
            "n": int(np.count_nonzero(t_ok)),
            "kl_bc": _distribution(tight.kl_bc, ci["tight_kl_bc"]),
            "kl_cb": _distribution(tight.kl_cb, ci["tight_kl_cb"]),
            "js": _distribution(tight.js, ci["tight_js"]),
            # Items where a token shown by one list only had its other side imputed.
            "n_imputed": int(np.count_nonzero(t_ok & ((tight.n_imputed_base > 0) | (tight.n_imputed_cand > 0)))),
            "n_floored": int(np.count_nonzero(tight.floored)),
            # How much of the mean KL(b‖c) estimate is the extrapolated tail term (the rest is observed).
            "tail_share": _share(tight.tail[t_ok], tight.kl_bc[t_ok]),
            "estimator": TIGHT_ESTIMATOR,
        },
    }


#: How the tight estimate is made (stored in the summary so a reader knows what the number is).
TIGHT_ESTIMATOR = ("estimate: every token either top-k list shows is its own cell; the side whose list "
                   "does not show it gets that list's smallest probability, capped at an equal share of "
                   "its unlisted mass; one rest cell for the tokens neither list shows, plus a tail term "
                   "p_R * s^2 / 2 (s^2: variance of the log-ratios of the shared tokens)")


def _share(part: FloatArray, whole: FloatArray) -> float | None:
    total = float(whole.sum())
    return float(part.sum()) / total if total > 0 else None


def _next_token_report(tight: kl_mod.TopkTight, top: TopTokenProbs) -> NextTokenReport:
    """llama.cpp's KL-divergence block over the items' answer positions (`servecmp.metrics.kl_report`)."""
    rep = kl_report(tight.kl_bc, top.p_base, top.p_cand, top.same_top)
    ok = np.isfinite(tight.kl_bc) & np.isfinite(top.p_cand)
    return NextTokenReport(**{f.name: getattr(rep, f.name) for f in dataclasses.fields(rep)},
                           kld_source="tight top-k estimate of KL(baseline ‖ candidate) at the answer position",
                           dp_token="the baseline's most likely token",
                           n_dp_imputed=int(np.count_nonzero(top.imputed & ok)))


def jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON data: dataclasses and mappings become dicts, sequences and arrays
    lists, numpy scalars Python numbers, and NaN/infinite floats ``None``."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(key): jsonable(v) for key, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return [jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if obj is None or isinstance(obj, str):
        return obj
    raise TypeError(f"cannot represent {type(obj).__name__} as JSON")
