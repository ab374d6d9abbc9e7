"""Every stored summary carries a versioned schema id and is checked on load: a newer version (a
file from a later servecmp) is one line that says so, exit 2 from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from servecmp.errors import UserError
from servecmp.runstore import check_schema


def test_check_schema_accepts_what_it_reads_and_names_what_it_does_not(tmp_path: Path) -> None:
    f = tmp_path / "summary.json"
    readable = ("servecmp.x_summary/1", "servecmp.x_summary/2")
    assert check_schema({"schema": "servecmp.x_summary/2"}, f, readable) == "servecmp.x_summary/2"
    with pytest.raises(UserError) as newer:
        check_schema({"schema": "servecmp.x_summary/3"}, f, readable)
    assert str(newer.value) == (f"{f}: servecmp.x_summary/3 was written by a newer servecmp (this one reads "
                                "servecmp.x_summary/1, servecmp.x_summary/2): upgrade servecmp to read it")
    with pytest.raises(UserError, match=r"a servecmp.y_summary/1 file, not one of servecmp.x_summary/1"):
        check_schema({"schema": "servecmp.y_summary/1"}, f, readable)
    with pytest.raises(UserError, match="no schema id"):
        check_schema({"version": 3}, f, readable)


def _write(tmp_path: Path, data: dict[str, object]) -> Path:
    f = tmp_path / "summary.json"
    f.write_text(json.dumps(data))
    return f


def test_mcq_summary_and_comparison_of_a_newer_version_are_refused(tmp_path: Path) -> None:
    from servecmp.mcq.compare import load_comparison
    from servecmp.mcq.summary import load_summary

    f = _write(tmp_path, {"schema": "servecmp.mcq_summary/4", "version": 4})
    with pytest.raises(UserError, match="mcq_summary/4 was written by a newer servecmp"):
        load_summary(f)
    f = _write(tmp_path, {"schema": "servecmp.mcq_comparison/2", "candidates": []})
    with pytest.raises(UserError, match="mcq_comparison/2 was written by a newer servecmp"):
        load_comparison(f)


def test_mtbench_summary_and_comparison_are_checked(tmp_path: Path) -> None:
    from servecmp.mtbench.report import load_stored

    for schema in ("servecmp.mtbench_summary/2", "servecmp.mtbench_comparison/2"):
        f = _write(tmp_path, {"schema": schema})
        with pytest.raises(UserError, match=f"{schema} was written by a newer servecmp"):
            load_stored(f)
    with pytest.raises(UserError, match="not a valid MT-Bench summary"):
        load_stored(_write(tmp_path, {"schema": "servecmp.mtbench_summary/1"}))
