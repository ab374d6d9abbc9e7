"""servecmp.metrics.kl_report (llama.cpp's KL-divergence block) and its place in the MCQ summary and report."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from servecmp.errors import UserError
from servecmp.metrics.kl_report import (
    DP_PERCENTILES,
    KLD_PERCENTILES,
    kl_report,
    llama_cpp_text,
    mean_and_error,
    top_token,
    top_token_probs,
)
from servecmp.metrics.summary import summarize_mcq


def test_block_by_hand() -> None:
    # KLD = .1 .2 .3 .4: mean .25; mean(x²) = .075, population variance .0125, error sqrt(.0125/3) = 0.0645497224.
    # Percentiles at fraction·(n-1), linearly: 99.9% -> 2.997 -> .3997; 90% -> 2.7 -> .37; 10% -> .3 -> .13;
    # 5% -> .15 -> .115; 1% -> .03 -> .103; 0.1% -> .003 -> .1003; median .25.
    # Δp = p_cand - p_base = .1, -.1, 0, .2: mean .05, mean(Δp²) = .015, error sqrt((.015 - .0025)/3) = 0.0645497224;
    # RMS = sqrt(.015) = 0.1224744871; Δp² = .01 .01 0 .04 has mean .015, mean of squares .00045, so
    # SE(Δp²) = sqrt((.00045 - .000225)/3) = 0.0086602540 and the RMS error .5/0.1224744871·that = 0.0353553391.
    # 75% -> 2.25 -> .1 + .25·.1 = .125; 25% -> .75 -> -.1 + .75·.1 = -.025.
    # Same top: 3 of 4 = .75 ± sqrt(.75·.25/3) = .25.
    r = kl_report([0.1, 0.2, 0.3, 0.4], [0.5] * 4, [0.6, 0.4, 0.5, 0.7], [True, True, False, True])
    assert r.n == 4
    assert (r.kld_mean.value, r.kld_mean.error) == pytest.approx((0.25, 0.0645497224), abs=1e-10)
    kp = r.kld_percentiles
    assert [kp[k] for k in ("max", "p99_9", "p99", "p95", "p90", "median", "p10", "p5", "p1", "p0_1", "min")] == \
        pytest.approx([0.4, 0.3997, 0.397, 0.385, 0.37, 0.25, 0.13, 0.115, 0.103, 0.1003, 0.1], abs=1e-12)
    assert (r.dp_mean.value, r.dp_mean.error) == pytest.approx((0.05, 0.0645497224), abs=1e-10)
    assert (r.dp_rms.value, r.dp_rms.error) == pytest.approx((0.1224744871, 0.0353553391), abs=1e-10)
    dp = r.dp_percentiles
    assert (dp["max"], dp["p75"], dp["median"], dp["p25"], dp["min"]) == \
        pytest.approx((0.2, 0.125, 0.05, -0.025, -0.1), abs=1e-12)
    assert r.same_top_count == 3
    assert (r.same_top.value, r.same_top.error) == pytest.approx((0.75, 0.25), abs=1e-12)


def _llama_cpp_reference(kld: np.ndarray, dp: np.ndarray, same: np.ndarray) -> dict[str, float]:
    """llama.cpp's accumulate-then-finish arithmetic (tools/perplexity/perplexity.cpp, kl_divergence()):
    running sums of x, x², Δp, Δp², Δp⁴ and a same-top count, then mean_and_uncertainty and its percentile."""
    count = len(kld)

    def mean_unc(s: float, s2: float) -> tuple[float, float]:
        f = s / count
        df = s2 / count - f * f
        return f, math.sqrt(df / (count - 1))

    def percentile(values: np.ndarray, fraction: float) -> float:
        v = sorted(values.tolist())
        p = fraction * (len(v) - 1)
        ip = int(p)
        p -= ip
        return (1 - p) * v[ip] + p * v[min(ip + 1, len(v) - 1)]

    kl_m, kl_e = mean_unc(float(kld.sum()), float((kld**2).sum()))
    dp_m, dp_e = mean_unc(float(dp.sum()), float((dp**2).sum()))
    mse, mse_e = mean_unc(float((dp**2).sum()), float((dp**4).sum()))
    p_top = float(same.sum()) / count
    return {"kl_m": kl_m, "kl_e": kl_e, "kl_p99": percentile(kld, 0.99), "kl_p5": percentile(kld, 0.05),
            "dp_m": dp_m, "dp_e": dp_e, "dp_p90": percentile(dp, 0.9), "rms": math.sqrt(mse),
            "rms_e": 0.5 / math.sqrt(mse) * mse_e, "top": p_top, "top_e": math.sqrt(p_top * (1 - p_top) / (count - 1))}


def test_block_matches_llama_cpp_arithmetic_on_random_positions() -> None:
    rng = np.random.default_rng(1)
    n = 1000
    kld = rng.exponential(0.02, n)
    pb = rng.uniform(0.2, 1.0, n)
    pc = np.clip(pb + rng.normal(0, 0.03, n), 0, 1)
    same = rng.uniform(size=n) < 0.93
    r = kl_report(kld, pb, pc, same)
    ref = _llama_cpp_reference(kld, pc - pb, same)
    got = {"kl_m": r.kld_mean.value, "kl_e": r.kld_mean.error, "kl_p99": r.kld_percentiles["p99"],
           "kl_p5": r.kld_percentiles["p5"], "dp_m": r.dp_mean.value, "dp_e": r.dp_mean.error,
           "dp_p90": r.dp_percentiles["p90"], "rms": r.dp_rms.value, "rms_e": r.dp_rms.error,
           "top": r.same_top.value, "top_e": r.same_top.error}
    assert got == pytest.approx(ref, rel=1e-9)


def test_nan_positions_drop_and_small_n_gives_no_error() -> None:
    r = kl_report([0.1, np.nan, 0.3], [0.5, 0.5, 0.5], [0.5, 0.5, np.nan], [True, False, True])
    assert r.n == 1 and r.kld_mean.value == pytest.approx(0.1) and r.kld_mean.error is None
    assert r.same_top.error is None and r.dp_rms.value == 0.0 and r.dp_rms.error is None
    empty = kl_report([], [], [], [])
    assert empty.n == 0 and empty.kld_mean.value is None and empty.kld_percentiles["max"] is None
    me = mean_and_error([2.0, 4.0])  # population variance 1 -> error sqrt(1/1)
    assert (me.value, me.error) == pytest.approx((3.0, 1.0))
    with pytest.raises(ValueError):
        kl_report([0.1], [0.5, 0.5], [0.5], [True])


def test_text_uses_llama_cpp_labels_and_formats() -> None:
    r = kl_report([0.1, 0.2, 0.3, 0.4], [0.5] * 4, [0.6, 0.4, 0.5, 0.7], [True, True, False, True])
    text = llama_cpp_text(r).splitlines()
    assert text[0] == "====== KL divergence statistics ======"
    assert text[1] == "Mean    KLD:   0.250000 ±   0.064550"
    assert text[2] == "Maximum KLD:   0.400000"
    assert text[3] == "99.9%   KLD:   0.399700"
    assert "Median  KLD:   0.250000" in text and " 0.1%   KLD:   0.100300" in text
    assert "Mean    Δp:  5.000 ± 6.455 %" in text
    assert "Maximum Δp: 20.000%" in text and "Minimum Δp: -10.000%" in text
    assert "RMS Δp    : 12.247 ± 3.536 %" in text
    assert text[-1] == "Same top p: 75.000 ± 25.000 %"
    assert len(KLD_PERCENTILES) == 11 and len(DP_PERCENTILES) == 13


def test_top_token_probs_reads_or_imputes_the_candidate_side() -> None:
    # Item 0: baseline top "a" (.5); candidate shows it at .4, its own top is "b": not the same top.
    # Item 1: baseline top "a" (.5) is not in the candidate's list {b .6, c .2}: u_q = .2, smallest .2,
    #   one missing token -> min(.2, .2/2) = .1 (complete_topk's rule).
    # Item 2: missing top-k -> NaN.
    base = [{"a": math.log(0.5), "b": math.log(0.3)}, {"a": math.log(0.5), "b": math.log(0.3)}, None]
    cand = [{"b": math.log(0.45), "a": math.log(0.4)}, {"b": math.log(0.6), "c": math.log(0.2)}, {"a": 0.0}]
    t = top_token_probs(base, cand)
    assert t.p_base[:2] == pytest.approx([0.5, 0.5])
    assert t.p_cand[:2] == pytest.approx([0.4, 0.1])
    assert t.same_top.tolist() == [False, False, False] and t.imputed.tolist() == [False, True, False]
    assert np.isnan(t.p_base[2]) and np.isnan(t.p_cand[2])
    assert top_token({"x": -1.0, "y": -1.0, "z": -2.0}) == "x"  # ties: the first listed


def _two_item_summary() -> dict[str, object]:
    # Options: item 0 P = [.8, .2], Q = [.6, .4] (KL(c‖b) 0.1046496287, JS 0.0241572568, hand values in
    # test_metrics_kl); item 1 identical -> 0. Top-k: the same two distributions over tokens " A", " B".
    base = np.log([[0.8, 0.2], [0.5, 0.5]])
    cand = np.log([[0.6, 0.4], [0.5, 0.5]])
    btk = [{" A": math.log(0.8), " B": math.log(0.2)}, {" A": math.log(0.5), " B": math.log(0.5)}]
    ctk = [{" A": math.log(0.6), " B": math.log(0.4)}, {" A": math.log(0.5), " B": math.log(0.5)}]
    return summarize_mcq(base, cand, np.array([0, 1]), base_topk=btk, cand_topk=ctk, n_boot=200)


def test_summary_carries_both_directions_js_and_the_block() -> None:
    s = _two_item_summary()
    assert (s["schema"], s["version"]) == ("servecmp.mcq_summary/3", 3)
    assert s["option_kl"]["mean"] == pytest.approx(0.0915162218 / 2, abs=1e-10)
    assert s["option_kl_cb"]["mean"] == pytest.approx(0.1046496287 / 2, abs=1e-10)
    assert s["option_js"]["mean"] == pytest.approx(0.0241572568 / 2, abs=1e-10)
    tk = s["topk_kl"]
    # Full lists: bound, tight and the options agree.
    assert tk["kl_hat"]["mean"] == pytest.approx(0.0915162218 / 2, abs=1e-10)
    assert tk["kl_cb_hat"]["mean"] == pytest.approx(0.1046496287 / 2, abs=1e-10)
    assert tk["js_hat"]["mean"] == pytest.approx(0.0241572568 / 2, abs=1e-10)
    assert tk["tight"]["kl_bc"]["mean"] == pytest.approx(0.0915162218 / 2, abs=1e-10)
    assert tk["tight"]["kl_cb"]["max"] == pytest.approx(0.1046496287, abs=1e-10)
    assert tk["tight"]["n_imputed"] == 0 and tk["tight"]["tail_share"] == 0.0  # full lists: no tail
    r = s["next_token_report"]
    # Δp of the baseline's top token " A": item 0 .6 - .8 = -.2, item 1 0 -> mean -.1; population variance
    # .02 - .01 = .01, error sqrt(.01/1) = .1. Same top: both items (" A" ties " B" on item 1; first listed).
    assert r["n"] == 2 and r["same_top_count"] == 2
    assert (r["dp_mean"]["value"], r["dp_mean"]["error"]) == pytest.approx((-0.1, 0.1), abs=1e-12)
    assert r["kld_mean"]["value"] == pytest.approx(0.0915162218 / 2, abs=1e-10)
    assert r["kld_percentiles"]["max"] == pytest.approx(0.0915162218, abs=1e-10)
    assert r["n_dp_imputed"] == 0 and "baseline" in r["dp_token"]


def test_typed_summary_reads_version_2_files_and_renders_the_block(tmp_path: Path) -> None:
    from servecmp.mcq import summary as typed
    from servecmp.mcq.render import render_mcq_report

    run = typed.RunInfo(task="mmlu", source="a test")
    plain = _two_item_summary()
    s = typed.McqSummary.model_validate({**plain, "pairing": {
        "paired": 2, "unpaired_baseline": 0, "unpaired_candidate": 0, "duplicates_baseline": 0,
        "duplicates_candidate": 0, "stored_choice_mismatch": {"baseline": 0, "candidate": 0}},
        "tasks": ["mmlu"], "run": run.model_dump()})
    out = io.StringIO()
    render_mcq_report(s, Console(file=out, width=200, color_system=None))
    text = out.getvalue()
    for label in ("Mean    KLD", "Maximum KLD", "99.9%   KLD", "Median  KLD", " 0.1%   KLD", "Minimum KLD",
                  "Mean    Δp", "RMS Δp", "Same top p", "answer options KL(c ‖ b)", "answer options JS",
                  "next token KL(b ‖ c) bound"):
        assert label in text, label
    assert "-10.000 ± 10.000 %" in text            # Mean Δp, hand value above
    assert "100.000 ± 0.000 %  (2/2)" in text       # Same top p

    # A version 2 file (written before this layout): loads, new fields None, and still renders.
    v2 = s.model_dump(mode="json")
    v2.update(schema="servecmp.mcq_summary/2", version=2)
    for key in ("option_kl_cb", "option_js", "next_token_report"):
        del v2[key]
    for key in ("kl_cb_hat", "js_hat", "tight"):
        del v2["topk_kl"][key]
    (tmp_path / "summary.json").write_text(json.dumps(v2))
    old = typed.load_summary(tmp_path)
    assert old.version == 2 and old.option_js is None and old.next_token_report is None
    assert old.topk_kl is not None and old.topk_kl.tight is None
    out = io.StringIO()
    render_mcq_report(old, Console(file=out, width=200, color_system=None))
    assert "Same top p" not in out.getvalue() and "answer options KL(b ‖ c)" in out.getvalue()

    # A version 3 file without the fields version 3 always has is damaged, not old.
    broken = s.model_dump(mode="json")
    del broken["option_js"]
    (tmp_path / "summary.json").write_text(json.dumps(broken))
    with pytest.raises(UserError, match="needs option_kl_cb and option_js"):
        typed.load_summary(tmp_path)
