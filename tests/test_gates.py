"""servecmp.gates: expressions, the [gate] table, decisions on hand-worked intervals, items to decide,
exit codes, Markdown and terminal rendering, the chance-level note."""

from __future__ import annotations

import io
import math

import pytest
from rich.console import Console
from scipy import stats

from servecmp.errors import EXIT_GATE_FAILED, EXIT_INCONCLUSIVE, EXIT_OK, UserError
from servecmp.gates import (
    METRICS,
    GateConfig,
    MetricEstimate,
    Verdict,
    at_chance,
    chance_note,
    combine,
    decide,
    gate_status,
    gates_for,
    gates_from_table,
    items_to_decide,
    metric_names,
    parse_gate,
    parse_gates,
    render_verdict,
    verdict_markdown,
    wilson_bounds,
)
from servecmp.metrics.stats import Estimate, wilson_ci

Z = float(stats.norm.ppf(0.975))
MCQ_NAMES = ("flips, c2w, changes, kl, topk_kl, topk_kl_tight, kl_cb, js, delta_acc, flips_excess, kl_excess, "
             "top1_disagree")


def est(point: float | None, low: float | None, high: float | None, n: int = 100,
        method: str = "bootstrap") -> MetricEstimate:
    return MetricEstimate(point=point, low=low, high=high, n=n, method=method)  # type: ignore[arg-type]


# ---- registry and expressions ------------------------------------------------------------------


def test_registry_lists_every_metric_by_kind() -> None:
    assert ", ".join(metric_names("mcq")) == MCQ_NAMES
    assert metric_names("mtbench") == ["delta_mtbench", "pairwise_loss"]
    assert metric_names("shadow") == ["answer_differs", "tf_kl", "top1_disagree"]
    for info in METRICS.values():
        assert info.description and "\n" not in info.description
    assert METRICS["flips"].rate and METRICS["delta_acc"].rate
    assert not METRICS["kl"].rate and not METRICS["delta_mtbench"].rate
    with pytest.raises(ValueError):
        metric_names("nope")


@pytest.mark.parametrize(("expr", "metric", "op", "threshold"), [
    ("flips<=0.05", "flips", "<=", 0.05),
    ("  flips <=  0.05 ", "flips", "<=", 0.05),
    ("FLIPS<=5%", "flips", "<=", 0.05),
    ("flips <= 5 %", "flips", "<=", 0.05),
    ("kl<=1e-2", "kl", "<=", 0.01),
    ("delta_acc>=-1%", "delta_acc", ">=", -0.01),
    ("delta_acc >= -.01", "delta_acc", ">=", -0.01),
    ("c2w<=+0.02", "c2w", "<=", 0.02),
    ("kl_excess<=-0.5", "kl_excess", "<=", -0.5),
])
def test_parse_gate_accepts(expr: str, metric: str, op: str, threshold: float) -> None:
    g = parse_gate(expr, "mcq")
    assert (g.kind, g.metric, g.op) == ("mcq", metric, op)
    assert g.threshold == pytest.approx(threshold, abs=1e-15)
    assert parse_gate(g.expr, "mcq") == g  # the canonical form parses back


def test_parse_gate_other_kinds_and_rules() -> None:
    assert parse_gate("delta_mtbench>=-0.25", "mtbench").rule == ">= -0.25 points"
    assert parse_gate("pairwise_loss<=40%", "mtbench").rule == "<= 40%"
    assert parse_gate("answer_differs<=2%", "shadow").rule == "<= 2%"
    assert parse_gate("tf_kl<=0.05", "shadow").rule == "<= 0.05 nats"
    assert parse_gate("flips<=0.05", "mcq").expr == "flips<=0.05"
    assert [g.metric for g in parse_gates(["flips<=5%", "kl<=0.01"], "mcq")] == ["flips", "kl"]


@pytest.mark.parametrize(("expr", "kind", "problem"), [
    ("flip<=0.05", "mcq", "unknown metric 'flip'"),
    ("delta_mtbench>=0", "mcq", "delta_mtbench is a metric of mtbench runs, not of mcq runs"),
    ("flips<=0.05", "shadow", "flips is a metric of mcq and gen runs, not of shadow runs"),
    ("flips<0.05", "mcq", "'<' is not a comparison servecmp knows: use <= or >="),
    ("flips>0.05", "mcq", "'>' is not a comparison"),
    ("flips=<0.05", "mcq", "'=<' is not a comparison"),
    ("flips==0.05", "mcq", "'==' is not a comparison"),
    ("flips 0.05", "mcq", "no comparison"),
    ("flips", "mcq", "no comparison"),
    ("<=0.05", "mcq", "no metric before the comparison"),
    ("flips<=", "mcq", "no value after <="),
    ("flips<=abc", "mcq", "the value 'abc' is not a number"),
    ("flips<=0.05.1", "mcq", "is not a number"),
    ("flips<=1_0", "mcq", "is not a number"),
    ("flips<=nan", "mcq", "the value 'nan' is not finite"),
    ("kl<=inf", "mcq", "the value 'inf' is not finite"),
    ("kl<=1e999", "mcq", "is not finite"),
    ("kl<=1%", "mcq", "'%' applies to fraction metrics only; kl is in nats"),
    ("flips<=5", "mcq", "threshold 500% is outside flips's range [0%, 100%] (write 5% for a percentage)"),
    ("flips>=-1%", "mcq", "is outside flips's range"),
    ("flips<=-1", "mcq", "threshold -100% is outside flips's range [0%, 100%]; valid"),  # no % hint: -1% is out too
    ("delta_mtbench>=-10", "mtbench", "threshold -10 points is outside delta_mtbench's range [-9 points, 9 points]"),
    ("kl<=-0.1", "mcq", "is outside kl's range"),
])
def test_parse_gate_rejects_with_one_line(expr: str, kind: str, problem: str) -> None:
    with pytest.raises(UserError) as exc:
        parse_gate(expr, kind)
    msg = str(exc.value)
    assert "\n" not in msg
    assert problem in msg
    assert f"valid metrics for {kind}: {', '.join(metric_names(kind))}" in msg
    assert exc.value.exit_code == 2


@pytest.mark.parametrize("expr", ["", "   "])
def test_parse_gate_rejects_empty(expr: str) -> None:
    with pytest.raises(UserError) as exc:
        parse_gate(expr, "mcq")
    assert str(exc.value) == ("empty gate expression: expected METRIC<=VALUE or METRIC>=VALUE; "
                              f"valid metrics for mcq: {MCQ_NAMES}")


def test_parse_gate_multiline_expression_is_reported_on_one_line() -> None:
    with pytest.raises(UserError) as exc:
        parse_gate("flips<=\nabc", "mcq")
    assert "\n" not in str(exc.value)


# ---- the [gate] table --------------------------------------------------------------------------


def test_gate_table_layout() -> None:
    table = {"mcq": ["flips<=5%", "kl<=0.01"], "mtbench": "delta_mtbench>=-0.25"}
    assert [g.expr for g in gates_from_table(table, "mcq")] == ["flips<=0.05", "kl<=0.01"]
    assert [g.expr for g in gates_from_table(table, "mtbench")] == ["delta_mtbench>=-0.25"]
    assert gates_from_table(table, "shadow") == []
    assert gates_from_table(None, "mcq") == []
    assert gates_from_table(GateConfig(mcq=["c2w<=1%"]), "mcq")[0].expr == "c2w<=0.01"


def test_gate_table_errors_are_one_line_with_location() -> None:
    with pytest.raises(UserError) as exc:
        gates_from_table({"mqc": ["flips<=5%"]}, "mcq", origin="ci.toml")
    assert str(exc.value) == "ci.toml: gate.mqc: unknown run kind; the [gate] table takes mcq, mtbench, shadow, gen"
    with pytest.raises(UserError) as exc:
        gates_from_table({"mcq": ["flips<=5%", "kl<0.01"]}, "mcq")
    msg = str(exc.value)
    assert msg.startswith("servecmp.toml: gate.mcq[1]: gate 'kl<0.01': '<' is not a comparison")
    assert "\n" not in msg
    with pytest.raises(UserError) as exc:
        gates_from_table({"mcq": [0.05]}, "mcq")
    assert str(exc.value).startswith("servecmp.toml: gate.mcq.0: ")


def test_cli_gates_replace_the_file_gates() -> None:
    table = {"mcq": ["flips<=5%"]}
    assert [g.metric for g in gates_for("mcq", ["kl<=0.01"], table)] == ["kl"]
    assert [g.metric for g in gates_for("mcq", [], table)] == ["flips"]
    assert gates_for("mcq") == []


# ---- decisions ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("op", "t", "low", "high", "status"), [
    # <= 0.05
    ("<=", 0.05, 0.01, 0.04, "pass"),
    ("<=", 0.05, 0.01, 0.05, "pass"),          # high exactly on the threshold: every value <= t
    ("<=", 0.05, 0.05, 0.05, "pass"),
    ("<=", 0.05, 0.03, 0.07, "inconclusive"),
    ("<=", 0.05, 0.05, 0.09, "inconclusive"),  # low exactly on the threshold: t itself satisfies, not a fail
    ("<=", 0.05, 0.0500001, 0.09, "fail"),
    # >= -0.01
    (">=", -0.01, 0.0, 0.02, "pass"),
    (">=", -0.01, -0.01, 0.02, "pass"),        # low exactly on the threshold: every value >= t
    (">=", -0.01, -0.03, 0.01, "inconclusive"),
    (">=", -0.01, -0.05, -0.01, "inconclusive"),  # high exactly on the threshold: not a fail
    (">=", -0.01, -0.05, -0.0100001, "fail"),
])
def test_gate_status_on_hand_worked_intervals(op: str, t: float, low: float, high: float, status: str) -> None:
    assert gate_status(op, t, low, high) == status


def test_decide_statuses_reasons_and_exit_codes() -> None:
    gates = parse_gates(["flips<=5%", "kl<=0.01", "delta_acc>=-1%"], "mcq")
    all_pass = {"flips": est(0.02, 0.01, 0.05, 500, "wilson"), "kl": est(0.004, 0.003, 0.005),
                "delta_acc": est(0.0, -0.01, 0.01)}
    v = decide(gates, all_pass, candidate="w8a8")
    assert [r.status for r in v.gates] == ["pass", "pass", "pass"]
    assert (v.status, v.exit_code, v.candidate) == ("pass", EXIT_OK, "w8a8")
    assert v.gates[0].reason == "95% interval [1.00%, 5.00%] is entirely <= 5%"
    assert v.summary == "PASS (exit 0): all 3 gates passed"

    one_fail = {**all_pass, "flips": est(0.07, 0.06, 0.09, 500, "wilson"), "kl": est(0.009, 0.005, 0.02)}
    v = decide(gates, one_fail)
    assert [r.status for r in v.gates] == ["fail", "inconclusive", "pass"]
    assert (v.status, v.exit_code) == ("fail", EXIT_GATE_FAILED)
    assert v.gates[0].reason == "95% interval [6.00%, 9.00%] is entirely > 5%"
    assert v.gates[0].items_to_decide is None
    assert v.summary == "FAIL (exit 1): 1 of 3 gates failed"

    v = decide(gates, {**all_pass, "delta_acc": est(-0.02, -0.04, -0.015)})
    assert v.gates[2].reason == "95% interval [-4.00%, -1.50%] is entirely < -1%"
    assert v.exit_code == EXIT_GATE_FAILED

    inconclusive = {**all_pass, "kl": est(0.009, 0.005, 0.02)}
    v = decide(gates, inconclusive)
    assert (v.status, v.exit_code) == ("inconclusive", EXIT_INCONCLUSIVE)
    assert v.summary == "INCONCLUSIVE (exit 4): 1 of 3 gates undecided, none failed"


def test_point_estimate_alone_or_no_items_never_decides() -> None:
    gates = parse_gates(["kl<=0.01"], "mcq")
    v = decide(gates, {"kl": est(0.0001, None, None)})
    assert v.gates[0].status == "inconclusive"
    assert v.gates[0].reason == "no interval: a point estimate alone does not decide"
    assert v.exit_code == EXIT_INCONCLUSIVE
    v = decide(gates, {"kl": est(None, None, None, n=0)})
    assert (v.gates[0].status, v.gates[0].reason) == ("inconclusive", "no items measured")


def test_unmeasured_metric_is_unavailable_and_counts_as_inconclusive() -> None:
    gates = parse_gates(["kl<=0.01", "topk_kl<=0.05", "flips_excess<=1%"], "mcq")
    v = decide(gates, {"kl": est(0.002, 0.001, 0.003), "flips_excess": None},
               missing={"flips_excess": "no --secondary given"})
    assert [r.status for r in v.gates] == ["pass", "unavailable", "unavailable"]
    assert v.gates[1].reason == "not measured: the endpoints returned no top-k logprobs"
    assert v.gates[2].reason == "not measured: no --secondary given"
    assert (v.status, v.exit_code) == ("inconclusive", EXIT_INCONCLUSIVE)
    assert decide([], {}).exit_code == EXIT_OK  # nothing to decide


def test_combine_over_candidates() -> None:
    gates = parse_gates(["kl<=0.01"], "mcq")
    passed = decide(gates, {"kl": est(0.002, 0.001, 0.003)}, candidate="a")
    failed = decide(gates, {"kl": est(0.05, 0.02, 0.08)}, candidate="b")
    undecided = decide(gates, {"kl": est(0.008, 0.004, 0.012)}, candidate="c")
    assert combine({"a": passed, "a2": passed}) == EXIT_OK
    assert combine({"a": passed, "c": undecided}) == EXIT_INCONCLUSIVE
    assert combine({"a": passed, "b": failed, "c": undecided}) == EXIT_GATE_FAILED
    assert combine([undecided, failed]) == EXIT_GATE_FAILED
    assert combine({}) == EXIT_OK


# ---- items to decide ---------------------------------------------------------------------------


def _wilson_scan(p: float, t: float, op: str, start: int) -> int:
    """Independent check: walk n upwards with the textbook Wilson formula until the gate decides."""
    n = start
    while True:
        n += 1
        c = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
        h = Z / (1 + Z * Z / n) * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n))
        low, high = c - h, c + h
        side_fail = (low > t) if op == "<=" else (high < t)
        side_pass = (high <= t) if op == "<=" else (low >= t)
        if side_fail or side_pass:
            return n


def test_wilson_bounds_match_stats_wilson_ci() -> None:
    for k, n in [(0, 10), (3, 10), (10, 10), (6, 100), (73, 1825)]:
        p = wilson_ci(k, n)
        low, high = wilson_bounds(k / n, n)
        assert low == pytest.approx(p.low, abs=1e-12)
        assert high == pytest.approx(p.high, abs=1e-12)


def test_items_to_decide_wilson_hand_worked() -> None:
    # p̂ = 0.06 against flips <= 5%: the Wilson lower bound reaches t where (p̂ - t)^2 = z^2 t(1-t)/n,
    # n* = 1.959964^2 * 0.05 * 0.95 / 0.01^2 = 1824.69; a FAIL needs low > t strictly: n = 1825.
    n_star = Z * Z * 0.05 * 0.95 / 0.01**2
    assert n_star == pytest.approx(1824.69, abs=0.01)
    e = MetricEstimate.wilson(wilson_ci(30, 500))  # 6.0% [4.23%, 8.44%]
    assert gate_status("<=", 0.05, e.low, e.high) == "inconclusive"  # type: ignore[arg-type]
    assert items_to_decide("<=", 0.05, e) == 1825 == math.floor(n_star) + 1 == _wilson_scan(0.06, 0.05, "<=", 500)

    # p̂ = 0.04: the same n* (symmetric in p̂ - t); a PASS allows high == t: n = ceil(n*) = 1825,
    # where 73/1825 = 4% exactly, so scipy's own Wilson interval confirms it.
    e = MetricEstimate.wilson(wilson_ci(20, 500))
    assert items_to_decide("<=", 0.05, e) == 1825 == math.ceil(n_star) == _wilson_scan(0.04, 0.05, "<=", 500)
    assert wilson_ci(73, 1825).high <= 0.05  # type: ignore[operator]

    # more cases, both operators, against the linear scan and the closed form
    for p, t, op, n_obs in [(0.02, 0.01, "<=", 300), (0.12, 0.15, ">=", 200), (0.30, 0.25, ">=", 150),
                            (0.0, 0.01, "<=", 100), (0.5, 0.45, "<=", 50)]:
        e = est(p, *wilson_bounds(p, n_obs), n=n_obs, method="wilson")
        assert gate_status(op, t, e.low, e.high) == "inconclusive"  # type: ignore[arg-type]
        got = items_to_decide(op, t, e)
        assert got == _wilson_scan(p, t, op, n_obs)
        n_star = Z * Z * t * (1 - t) / (p - t) ** 2
        passing_side = (p < t) == (op == "<=")
        assert got == (math.ceil(n_star) if passing_side else math.floor(n_star) + 1)


def test_items_to_decide_bootstrap_hand_worked() -> None:
    # kl <= 0.01 with 0.004 [0.003, 0.012] over 500: threshold above the point, hw = 0.008, d = 0.006;
    # n > 500 * (0.008 / 0.006)^2 = 888.9, so 889.
    assert items_to_decide("<=", 0.01, est(0.004, 0.003, 0.012, 500)) == 889
    # delta_mtbench >= -0.375 with -0.125 [-0.625, 0.375] over 80 (binary-exact numbers): threshold
    # below the point, hw = 0.5, d = 0.25; 0.5 * sqrt(80/n) < 0.25 needs n > 320 strictly: 321.
    assert items_to_decide(">=", -0.375, est(-0.125, -0.625, 0.375, 80)) == 321
    # the half-width on the threshold's side: 0.25 [0.0, 1.0] over 80 is 0.25 below and 0.75 above
    skewed = est(0.25, 0.0, 1.0, 80)
    assert items_to_decide("<=", 0.5, skewed) == 721  # hw 0.75, d 0.25: n > 80 * 9 = 720
    assert items_to_decide(">=", 0.125, skewed) == 321  # hw 0.25, d 0.125: n > 80 * 4 = 320
    # and decide() reports it
    v = decide(parse_gates(["kl<=0.01"], "mcq"), {"kl": est(0.004, 0.003, 0.012, 500)})
    assert v.gates[0].items_to_decide == 889
    assert v.gates[0].reason == ("95% interval [0.003, 0.012] contains 0.01 nats; about 889 items in total "
                                 "would decide it if the estimate held")


def test_items_to_decide_never_when_point_on_threshold() -> None:
    gates = parse_gates(["flips<=5%", "kl<=0.01"], "mcq")
    v = decide(gates, {"flips": est(0.05, 0.03, 0.08, 400, "wilson"), "kl": est(0.01, 0.005, 0.02)})
    for r in v.gates:
        assert r.status == "inconclusive"
        assert r.items_to_decide is None
        assert r.reason.endswith("; never: estimate equals threshold")
        assert r.never


# ---- rendering ---------------------------------------------------------------------------------


def _two_gate_verdict() -> Verdict:
    gates = parse_gates(["flips<=5%", "kl<=0.01"], "mcq")
    return decide(gates, {"flips": est(0.06, 0.0423, 0.0844, 500, "wilson"), "kl": est(0.003, 0.002, 0.004, 500)},
                  candidate="w4a16")


def test_verdict_markdown_two_gates_exact() -> None:
    expected = (
        "## servecmp mcq gates\n"
        "\n"
        "| metric | rule | estimate [95% interval] | n | status | items to decide |\n"
        "|---|---|---|---:|---|---:|\n"
        "| `flips` | <= 5% | 6.00% [4.23%, 8.44%] | 500 | INCONCLUSIVE | 1,825 |\n"
        "| `kl` | <= 0.01 nats | 0.003 [0.002, 0.004] | 500 | PASS | – |\n"
        "\n"
        "**Overall: INCONCLUSIVE (exit 4): 1 of 2 gates undecided, none failed**\n"
    )
    assert verdict_markdown(_two_gate_verdict(), "servecmp mcq gates") == expected


def test_verdict_markdown_notes_and_several_candidates() -> None:
    gates = parse_gates(["topk_kl<=0.05", "kl<=0.01"], "mcq")
    note = chance_note(0.2, 0.3, 4)
    assert note is not None
    a = decide(gates, {"topk_kl": est(0.01, 0.005, 0.02), "kl": est(0.002, 0.001, 0.003)}, candidate="a")
    b = decide(gates, {"kl": est(0.05, 0.02, 0.08)}, candidate="b", notes=[note])
    expected = (
        "## gates\n"
        "\n"
        "### a\n"
        "\n"
        "| metric | rule | estimate [95% interval] | n | status | items to decide |\n"
        "|---|---|---|---:|---|---:|\n"
        "| `topk_kl` | <= 0.05 nats | 0.01 [0.005, 0.02] | 100 | PASS | – |\n"
        "| `kl` | <= 0.01 nats | 0.002 [0.001, 0.003] | 100 | PASS | – |\n"
        "\n"
        "**a: PASS (exit 0): all 2 gates passed**\n"
        "\n"
        "### b\n"
        "\n"
        "| metric | rule | estimate [95% interval] | n | status | items to decide |\n"
        "|---|---|---|---:|---|---:|\n"
        "| `topk_kl` | <= 0.05 nats | – | – | UNAVAILABLE | – |\n"
        "| `kl` | <= 0.01 nats | 0.05 [0.02, 0.08] | 100 | FAIL | – |\n"
        "\n"
        "- `topk_kl`: not measured: the endpoints returned no top-k logprobs\n"
        "- the baseline's accuracy interval contains chance (25.0% for 4 options): flips there mostly "
        "measure noise among guesses\n"
        "\n"
        "**b: FAIL (exit 1): 1 of 2 gates failed**\n"
        "\n"
        "**Overall: FAIL (exit 1): 2 candidates, 1 failed, 0 undecided**\n"
    )
    assert verdict_markdown([a, b], "gates") == expected


def test_render_verdict_fits_80_columns() -> None:
    gates = parse_gates(["flips<=5%", "kl<=0.01", "topk_kl<=0.05", "delta_acc>=-1%"], "mcq")
    v = decide(gates, {"flips": est(0.06, 0.0423, 0.0844, 500, "wilson"), "kl": est(0.01, 0.005, 0.02, 12000),
                       "delta_acc": est(-0.0123, -0.0234, -0.0101, 12000)}, candidate="Qwen2.5-7B-w4a16")
    buf = io.StringIO()
    render_verdict(Console(file=buf, width=80, force_terminal=False, color_system=None), v)
    out = buf.getvalue()
    lines = out.splitlines()
    assert all(len(line.rstrip()) <= 80 for line in lines), out
    assert "  FAIL         delta_acc >= -1%      -1.23% [-2.34%, -1.01%]  n=12,000" in lines
    assert lines[0] == "gates (95% intervals) — Qwen2.5-7B-w4a16"
    assert "  INCONCLUSIVE flips <= 5%  " in out
    assert "about 1,825 items in total would decide it if the estimate held" in out
    assert "never decided by more items: the estimate equals the threshold" in out
    assert "FAIL" in out and "UNAVAILABLE" in out
    assert "               not measured: the endpoints returned no top-k logprobs" in lines
    assert lines[-1] == "verdict: FAIL (exit 1): 1 of 4 gates failed"


# ---- estimates ---------------------------------------------------------------------------------


def test_metric_estimate_constructors_and_validation() -> None:
    e = MetricEstimate.wilson(wilson_ci(30, 500))
    assert (e.point, e.n, e.method) == (0.06, 500, "wilson")
    assert MetricEstimate.wilson({"rate": 0.1, "low": 0.05, "high": 0.2, "n": 50, "count": 5}).point == 0.1
    b = MetricEstimate.bootstrap(Estimate(point=0.01, low=0.0, high=0.02, n=40))
    assert (b.point, b.low, b.high, b.n, b.method) == (0.01, 0.0, 0.02, 40, "bootstrap")
    assert MetricEstimate.bootstrap({"diff": -0.1, "low": -0.2, "high": 0.0, "n": 9}).point == -0.1
    assert MetricEstimate.bootstrap({"mean": 0.3, "low": 0.2, "high": 0.4, "n": 9}).point == 0.3
    for bad in [dict(point=0.1, low=0.2, high=0.1, n=5), dict(point=0.1, low=0.0, high=None, n=5),
                dict(point=math.nan, low=0.0, high=1.0, n=5), dict(point=0.1, low=0.0, high=0.2, n=-1),
                dict(point=1.5, low=1.0, high=2.0, n=5, method="wilson")]:
        with pytest.raises(ValueError):
            MetricEstimate(**bad)  # type: ignore[arg-type]


# ---- chance level ------------------------------------------------------------------------------


def test_at_chance() -> None:
    assert at_chance(0.20, 0.30, 4)
    assert at_chance(0.25, 0.30, 4)  # inclusive ends
    assert at_chance(0.20, 0.25, 4)
    assert not at_chance(0.26, 0.40, 4)
    assert not at_chance(None, None, 4)
    assert chance_note(0.30, 0.40, 3) == ("the baseline's accuracy interval contains chance (33.3% for 3 options): "
                                          "flips there mostly measure noise among guesses")
    assert chance_note(0.5, 0.6, 4) is None
    with pytest.raises(ValueError):
        at_chance(0.1, 0.2, 1)
