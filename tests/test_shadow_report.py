"""`servecmp shadow report`: hand-computed rates and tests, the database round trip, the CLI, and the
store's bookkeeping (writer queue, privacy, bad files)."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from scipy import stats
from typer.testing import CliRunner

from servecmp._cli.main import build_app
from servecmp.errors import UserError
from servecmp.shadow.render import render
from servecmp.shadow.store import (
    COUNTER_NAMES,
    Counters,
    PairRecord,
    PairWriter,
    RunInfo,
    open_readonly,
    register_run,
)
from servecmp.shadow.summary import (
    MaxMeasure,
    MeanMeasure,
    RateMeasure,
    ShadowCounters,
    ShadowSummary,
    load,
    load_summary,
    summarise,
)

HOUR = 1_700_000_000 - 1_700_000_000 % 3600  # the start of an hour (UTC)


def rec(request_id: str, target: str, ts: float, **fields: Any) -> PairRecord:
    base: dict[str, Any] = {
        "run_id": "run1", "request_id": request_id, "ts": ts, "source": "live", "endpoint": "chat",
        "stream": False, "target": target, "prompt_sha256": "ab" * 32, "primary_status": 200,
        "primary_latency_s": 0.1, "other_status": 200, "other_latency_s": 0.2, "prompt": f"prompt {request_id}",
    }
    base.update(fields)
    return PairRecord(**base)


def scenario(n_mismatch: int) -> list[PairRecord]:
    """10 requests both endpoints answered + 1 where the candidate timed out.

    Candidate: the first ``n_mismatch`` answers differ, with distinct edit distances 0.1, 0.2, ...
    Secondary: every answer matches. Requests 0-5 fall in the first hour, 6-10 in the next.
    """
    out = []
    for i in range(10):
        ts = HOUR + (i * 600 if i < 6 else 3600 + (i - 6) * 600)
        differs = i < n_mismatch
        out.append(rec(f"r{i}", "candidate", ts, exact_match=not differs,
                       edit_distance=round(0.1 * (i + 1), 1) if differs else 0.0,
                       first_diff=i if differs else None, kl_mean=0.01 * (i + 1), top1_agree=1.0))
        out.append(rec(f"r{i}", "secondary", ts, exact_match=True, edit_distance=0.0, kl_mean=0.0, top1_agree=1.0))
    ts = HOUR + 3600 + 3000
    out.append(rec("r10", "candidate", ts, other_error="timeout", other_status=None, other_latency_s=None))
    out.append(rec("r10", "secondary", ts, exact_match=True, edit_distance=0.0))
    return out


def rows_of(records: list[PairRecord]) -> list[dict[str, Any]]:
    return [dataclasses.asdict(r) for r in records]


def measure(summary: dict[str, Any], key: str) -> dict[str, Any]:
    """One measure of a summary read back from --json."""
    return next(m for m in summary["measures"] if m["key"] == key)


def rate(s: ShadowSummary, key: str) -> RateMeasure:
    m = s.measure(key)
    assert isinstance(m, RateMeasure)
    return m


def mean(s: ShadowSummary, key: str) -> MeanMeasure:
    m = s.measure(key)
    assert isinstance(m, MeanMeasure)
    return m


def test_rates_intervals_and_paired_tests() -> None:
    s = summarise(rows_of(scenario(8)), n_boot=200)
    mismatch = rate(s, "mismatch")
    assert (mismatch.candidate.count, mismatch.candidate.n) == (8, 10)  # the timeout is undefined
    ci = stats.binomtest(8, 10).proportion_ci(method="wilson")
    assert mismatch.candidate.low == pytest.approx(ci.low)
    assert mismatch.candidate.high == pytest.approx(ci.high)
    assert mismatch.secondary is not None
    assert (mismatch.secondary.count, mismatch.secondary.n) == (0, 11)
    excess = mismatch.excess
    assert excess is not None
    assert (excess.only_candidate, excess.only_secondary, excess.n) == (8, 0, 10)
    assert excess.diff == pytest.approx(0.8)
    assert excess.p_value == pytest.approx(2 * 0.5**8)  # exact McNemar: 8 of 8 discordant one way
    assert excess.significant is True
    assert excess.test == "exact McNemar"

    errors = rate(s, "error")
    assert (errors.candidate.count, errors.candidate.n) == (1, 11)
    assert errors.excess is not None
    assert errors.excess.p_value == 1.0 and errors.excess.significant is False

    edit = mean(s, "edit_distance")
    assert edit.candidate.mean == pytest.approx(sum(0.1 * k for k in range(1, 9)) / 10)
    # 8 distinct positive paired differences and 2 zeros (dropped): exact signed-rank p = 2 / 2^8.
    assert edit.excess is not None and edit.excess.p_value == pytest.approx(2 / 2**8)
    assert edit.excess.test == "Wilcoxon signed-rank"
    assert mean(s, "first_diff").excess is None  # defined on different subsets: not tested
    kl_max = s.measure("kl_max")
    assert isinstance(kl_max, MaxMeasure) and kl_max.candidate.max is None  # no row has it in this scenario


def test_not_significant_is_not_called_significant() -> None:
    s = summarise(rows_of(scenario(5)), n_boot=200)
    excess = rate(s, "mismatch").excess
    assert excess is not None
    assert excess.p_value == pytest.approx(2 * 0.5**5)  # 0.0625
    assert excess.significant is False


def test_without_secondary_there_is_no_floor_and_no_test() -> None:
    s = summarise([r for r in rows_of(scenario(8)) if r["target"] == "candidate"], n_boot=200)
    assert s.has_secondary is False
    assert all(m.secondary is None and m.excess is None for m in s.measures)


def test_worst_and_hourly() -> None:
    s = summarise(rows_of(scenario(8)), worst_n=3, n_boot=200)
    assert [w.request_id for w in s.worst] == ["r7", "r6", "r5"]
    assert s.worst[0].prompt == "prompt r7"
    first, second = s.hourly
    assert (first.requests, first.candidate_mismatch.rate) == (6, 1.0)
    assert second.requests == 5
    assert second.candidate_mismatch.rate == pytest.approx(2 / 4)  # r6, r7 differ; r8, r9 match
    assert (second.candidate_mismatch.count, second.candidate_mismatch.n) == (2, 4)
    assert second.candidate_errors.rate == pytest.approx(1 / 5)
    assert second.secondary_mismatch is not None and second.secondary_mismatch.rate == 0.0
    assert s.candidate_errors == {"timeout": 1}


def _write_db(path: Path, records: list[PairRecord], *, hash_only: bool = False) -> RunInfo:
    run = RunInfo(mode="serve", primary_url="http://127.0.0.1:1", candidate_url="http://127.0.0.1:2",
                  secondary_url="http://127.0.0.1:3", hash_only=hash_only, sample_rate=1.0, settings={},
                  run_id="run1")
    register_run(path, run)
    counters = Counters()
    counters.inc("requests", 11)
    counters.inc("dropped_queue_full", 2)
    writer = PairWriter(path, run, counters)
    writer.start()
    assert writer.submit(records)
    writer.close()
    return run


def test_database_round_trip(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    records = scenario(8)
    _write_db(db, records)
    rows, counters, runs = load(db)
    assert [r["request_id"] for r in rows] == [r.request_id for r in records]
    assert counters["requests"] == 11 and counters["dropped_queue_full"] == 2
    assert runs[0]["run_id"] == "run1"
    from_db = summarise(rows, counters=counters, n_boot=200)
    in_memory = summarise(rows_of(records), counters=counters, n_boot=200)
    assert from_db.measures == in_memory.measures


def test_cli_report_json_and_table(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    _write_db(db, scenario(8))
    app = build_app()
    runner = CliRunner()
    res = runner.invoke(app, ["shadow", "report", str(db), "--json", "--n-boot", "200"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert measure(data, "mismatch")["excess"]["p_value"] == pytest.approx(2 * 0.5**8)
    res = runner.invoke(app, ["shadow", "report", str(db), "--n-boot", "200"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    for text in ("Answer differs (exact text)", "80.0%", "differs (p=0.0078, McNemar)", "Worst-diverging", "Per hour",
                 "dropped queue full"):
        assert text in res.stdout
    res = runner.invoke(app, ["shadow", "report", str(tmp_path / "missing.db")])
    assert isinstance(res.exception, UserError)


def test_hash_only_rows_hold_no_text(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    _write_db(db, [rec("r0", "candidate", HOUR, primary_answer="secret answer", other_answer="other text",
                       request_json='{"p": "secret prompt"}')], hash_only=True)
    (row,) = load(db)[0]
    assert row["prompt"] is None and row["primary_answer"] is None and row["request_json"] is None
    assert row["prompt_sha256"] == "ab" * 32
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("h.db*"))
    assert b"secret" not in raw and b"prompt r0" not in raw


def test_writer_queue_overflow_is_counted(tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    run = RunInfo(mode="serve", primary_url="p", candidate_url="c", secondary_url=None, hash_only=False,
                  sample_rate=1.0, settings={})
    register_run(db, run)
    counters = Counters()
    writer = PairWriter(db, run, counters, queue_size=1)  # not started: nothing drains the queue
    assert writer.submit([rec("a", "candidate", HOUR)])
    assert not writer.submit([rec("b", "candidate", HOUR), rec("c", "candidate", HOUR)])
    assert counters.get("dropped_writer_full") == 2
    writer.start()
    writer.close()
    assert [r["request_id"] for r in load(db)[0]] == ["a"]


def test_bad_database_files(tmp_path: Path) -> None:
    not_db = tmp_path / "x.db"
    not_db.write_text("hello")
    with pytest.raises(UserError):
        open_readonly(not_db)
    with pytest.raises(UserError):
        open_readonly(tmp_path / "absent.db")
    blocker = tmp_path / "file"
    blocker.write_text("")
    run = RunInfo(mode="serve", primary_url="p", candidate_url="c", secondary_url=None, hash_only=False,
                  sample_rate=1.0, settings={})
    with pytest.raises(UserError):
        register_run(blocker / "sub" / "s.db", run)


def test_report_show_and_its_old_name_worst(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    _write_db(db, scenario(8))
    app = build_app()
    runner = CliRunner()
    for flag in ("--show", "--worst"):
        res = runner.invoke(app, ["shadow", "report", str(db), "--json", "--n-boot", "200", flag, "2"])
        assert res.exit_code == 0, res.output
        assert [w["request_id"] for w in json.loads(res.stdout)["worst"]] == ["r7", "r6"]
    res = runner.invoke(app, ["shadow", "report", str(db), "--show", "1", "--worst", "2"])
    assert isinstance(res.exception, UserError)


def test_summary_is_typed_versioned_and_reads_back(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    _write_db(db, scenario(8))
    summary = load_summary(db, worst_n=3, n_boot=200)
    data = summary.model_dump(mode="json")
    assert (data["schema"], data["version"], data["database"]) == ("servecmp.shadow_summary/3", 3, str(db))
    assert data["settings"] == {"confidence": 0.95, "alpha": 0.05, "n_boot": 200, "worst_n": 3}
    assert data["counters"]["requests"] == 11 and data["counters"]["dropped_queue_full"] == 2
    (run,) = data["runs"]
    assert (run["run_id"], run["mode"], run["baseline_url"], run["secondary_url"]) == (
        "run1", "serve", "http://127.0.0.1:1", "http://127.0.0.1:3")
    assert [m["kind"] for m in data["measures"]] == ["rate"] * 3 + ["mean"] * 10 + ["max"] * 2
    assert ShadowSummary.model_validate(json.loads(json.dumps(data))) == summary
    assert list(ShadowCounters.model_fields) == list(COUNTER_NAMES)  # one list of counters, kept in step


def test_cli_report_prints_what_load_summary_and_render_give(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    _write_db(db, scenario(8))
    res = CliRunner().invoke(build_app(), ["shadow", "report", str(db), "--n-boot", "200", "--show", "4"],
                             env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    out = io.StringIO()
    render(load_summary(db, worst_n=4, n_boot=200), Console(file=out, width=200), db)
    assert res.stdout == out.getvalue()


def test_servecmp_report_prints_the_same_as_shadow_report(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    _write_db(db, scenario(8))
    app = build_app()
    runner = CliRunner()
    for extra in (["--show", "3"], ["--show", "3", "--json"]):
        shadow = runner.invoke(app, ["shadow", "report", str(db), *extra], env={"COLUMNS": "200"})
        generic = runner.invoke(app, ["report", str(db), *extra], env={"COLUMNS": "200"})
        assert shadow.exit_code == generic.exit_code == 0, (shadow.output, generic.output)
        assert generic.stdout == shadow.stdout
    data = json.loads(generic.stdout)
    assert measure(data, "mismatch")["excess"]["p_value"] == pytest.approx(2 * 0.5**8)
    assert [w["request_id"] for w in data["worst"]] == ["r7", "r6", "r5"]


def test_a_summary_of_an_unknown_layout_is_one_line(tmp_path: Path) -> None:
    from servecmp.shadow.summary import parse_summary

    db = tmp_path / "s.db"
    _write_db(db, scenario(8))
    data = load_summary(db, worst_n=3, n_boot=200).model_dump(mode="json")
    assert parse_summary(data) == load_summary(db, worst_n=3, n_boot=200)
    # The layout before the schema id carried its version reads as "/<version>".
    old = parse_summary({**data, "schema": "servecmp.shadow_summary", "version": 3})
    assert old.schema_ == "servecmp.shadow_summary/3"
    with pytest.raises(UserError, match=r"^summary.json is a shadow summary of layout servecmp.shadow_summary/4, "
                                        r"which this servecmp does not read"):
        parse_summary({**data, "schema": "servecmp.shadow_summary/4"}, "summary.json")
    with pytest.raises(UserError, match=r"^x is not a shadow summary \(schema servecmp.mcq_summary/3\)$"):
        parse_summary({**data, "schema": "servecmp.mcq_summary/3"}, "x")


def test_report_takes_the_database_as_db_and_the_old_forms_with_a_note(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    _write_db(db, scenario(8))
    app = build_app()
    runner = CliRunner()
    new = runner.invoke(app, ["shadow", "report", "--db", str(db), "--json", "--n-boot", "200"])
    old = runner.invoke(app, ["shadow", "report", str(db), "--json", "--n-boot", "200"])
    assert new.exit_code == old.exit_code == 0
    assert json.loads(new.stdout) == json.loads(old.stdout)
    assert new.stderr == ""
    assert old.stderr == "servecmp: the database as an argument (shadow report DB) is deprecated; use --db DB\n"
    worst = runner.invoke(app, ["shadow", "report", "--db", str(db), "--json", "--n-boot", "200", "--worst", "2"])
    assert worst.stderr == "servecmp: --worst is deprecated; use --show\n"
    none = runner.invoke(app, ["shadow", "report"])
    assert isinstance(none.exception, UserError)
    helped = runner.invoke(app, ["shadow", "report", "--help"])
    assert "--db" in helped.stdout and "--worst" not in helped.stdout
