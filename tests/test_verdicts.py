"""`servecmp.verdicts`: which summary field each gateable metric comes from, the notes, the `verdict`
JSON object, Markdown output and the gate resolution (the commands are tested in test_verdicts_cli)."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import pytest
from rich.console import Console
from scipy import stats

from servecmp.config import Config, parse_config
from servecmp.errors import UserError
from servecmp.gates import MetricEstimate, parse_gate, parse_gates
from servecmp.mcq.summary import McqSummary, summarize_lmeval
from servecmp.metrics.kl_report import MeanError, NextTokenReport
from servecmp.mtbench.report import Delta, JudgmentCounts, MtBenchSummary, PairwiseSummary, Wilcoxon
from servecmp.shadow.summary import MeanMeasure, summarise
from servecmp.verdicts import (
    emit_verdict,
    estimates_for,
    mcq_estimates,
    mtbench_estimates,
    notes_for,
    resolve_gates,
    shadow_estimates,
    verdict_for,
    verdict_json,
    wants_verdict,
    with_verdict,
    write_summary_md,
)
from tests.test_lmeval_import import FIXTURES, MMLU_NAME
from tests.test_shadow_report import HOUR, rec, rows_of, scenario


@pytest.fixture(scope="module")
def mcq() -> McqSummary:
    """4 MMLU items from lm-eval logs (no top-k): baseline chooses 1,2,1,1, candidate 0,2,1,1, gold 1,2,1,2."""
    return summarize_lmeval(FIXTURES / "baseline" / MMLU_NAME, FIXTURES / "candidate" / MMLU_NAME)


def with_baseline_accuracy(s: McqSummary, low: float, high: float) -> McqSummary:
    acc = s.accuracy.model_copy(update={"baseline": dataclasses.replace(s.accuracy.baseline, low=low, high=high)})
    return s.model_copy(update={"accuracy": acc})


def mtbench(mode: str = "both", *, pairwise: PairwiseSummary | None = None, complete: bool = True) -> MtBenchSummary:
    counts = JudgmentCounts(expected=6, ok=6, unparseable=0, out_of_range=0, errors=0, missing=0)
    return MtBenchSummary(
        judge_model="j", judge_url="http://j/v1", mode=mode, n_questions=3, complete=complete, endpoints={},
        delta=Delta(point=-1.0, low=-2.0, high=1.0, n=3),
        wilcoxon=Wilcoxon(statistic=0.0, pvalue=0.5, n=3, n_nonzero=3),
        pairwise=pairwise, single_judgments=counts, pair_judgments=None,
    )  # fmt: skip


# ---- MCQ ----------------------------------------------------------------------------------------


def test_mcq_estimates_come_from_the_summary_fields(mcq: McqSummary) -> None:
    est, missing = mcq_estimates(mcq)
    assert set(est) == {"flips", "c2w", "changes", "kl", "kl_cb", "js", "delta_acc"}
    fl = mcq.flips
    assert (fl.n, fl.flips, fl.correct_to_wrong) == (4, 1, 1)  # item 4 stays wrong; item 1 goes right → wrong
    assert est["flips"] == MetricEstimate(point=fl.rate.rate, low=fl.rate.low, high=fl.rate.high, n=4,
                                          method="wilson")
    ci = stats.binomtest(1, 4).proportion_ci(method="wilson")
    assert est["c2w"].point == 0.25 and est["c2w"].method == "wilson" and est["c2w"].n == 4
    assert (est["c2w"].low, est["c2w"].high) == pytest.approx((ci.low, ci.high))
    ch = mcq.answer_changes
    assert (est["changes"].point, est["changes"].low, est["changes"].high) == (ch.rate, ch.low, ch.high)
    kl = mcq.option_kl.mean_ci
    assert est["kl"] == MetricEstimate(point=kl.point, low=kl.low, high=kl.high, n=kl.n, method="bootstrap")
    d = mcq.accuracy.diff
    assert est["delta_acc"] == MetricEstimate(point=d.point, low=d.low, high=d.high, n=4, method="bootstrap")
    assert mcq.option_kl_cb is not None and mcq.option_js is not None
    for name, ci in (("kl_cb", mcq.option_kl_cb.mean_ci), ("js", mcq.option_js.mean_ci)):
        assert est[name] == MetricEstimate(point=ci.point, low=ci.low, high=ci.high, n=4, method="bootstrap")
    # lm-eval logs carry no top-k logprobs: both top-k metrics are missing, with the reason the verdict shows.
    assert mcq.topk_kl is None and missing == {"topk_kl": "the endpoints returned no top-k logprobs",
                                               "topk_kl_tight": "the endpoints returned no top-k logprobs",
                                               "top1_disagree": "the endpoints returned no top-k logprobs"}


def test_mcq_top1_disagreement_is_one_minus_same_top_p_over_items(mcq: McqSummary) -> None:
    # llama.cpp's block over 10 answer positions, 7 with the same most likely token.
    me = MeanError(value=None, error=None)
    report = NextTokenReport(n=10, kld_mean=me, kld_percentiles={}, dp_mean=me, dp_percentiles={}, dp_rms=me,
                             same_top_count=7, same_top=MeanError(value=0.7, error=None), kld_source="tight",
                             dp_token="baseline top", n_dp_imputed=0)
    est, missing = mcq_estimates(mcq.model_copy(update={"next_token_report": report}))
    ci = stats.binomtest(3, 10).proportion_ci(method="wilson")
    assert "top1_disagree" not in missing
    assert (est["top1_disagree"].point, est["top1_disagree"].n, est["top1_disagree"].method) == (0.3, 10, "wilson")
    assert (est["top1_disagree"].low, est["top1_disagree"].high) == pytest.approx((ci.low, ci.high))
    # The same gate name as shadow's, decided on that interval: 30% [10.8%, 60.3%].
    v = verdict_for("mcq", mcq.model_copy(update={"next_token_report": report}),
                    parse_gates(["top1_disagree<=65%", "top1_disagree<=5%", "top1_disagree<=40%"], "mcq"))
    assert [g.status for g in v.gates] == ["pass", "fail", "inconclusive"]


def test_version_2_summaries_leave_the_new_divergences_unavailable(mcq: McqSummary) -> None:
    old = mcq.model_copy(update={"option_kl_cb": None, "option_js": None})
    _, missing = mcq_estimates(old)
    assert missing["kl_cb"] == missing["js"] == "the summary predates both KL directions (version 2)"
    v = verdict_for("mcq", old, parse_gates(["js<=0.1", "kl<=10"], "mcq"))
    assert [g.status for g in v.gates] == ["unavailable", "pass"]


def test_extra_estimates_are_added_and_override(mcq: McqSummary) -> None:
    floor = MetricEstimate(point=0.01, low=-0.02, high=0.04, n=4, method="bootstrap")
    est, _ = estimates_for("mcq", mcq, extra={"flips_excess": floor})
    assert est["flips_excess"] == floor and "kl_excess" not in est
    gates = parse_gates(["flips_excess<=5%", "kl_excess<=0.01"], "mcq")
    v = verdict_for("mcq", mcq, gates, extra={"flips_excess": floor})
    assert [g.status for g in v.gates] == ["pass", "unavailable"]
    assert "noise floor" in v.gates[1].reason


def test_chance_note_only_when_the_baseline_interval_contains_chance(mcq: McqSummary) -> None:
    at = with_baseline_accuracy(mcq, 0.20, 0.30)
    assert notes_for("mcq", at) == [
        "the baseline's accuracy interval contains chance (25.0% for 4 options): flips there mostly measure "
        "noise among guesses"]
    assert notes_for("mcq", with_baseline_accuracy(mcq, 0.25, 0.40)) != []  # inclusive
    assert notes_for("mcq", with_baseline_accuracy(mcq, 0.26, 0.40)) == []
    v = verdict_for("mcq", at, [parse_gate("flips<=50%", "mcq")], candidate="int8")
    assert v.candidate == "int8" and v.notes == notes_for("mcq", at)


def test_unfinished_run_is_noted(mcq: McqSummary) -> None:
    s = with_baseline_accuracy(mcq, 0.5, 0.9)
    run = s.run.model_copy(update={"complete": False, "n_items_planned": 10})
    assert notes_for("mcq", s.model_copy(update={"run": run})) == [
        "the run is unfinished: decided on the 4 items of 10 planned answered so far"]


# ---- MT-Bench -----------------------------------------------------------------------------------


def test_mtbench_estimates() -> None:
    pw = PairwiseSummary(n=6, wins=2, ties=0, losses=4, inconsistent=0, inconsistency_rate=0.0,
                         win_rate_adjusted=1 / 3, excluded=0)
    est, missing = mtbench_estimates(mtbench(pairwise=pw))
    assert missing == {}
    assert est["delta_mtbench"] == MetricEstimate(point=-1.0, low=-2.0, high=1.0, n=3, method="bootstrap")
    ci = stats.binomtest(4, 6).proportion_ci(method="wilson")
    loss = est["pairwise_loss"]
    assert (loss.point, loss.n, loss.method) == (4 / 6, 6, "wilson")
    assert (loss.low, loss.high) == pytest.approx((ci.low, ci.high))


def test_mtbench_missing_modes_and_unfinished() -> None:
    est, missing = mtbench_estimates(mtbench("single"))
    assert set(est) == {"delta_mtbench"} and "no pairwise grading" in missing["pairwise_loss"]
    pw = PairwiseSummary(n=0, wins=0, ties=0, losses=0, inconsistent=0, inconsistency_rate=None,
                         win_rate_adjusted=None, excluded=0)
    est, missing = mtbench_estimates(mtbench("pairwise", pairwise=pw))
    assert set(est) == {"pairwise_loss"} and "no single-answer grading" in missing["delta_mtbench"]
    # No pair tallied: an estimate over no items, which is inconclusive (not unavailable).
    v = verdict_for("mtbench", mtbench("pairwise", pairwise=pw, complete=False),
                    parse_gates(["pairwise_loss<=50%", "delta_mtbench>=-1"], "mtbench"))
    assert [(g.status, g.reason) for g in v.gates] == [
        ("inconclusive", "no items measured"),
        ("unavailable", "not measured: no single-answer grading in this run (--mode pairwise)")]
    assert v.exit_code == 4 and any("unfinished" in n for n in v.notes)


# ---- shadow -------------------------------------------------------------------------------------


def test_shadow_estimates_with_a_secondary() -> None:
    s = summarise(rows_of(scenario(8)), n_boot=200)
    est, missing = shadow_estimates(s)
    assert missing == {}
    x = s.measure("mismatch").excess
    assert x is not None
    assert est["answer_differs"] == MetricEstimate(point=x.diff, low=x.low, high=x.high, n=10, method="bootstrap")
    kl = s.measure("kl_mean")
    assert isinstance(kl, MeanMeasure)
    assert est["tf_kl"] == MetricEstimate(point=kl.candidate.mean, low=kl.candidate.low, high=kl.candidate.high,
                                          n=10, method="bootstrap")


def test_shadow_raw_rate_without_secondary_and_top1_disagreement() -> None:
    records = [rec(f"r{i}", "candidate", HOUR + i, exact_match=i >= 3, edit_distance=0.0, kl_mean=0.1,
                   top1_agree=[0.5, 0.8, 1.0, 1.0][i % 4]) for i in range(12)]
    s = summarise(rows_of(records), n_boot=200)
    est, _ = shadow_estimates(s)
    ci = stats.binomtest(3, 12).proportion_ci(method="wilson")
    ad = est["answer_differs"]
    assert (ad.point, ad.n, ad.method) == (0.25, 12, "wilson")
    assert (ad.low, ad.high) == pytest.approx((ci.low, ci.high))
    top1 = s.measure("top1_agree")
    assert isinstance(top1, MeanMeasure) and top1.candidate.low is not None and top1.candidate.high is not None
    dis = est["top1_disagree"]
    assert dis.point == pytest.approx(1 - 0.825)
    assert (dis.low, dis.high) == pytest.approx((1 - top1.candidate.high, 1 - top1.candidate.low))
    assert dis.low is not None and dis.high is not None and dis.low < dis.high


def test_shadow_without_teacher_forcing_is_unavailable() -> None:
    records = [rec(f"r{i}", "candidate", HOUR + i, exact_match=True, edit_distance=0.0) for i in range(3)]
    v = verdict_for("shadow", summarise(rows_of(records), n_boot=200),
                    parse_gates(["tf_kl<=0.1", "top1_disagree<=5%", "answer_differs<=100%"], "shadow"))
    assert [g.status for g in v.gates] == ["unavailable", "unavailable", "pass"]
    assert "no teacher-forced scoring" in v.gates[0].reason and v.exit_code == 4


# ---- JSON, Markdown, emit, resolution ---------------------------------------------------------


def test_verdict_json_one_and_several(mcq: McqSummary) -> None:
    s = with_baseline_accuracy(mcq, 0.5, 0.9)
    v = verdict_for("mcq", s, parse_gates(["flips<=100%", "topk_kl<=1"], "mcq"), candidate="a")
    j = verdict_json(v)
    assert (j["candidate"], j["status"], j["exit_code"], j["notes"]) == ("a", "inconclusive", 4, [])
    assert j["gates"][0] | {"reason": None} == {
        "metric": "flips", "operator": "<=", "threshold": 1.0, "unit": "fraction", "estimate": 0.25,
        "interval": [s.flips.rate.low, s.flips.rate.high], "n": 4, "method": "wilson", "status": "pass",
        "items_to_decide": None, "reason": None,
    }  # fmt: skip
    assert j["gates"][1]["interval"] is None and j["gates"][1]["status"] == "unavailable"
    failing = verdict_for("mcq", s, [parse_gate("flips>=100%", "mcq")], candidate="b")
    several = verdict_json([v, failing])
    assert (several["status"], several["exit_code"]) == ("fail", 1)
    assert [c["candidate"] for c in several["candidates"]] == ["a", "b"]
    dumped = with_verdict({"x": 1}, v)
    assert dumped == {"x": 1, "verdict": j} and with_verdict({"x": 1}, None) == {"x": 1}


def test_emit_renders_writes_and_returns_the_code(mcq: McqSummary, tmp_path: Path) -> None:
    s = with_baseline_accuracy(mcq, 0.5, 0.9)
    v = verdict_for("mcq", s, [parse_gate("flips>=100%", "mcq")])
    buf = io.StringIO()
    md = tmp_path / "sub.md"
    assert emit_verdict(v, console=Console(file=buf, width=100), summary_md=md, title="T") == 1
    assert "verdict: FAIL (exit 1): 1 of 1 gates failed" in buf.getvalue()
    assert md.read_text().startswith("## T\n")
    ok = verdict_for("mcq", s, [parse_gate("flips<=100%", "mcq")])
    assert emit_verdict([ok, v], console=None) == 1 and emit_verdict([ok], console=None) == 0
    with pytest.raises(UserError, match="--summary-md"):
        write_summary_md(tmp_path / "missing-dir" / "x.md", v, "T")


def test_resolve_gates_flags_replace_the_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = parse_config({"gate": {"mcq": ["flips<=5%"], "shadow": "answer_differs<=2%"}})
    assert [g.expr for g in resolve_gates("mcq", None, cfg)] == ["flips<=0.05"]
    assert [g.expr for g in resolve_gates("mcq", ["kl<=0.01"], cfg)] == ["kl<=0.01"]
    assert [g.expr for g in resolve_gates("shadow", [], cfg)] == ["answer_differs<=0.02"]
    assert resolve_gates("mtbench", None, cfg) == [] and resolve_gates("mcq", None, Config()) == []
    path = tmp_path / "x.toml"
    path.write_text('[gate]\nmtbench = ["delta_mtbench>=-0.25", "bogus<=1"]\n')
    with pytest.raises(UserError, match=r"x\.toml: gate\.mtbench\[1\]: gate 'bogus<=1': unknown metric"):
        resolve_gates("mtbench", None, path)
    assert [g.expr for g in resolve_gates("mtbench", ["pairwise_loss<=0.5"], path)] == ["pairwise_loss<=0.5"]
    monkeypatch.chdir(tmp_path)
    assert resolve_gates("mcq", None, None) == []  # no ./servecmp.toml
    with pytest.raises(UserError, match="gate.mcq"):
        parse_config({"gate": {"mcq": [1, 2]}}, "servecmp.toml")


def test_wants_verdict() -> None:
    assert not wants_verdict([], None)
    assert wants_verdict([], Path("x.md")) and wants_verdict([parse_gate("kl<=1", "mcq")], None)
