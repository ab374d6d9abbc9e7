"""`servecmp report PATH`: any stored run, from disk, with no endpoint and no key.

The MCQ case runs for real (a run made against the stubs, then reported with the stubs gone);
for MT-Bench runs and shadow databases this checks the dispatch only (their owners test their
summaries and renderers).
"""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from servecmp._cli.main import build_app
from servecmp.errors import UserError
from tests.stub_openai import StubServer, StubState
from tests.test_mcq_cli import assert_one_line_error, only_run_dir, servecmp, write_items


def report(*args: str) -> Any:
    return CliRunner().invoke(build_app(), ["report", *args], env={"COLUMNS": "200"})


@pytest.fixture(scope="module")
def mcq_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A finished MCQ run of 12 items (two subjects) and the summary `servecmp mcq --json` printed."""
    tmp = tmp_path_factory.mktemp("mcq")
    data = tmp / "items.jsonl"
    write_items(data, 12)
    runs = tmp / "runs"
    with StubServer(StubState(model="base")) as b, StubServer(StubState(model="cand")) as c:
        proc = servecmp("mcq", "--baseline", b.url, "--candidate", c.url, "--task", f"jsonl:{data}",
                        "--runs-dir", str(runs), "--top-k", "5", "--json")
    assert proc.returncode == 0, proc.stderr
    return only_run_dir(runs), json.loads(proc.stdout)


def test_json_report_equals_the_stored_summary(mcq_run: tuple[Path, dict[str, Any]]) -> None:
    run_dir, printed = mcq_run
    stored = json.loads((run_dir / "summary.json").read_text())
    # The endpoints are gone; the report recomputes every number from the records alone.
    result = report(str(run_dir), "--json")
    assert result.exit_code == 0, result.output
    reported = json.loads(result.stdout)
    assert reported == stored == printed
    assert (reported["schema"], reported["version"]) == ("servecmp.mcq_summary/3", 3)
    assert reported["run"]["run_dir"] == str(run_dir) and reported["run"]["complete"] is True
    assert reported["run"]["n_items_planned"] == reported["n_items"] == 12
    assert set(reported["run"]["endpoints"]) == {"baseline", "candidate"}


def test_text_report_shows_the_stored_numbers(mcq_run: tuple[Path, dict[str, Any]]) -> None:
    run_dir, s = mcq_run
    result = report(str(run_dir))
    assert result.exit_code == 0, result.output
    out = result.stdout
    acc, fl = s["accuracy"], s["flips"]

    def pct(x: float) -> str:
        return f"{100 * x:.1f}%"

    rpi = s["run"]["requests_per_item"]
    assert f"items compared: 12; requests/item: baseline {rpi['baseline']:.2f}, candidate {rpi['candidate']:.2f}" \
        in out
    assert f"{pct(acc['baseline']['point'])} [{pct(acc['baseline']['low'])}, {pct(acc['baseline']['high'])}]" in out
    rate = fl["rate"]
    assert f"{pct(rate['rate'])} [{pct(rate['low'])}, {pct(rate['high'])}]  ({fl['flips']}/12)" in out
    assert "answer changes (any option)" in out and f"({s['answer_changes']['count']}/12)" in out
    assert f"{s['option_kl']['mean']:.4f}" in out
    # Both subjects listed: rich pads the title to the table's width, with nothing after it.
    assert re.search(r"By subject, most flips first *\n", out) and "most flips first (top" not in out


def test_show_caps_the_subject_rows(mcq_run: tuple[Path, dict[str, Any]]) -> None:
    run_dir, s = mcq_run
    worst = s["groups"]["subject"][0]["group"]
    other = s["groups"]["subject"][1]["group"]
    one = report(str(run_dir), "--show", "1")
    assert one.exit_code == 0, one.output
    assert "By subject, most flips first (top 1 of 2)" in one.stdout
    table = one.stdout.split("By subject", 1)[1]
    assert worst in table and other not in table.split("Reading:", 1)[0]
    none = report(str(run_dir), "--show", "0")
    assert "By subject" not in none.stdout


def test_report_of_an_unfinished_mcq_run_says_so(mcq_run: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    run_dir, _ = mcq_run
    copy = tmp_path / "run"
    copy.mkdir()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "finished_at": None}))
    lines = (run_dir / "records.jsonl").read_text().splitlines(keepends=True)
    (copy / "records.jsonl").write_text("".join(lines[:20]))  # 10 items each, if both kept pace
    result = report(str(copy), "--json")
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)
    # Items compared are those both endpoints answered (the endpoints run apart, in any order).
    kept = [json.loads(ln) for ln in lines[:20]]
    both = {r["item_id"] for r in kept if r["endpoint"] == "baseline"} & {
        r["item_id"] for r in kept if r["endpoint"] == "candidate"}
    assert s["n_items"] == len(both) and s["run"]["complete"] is False
    assert s["run"]["n_items_planned"] == 12
    text = report(str(copy))
    assert f"items compared: {s['n_items']} of 12 planned (run not finished)" in text.stdout


def test_bad_paths_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "manifest.json").write_text(json.dumps({"kind": "training"}))
    assert_one_line_error(servecmp("report", str(tmp_path)), "not a servecmp run directory (no manifest.json)")
    assert_one_line_error(servecmp("report", str(tmp_path / "notes.txt")),
                          "is neither a run directory nor a shadow database")
    assert_one_line_error(servecmp("report", str(tmp_path / "absent")), f"{tmp_path / 'absent'} not found")
    assert_one_line_error(servecmp("report", str(tmp_path / "odd")),
                          "unknown run kind 'training' (servecmp report reads mcq, mtbench and gen runs)")


class _Dumpable:
    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def model_dump(self, mode: str = "python") -> dict[str, Any]:
        assert mode == "json"
        return self.data


def test_mtbench_run_dispatches_to_its_summary_and_renderer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import servecmp.mtbench.render as mt_render
    import servecmp.mtbench.run as mt_run

    (tmp_path / "manifest.json").write_text(json.dumps({"kind": "mtbench", "version": 2}))
    calls: list[tuple[str, Any]] = []
    summary = _Dumpable({"delta": {"point": -0.25}})

    def load_result(run_dir: Path, *, show: int) -> _Dumpable:
        calls.append(("load", (run_dir, show)))
        return summary

    # load_result: a one-candidate run's MtBenchSummary, or a multi-candidate run's MtBenchComparison.
    monkeypatch.setattr(mt_run, "load_result", load_result)
    monkeypatch.setattr(mt_render, "render", lambda console, s, *, show: calls.append(("render", (s, show))))
    as_json = report(str(tmp_path), "--json", "--show", "3")
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout) == {"delta": {"point": -0.25}}
    text = report(str(tmp_path))
    assert text.exit_code == 0, text.output
    assert calls == [("load", (tmp_path, 3)), ("load", (tmp_path, mt_run.DEFAULT_SHOW)),
                     ("render", (summary, mt_run.DEFAULT_SHOW))]


def test_shadow_database_dispatches_to_its_summary_and_renderer(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import servecmp.shadow.report as sh

    db = tmp_path / "shadow.db"
    sqlite3.connect(db).execute("create table t (x)").connection.close()
    calls: list[tuple[str, Any]] = []
    summary = _Dumpable({"pairs": 7})

    def load_summary(path: Path, *, worst_n: int, n_boot: int) -> _Dumpable:
        calls.append(("load", (path, worst_n, n_boot)))
        return summary

    monkeypatch.setattr(sh, "load_summary", load_summary)
    monkeypatch.setattr(sh, "render", lambda s, console, path: calls.append(("render", (s, path))))
    as_json = report(str(db), "--json", "--show", "4")
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout) == {"pairs": 7}
    assert report(str(db)).exit_code == 0
    assert calls == [("load", (db, 4, 2000)), ("load", (db, 10, 2000)), ("render", (summary, db))]


def test_report_of_a_directory_without_records_is_one_line(tmp_path: Path,
                                                          mcq_run: tuple[Path, dict[str, Any]]) -> None:
    run_dir, _ = mcq_run
    (tmp_path / "manifest.json").write_text((run_dir / "manifest.json").read_text())
    result = report(str(tmp_path))
    assert isinstance(result.exception, UserError)
    assert str(result.exception) == f"{tmp_path}: no item has been answered by both endpoints yet"
