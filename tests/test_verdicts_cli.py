"""Gates on the commands: `servecmp report RUN_DIR|DB --gate`, `servecmp shadow report --gate`,
`servecmp mtbench --gate`, the `[gate]` table, `--summary-md` and the `verdict` object of `--json`.

Expected numbers are read from the stored summaries (the numbers the report prints) and checked by
hand: the gate rules of `servecmp.gates` applied to them, Wilson intervals recomputed with scipy.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from scipy import stats
from typer.testing import CliRunner, Result

from servecmp._cli.main import build_app
from servecmp.errors import UserError
from tests.stub_openai import StubServer, StubState
from tests.test_mcq_cli import assert_one_line_error, only_run_dir, servecmp, write_items
from tests.test_mtbench_cli import only_run, private_user_cache, running_stubs
from tests.test_shadow_report import _write_db, scenario

N_ITEMS = 40


def run_cli(*args: str) -> Result:
    return CliRunner().invoke(build_app(), list(args), env={"COLUMNS": "200"})


def report(*args: str) -> Result:
    return run_cli("report", *args)


@pytest.fixture(scope="module")
def mcq_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A finished MCQ run of 40 items against the stubs, and its stored summary.json."""
    tmp = tmp_path_factory.mktemp("mcq")
    data = tmp / "items.jsonl"
    write_items(data, N_ITEMS)
    runs = tmp / "runs"
    with StubServer(StubState(model="base")) as b, StubServer(StubState(model="cand")) as c:
        proc = servecmp("mcq", "--baseline", b.url, "--candidate", c.url, "--task", f"jsonl:{data}",
                        "--runs-dir", str(runs), "--top-k", "5", "--json")
    assert proc.returncode == 0, proc.stderr
    run_dir = only_run_dir(runs)
    return run_dir, json.loads((run_dir / "summary.json").read_text())


def verdict_of(result: Result) -> dict[str, Any]:
    data = json.loads(result.stdout)
    return dict(data["verdict"])


def gate_rows(result: Result) -> list[tuple[str, str]]:
    return [(g["metric"], g["status"]) for g in verdict_of(result)["gates"]]


# ---- servecmp report RUN_DIR (MCQ) -------------------------------------------------------------


def test_preconditions_of_the_stored_run(mcq_run: tuple[Path, dict[str, Any]]) -> None:
    """The gates below rely on these facts about the stub run; if the stub changes, they say why."""
    _, s = mcq_run
    assert s["n_items"] == N_ITEMS and s["n_options"] == 4
    assert s["flips"]["rate"]["low"] > 0.05  # some flips: `flips<=5%` fails
    diff = s["accuracy"]["diff"]
    assert diff["low"] < -0.01 < diff["high"] and diff["point"] < -0.01  # Δacc >= -1% is undecided
    acc = s["accuracy"]["baseline"]
    assert acc["low"] <= 0.25 <= acc["high"]  # the baseline is at chance: the note appears
    assert s["topk_kl"] is not None


def test_pass_on_the_interval_end_exit_0(mcq_run: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    run_dir, s = mcq_run
    high = s["flips"]["rate"]["high"]
    low = s["answer_changes"]["low"]
    # Thresholds exactly on the stored interval ends: `<=` passes at high == t, `>=` at low == t.
    res = report(str(run_dir), "--gate", f"flips<={high!r}", "--gate", f"changes>={low!r}", "--json")
    assert res.exit_code == 0, res.output
    v = verdict_of(res)
    assert v["status"] == "pass" and v["exit_code"] == 0
    flips, changes = v["gates"]
    assert flips == {
        "metric": "flips", "operator": "<=", "threshold": high, "unit": "fraction",
        "estimate": s["flips"]["rate"]["rate"], "interval": [s["flips"]["rate"]["low"], high],
        "n": N_ITEMS, "method": "wilson", "status": "pass", "items_to_decide": None,
        "reason": flips["reason"],
    }  # fmt: skip
    assert flips["estimate"] == s["flips"]["flips"] / N_ITEMS
    ci = stats.binomtest(s["flips"]["flips"], N_ITEMS).proportion_ci(method="wilson")
    assert flips["interval"] == pytest.approx([ci.low, ci.high])
    assert changes["status"] == "pass" and changes["interval"][0] == low
    # The summary's own fields are untouched: the JSON is the stored summary plus "verdict".
    data = json.loads(res.stdout)
    data.pop("verdict")
    assert data == s


def test_interval_end_on_the_other_side_is_inconclusive_not_fail(mcq_run: tuple[Path, dict[str, Any]]) -> None:
    run_dir, s = mcq_run
    kl = s["option_kl"]["mean_ci"]
    # `>=` with the threshold on the interval's high end: high == t does not fail (closed interval).
    res = report(str(run_dir), "--gate", f"kl>={kl['high']!r}", "--json")
    assert res.exit_code == 4, res.output
    (g,) = verdict_of(res)["gates"]
    assert g["status"] == "inconclusive" and g["method"] == "bootstrap"
    assert (g["estimate"], g["interval"], g["n"]) == (kl["point"], [kl["low"], kl["high"]], N_ITEMS)
    # Bootstrap: the half-width on the threshold's side shrinks as sqrt(n_obs / n).
    # Here the threshold sits on the high end, so the smallest n with hw * sqrt(n_obs / n) < hw is n_obs + 1.
    assert g["items_to_decide"] == N_ITEMS + 1


def test_fail_exit_1_and_c2w_from_the_counts(mcq_run: tuple[Path, dict[str, Any]]) -> None:
    run_dir, s = mcq_run
    fl = s["flips"]
    res = report(str(run_dir), "--gate", "flips<=5%", "--gate", "c2w<=100%", "--json")
    assert res.exit_code == 1, res.output
    v = verdict_of(res)
    assert v["status"] == "fail" and v["exit_code"] == 1
    assert v["summary"] == "FAIL (exit 1): 1 of 2 gates failed"
    flips, c2w = v["gates"]
    assert flips["status"] == "fail" and flips["threshold"] == 0.05 and flips["interval"][0] > 0.05
    ci = stats.binomtest(fl["correct_to_wrong"], fl["n"]).proportion_ci(method="wilson")
    assert c2w["estimate"] == fl["correct_to_wrong"] / fl["n"]
    assert c2w["interval"] == pytest.approx([ci.low, ci.high])
    assert c2w["status"] == "pass"


def test_inconclusive_exit_4_with_items_to_decide(mcq_run: tuple[Path, dict[str, Any]]) -> None:
    run_dir, s = mcq_run
    diff = s["accuracy"]["diff"]
    res = report(str(run_dir), "--gate", "delta_acc>=-1%", "--gate", "kl>=0", "--json")
    assert res.exit_code == 4, res.output
    v = verdict_of(res)
    assert v["status"] == "inconclusive" and v["exit_code"] == 4
    dacc, kl = v["gates"]
    assert kl["status"] == "pass"
    assert dacc["status"] == "inconclusive" and dacc["interval"] == [diff["low"], diff["high"]]
    # The threshold is above the point: the upper half-width must shrink below the distance.
    hw, d = diff["high"] - diff["point"], -0.01 - diff["point"]
    assert dacc["items_to_decide"] == math.floor(N_ITEMS * (hw / d) ** 2) + 1
    assert any("chance (25.0% for 4 options)" in n for n in v["notes"])


def test_terminal_block_follows_the_report(mcq_run: tuple[Path, dict[str, Any]]) -> None:
    run_dir, s = mcq_run
    plain = report(str(run_dir))
    gated = report(str(run_dir), "--gate", "flips<=5%", "--gate", "topk_kl<=1")
    assert plain.exit_code == 0 and gated.exit_code == 1, gated.output
    assert gated.stdout.startswith(plain.stdout)  # the report itself is unchanged
    block = gated.stdout[len(plain.stdout):]
    lines = [ln.strip() for ln in block.splitlines() if ln.strip()]
    assert lines[0].startswith("gates (95% intervals)")  # then " — " and the candidate's name
    assert lines[1].startswith("FAIL") and "flips <= 5%" in lines[1] and f"n={N_ITEMS}" in lines[1]
    rate = s["flips"]["rate"]
    assert f"{100 * rate['rate']:.2f}% [{100 * rate['low']:.2f}%, {100 * rate['high']:.2f}%]" in lines[1]
    assert lines[2].startswith("PASS") and "topk_kl <= 1 nats" in lines[2]
    assert "the baseline's accuracy interval contains chance" in block
    assert lines[-1] == "verdict: FAIL (exit 1): 1 of 2 gates failed"


def test_no_gates_no_change(mcq_run: tuple[Path, dict[str, Any]]) -> None:
    run_dir, s = mcq_run
    res = report(str(run_dir), "--json")
    assert res.exit_code == 0 and json.loads(res.stdout) == s
    res = report(str(run_dir))
    assert res.exit_code == 0 and "gates (95% intervals)" not in res.stdout


def test_summary_md_is_appended(mcq_run: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    run_dir, s = mcq_run
    md = tmp_path / "summary.md"
    res = report(str(run_dir), "--gate", "flips<=5%", "--gate", "kl>=0", "--summary-md", str(md))
    assert res.exit_code == 1, res.output
    text = md.read_text()
    rate = s["flips"]["rate"]
    kl = s["option_kl"]["mean_ci"]
    assert text.splitlines()[0] == f"## servecmp gates: mcq run {run_dir.name}"
    assert "| metric | rule | estimate [95% interval] | n | status | items to decide |" in text
    assert (f"| `flips` | <= 5% | {100 * rate['rate']:.2f}% [{100 * rate['low']:.2f}%, "
            f"{100 * rate['high']:.2f}%] | {N_ITEMS} | FAIL | – |") in text
    assert f"| `kl` | >= 0 nats | {kl['point']:.3g} [{kl['low']:.3g}, {kl['high']:.3g}] | {N_ITEMS} | PASS | – |" \
        in text
    assert "- the baseline's accuracy interval contains chance (25.0% for 4 options)" in text
    assert text.rstrip().endswith("**Overall: FAIL (exit 1): 1 of 2 gates failed**")
    # A second command in the same CI step adds its own section.
    res = report(str(run_dir), "--gate", "kl>=0", "--summary-md", str(md), "--json")
    assert res.exit_code == 0
    again = md.read_text()
    assert again.startswith(text) and again.count("## servecmp gates") == 2
    assert again.rstrip().endswith("**Overall: PASS (exit 0): the gate passed**")


def test_summary_md_without_gates_says_so(mcq_run: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    run_dir, _ = mcq_run
    md = tmp_path / "s.md"
    res = report(str(run_dir), "--summary-md", str(md), "--json")
    assert res.exit_code == 0
    assert verdict_of(res)["gates"] == []
    assert "No gates." in md.read_text() and "**Overall: PASS (exit 0): no gates**" in md.read_text()


def test_unavailable_metric_counts_as_inconclusive(mcq_run: tuple[Path, dict[str, Any]]) -> None:
    run_dir, _ = mcq_run
    res = report(str(run_dir), "--gate", "flips_excess<=1%", "--gate", "kl>=0", "--json")
    assert res.exit_code == 4, res.output
    g = verdict_of(res)["gates"][0]
    assert g["status"] == "unavailable" and g["estimate"] is None and g["interval"] is None
    assert "noise floor" in g["reason"]


def test_gate_table_applies_and_flags_replace_it(mcq_run: tuple[Path, dict[str, Any]], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir, _ = mcq_run
    cfg = tmp_path / "gates.toml"
    cfg.write_text('[gate]\nmcq = ["flips<=5%"]\nshadow = "answer_differs<=1%"\n')
    res = report(str(run_dir), "-c", str(cfg), "--json")
    assert res.exit_code == 1, res.output
    assert gate_rows(res) == [("flips", "fail")]
    # --gate replaces the file's gates for this kind (it does not add to them).
    res = report(str(run_dir), "-c", str(cfg), "--gate", "kl>=0", "--json")
    assert res.exit_code == 0, res.output
    assert gate_rows(res) == [("kl", "pass")]
    # ./servecmp.toml is read when -c is not given.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "servecmp.toml").write_text('[gate]\nmcq = ["changes>=0", "delta_acc>=-1%"]\n')
    res = report(str(run_dir), "--json")
    assert res.exit_code == 4, res.output
    assert gate_rows(res) == [("changes", "pass"), ("delta_acc", "inconclusive")]


def test_bad_gate_in_the_table_names_the_file_and_key(mcq_run: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    run_dir, _ = mcq_run
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[gate]\nmcq = ["flips<=5%", "tf_kl<=1"]\n')
    res = report(str(run_dir), "-c", str(cfg))
    assert isinstance(res.exception, UserError)
    assert str(res.exception).startswith(
        f"{cfg}: gate.mcq[1]: gate 'tf_kl<=1': tf_kl is a metric of shadow and gen runs")
    cfg.write_text('[gate]\nmcqq = ["flips<=5%"]\n')
    res = report(str(run_dir), "-c", str(cfg))
    assert isinstance(res.exception, UserError) and "gate.mcqq" in str(res.exception)


@pytest.mark.parametrize(("expr", "message"), [
    ("foo<=1", "gate 'foo<=1': unknown metric 'foo'; valid metrics for mcq: flips, c2w, changes"),
    ("tf_kl<=1", "gate 'tf_kl<=1': tf_kl is a metric of shadow and gen runs, not of mcq runs"),
    ("flips<5%", "gate 'flips<5%': '<' is not a comparison servecmp knows"),
    ("flips<=5", "write 5% for a percentage"),
])
def test_bad_expressions_are_one_line_errors(mcq_run: tuple[Path, dict[str, Any]], expr: str, message: str) -> None:
    run_dir, _ = mcq_run
    res = report(str(run_dir), "--gate", "kl>=0", "--gate", expr)
    assert isinstance(res.exception, UserError)
    assert message in str(res.exception) and "\n" not in str(res.exception)


def test_bad_expression_from_the_real_cli(mcq_run: tuple[Path, dict[str, Any]]) -> None:
    run_dir, _ = mcq_run
    proc = servecmp("report", str(run_dir), "--gate", "tf_kl<=0.1", "--json")
    assert_one_line_error(proc, "tf_kl is a metric of shadow and gen runs, not of mcq runs")
    assert proc.stdout == ""


def test_exit_codes_from_the_real_cli(mcq_run: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    run_dir, _ = mcq_run
    for gate, code in (("kl>=0", 0), ("flips<=5%", 1), ("delta_acc>=-1%", 4)):
        proc = servecmp("report", str(run_dir), "--gate", gate, "--summary-md", str(tmp_path / "s.md"))
        assert proc.returncode == code, (gate, proc.stderr)
        assert "verdict: " in proc.stdout and "Traceback" not in proc.stderr


# ---- shadow -------------------------------------------------------------------------------------


def test_shadow_report_gates_with_a_secondary(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    _write_db(db, scenario(8))
    res = run_cli("shadow", "report", str(db), "--json", "--gate", "answer_differs<=40%", "--gate", "tf_kl<=0.2",
                  "--gate", "top1_disagree<=0")
    assert res.exit_code == 1, res.output
    data = json.loads(res.stdout)  # stdout holds only the JSON; the verdict block goes to stderr
    assert "verdict: FAIL (exit 1): 1 of 3 gates failed" in res.stderr
    v = data.pop("verdict")
    mismatch = next(m for m in data["measures"] if m["key"] == "mismatch")
    kl = next(m for m in data["measures"] if m["key"] == "kl_mean")
    differs, tf_kl, top1 = v["gates"]
    # With a secondary: the paired excess (candidate − secondary, 8 of 10 vs 0 of 10 → +0.8).
    x = mismatch["excess"]
    assert differs["estimate"] == pytest.approx(0.8) == x["diff"]
    assert (differs["interval"], differs["n"], differs["method"]) == ([x["low"], x["high"]], 10, "bootstrap")
    assert differs["status"] == "fail" and x["low"] > 0.4
    # tf_kl: the candidate's mean per-request KL (0.01 .. 0.10 → 0.055).
    c = kl["candidate"]
    assert tf_kl["estimate"] == pytest.approx(0.055) == c["mean"]
    assert tf_kl["interval"] == [c["low"], c["high"]] and tf_kl["status"] == "pass"
    # top1_agree is 1.0 everywhere: 0 disagreement with a [0, 0] interval, on the threshold: PASS.
    assert (top1["estimate"], top1["interval"], top1["status"]) == (0.0, [0.0, 0.0], "pass")
    # `servecmp report DB` decides the same.
    generic = report(str(db), "--json", "--gate", "answer_differs<=40%", "--gate", "tf_kl<=0.2",
                     "--gate", "top1_disagree<=0")
    assert generic.exit_code == 1 and json.loads(generic.stdout)["verdict"] == v


def test_shadow_report_without_a_secondary_uses_the_raw_rate(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    _write_db(db, [r for r in scenario(3) if r.target == "candidate"])
    md = tmp_path / "s.md"
    res = run_cli("shadow", "report", str(db), "--n-boot", "200", "--gate", "answer_differs<=50%",
                  "--summary-md", str(md))
    assert res.exit_code == 4, res.output  # 3/10 with Wilson [10.8%, 60.3%]: undecided
    ci = stats.binomtest(3, 10).proportion_ci(method="wilson")
    assert f"+30.00% [+{100 * ci.low:.2f}%, +{100 * ci.high:.2f}%]" in res.stdout
    assert "gates (95% intervals)" in res.stdout and "verdict: INCONCLUSIVE (exit 4)" in res.stdout
    assert "| `answer_differs` | <= 50% | +30.00%" in md.read_text()


def test_shadow_gate_of_another_kind_is_exit_2(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    _write_db(db, scenario(8))
    res = run_cli("shadow", "report", str(db), "--gate", "flips<=5%")
    assert isinstance(res.exception, UserError)
    assert "flips is a metric of mcq and gen runs, not of shadow runs" in str(res.exception)


# ---- mtbench ------------------------------------------------------------------------------------


def test_mtbench_gates_at_the_end_of_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    private_user_cache(tmp_path, monkeypatch)
    with running_stubs(tmp_path) as stubs:
        res = run_cli(*stubs.args("--gate", "delta_mtbench>=-3", "--gate", "pairwise_loss<=50%"))
        assert res.exit_code == 4, res.output
        data = json.loads(res.stdout)
        v = data.pop("verdict")
        run = only_run(stubs)
        assert data == json.loads((run / "summary.json").read_text())
        delta, loss = v["gates"]
        d = data["delta"]  # per question -2, -2, +1: mean -1, bootstrap interval within [-2, 1]
        assert (delta["estimate"], delta["interval"], delta["n"]) == (d["point"], [d["low"], d["high"]], 3)
        assert delta["status"] == "pass" and d["low"] >= -2
        # Pairwise: 4 losses of 6 pairs, Wilson [30.0%, 90.3%] contains 50%.
        ci = stats.binomtest(4, 6).proportion_ci(method="wilson")
        assert loss["estimate"] == pytest.approx(4 / 6)
        assert loss["interval"] == pytest.approx([ci.low, ci.high])
        assert (loss["n"], loss["status"]) == (6, "inconclusive")
        assert v["candidate"] == "cand-m"
        # The stored run is re-decided the same way, without any endpoint.
        n_judge = stubs.judge.state.n_chat
        again = report(str(run), "--json", "--gate", "delta_mtbench>=-3", "--gate", "pairwise_loss<=50%")
        assert again.exit_code == 4 and json.loads(again.stdout)["verdict"] == v
        assert stubs.judge.state.n_chat == n_judge
        # The threshold on the interval's low end passes (`>=`, low == t).
        edge = report(str(run), "--json", "--gate", f"delta_mtbench>={d['low']!r}")
        assert edge.exit_code == 0 and gate_rows(edge) == [("delta_mtbench", "pass")]


def test_mtbench_terminal_block_and_bad_gate_before_any_request(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    private_user_cache(tmp_path, monkeypatch)
    with running_stubs(tmp_path) as stubs:
        bad = run_cli(*stubs.args("--gate", "kl<=0.1"))
        assert isinstance(bad.exception, UserError)
        assert "kl is a metric of mcq runs, not of mtbench runs" in str(bad.exception)
        assert stubs.base.state.n_chat == 0 and not (stubs.tmp / "runs").exists()
        args = [a for a in stubs.args("--gate", "pairwise_loss<=100%", "--mode", "single") if a != "--json"]
        res = run_cli(*args)
        assert res.exit_code == 4, res.output  # pairwise_loss is unavailable in a single-grading run
        assert "gates (95% intervals) — cand-m" in res.stdout
        assert "UNAVAILABLE" in res.stdout and "no pairwise grading in this run" in res.stdout


def test_tight_topk_and_both_directions_gate_on_their_stored_intervals(mcq_run: tuple[Path, dict[str, Any]]) -> None:
    run_dir, s = mcq_run
    tight = s["topk_kl"]["tight"]["kl_bc"]["mean_ci"]
    cb, js = s["option_kl_cb"]["mean_ci"], s["option_js"]["mean_ci"]
    # `<=` exactly at each interval's upper end passes; the estimate and interval are the summary's.
    res = report(str(run_dir), "--gate", f"topk_kl_tight<={tight['high']!r}", "--gate", f"kl_cb<={cb['high']!r}",
                 "--gate", f"js<={js['high']!r}", "--json")
    assert res.exit_code == 0, res.output
    got = {g["metric"]: (g["estimate"], g["interval"], g["n"], g["status"]) for g in verdict_of(res)["gates"]}
    assert got == {name: (ci["point"], [ci["low"], ci["high"]], ci["n"], "pass")
                   for name, ci in (("topk_kl_tight", tight), ("kl_cb", cb), ("js", js))}
