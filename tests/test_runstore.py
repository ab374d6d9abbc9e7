"""Run store: appends survive a torn write; manifests are written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from servecmp.errors import UserError
from servecmp.mcq.records import McqRecord
from servecmp.runstore import JsonlAppender, iter_jsonl, load_records, read_json, write_json_atomic


def _rec(i: int) -> McqRecord:
    return McqRecord(item_id=f"x/{i}", endpoint="baseline", task="t", gold=0,
                     option_logprobs=[-0.5, float("-inf")], chosen=0)


def test_torn_last_line_is_skipped_and_repaired(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    with JsonlAppender(path) as app:
        app.append(_rec(0))
        app.append(_rec(1))
    # A process killed mid-write leaves half a line with no newline.
    with path.open("a") as fh:
        fh.write('{"item_id": "x/2", "endp')
    assert [r["item_id"] for r in iter_jsonl(path)] == ["x/0", "x/1"]
    with JsonlAppender(path) as app:
        app.append(_rec(3))
    lines = path.read_text().splitlines()
    assert [json.loads(line)["item_id"] for line in lines] == ["x/0", "x/1", "x/3"]


def test_minus_infinity_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    with JsonlAppender(path) as app:
        app.append(_rec(0))
    (back,) = load_records(path, McqRecord)
    assert back.option_logprobs[0] == -0.5
    assert back.option_logprobs[1] == float("-inf")


def test_atomic_json_and_bad_json(tmp_path: Path) -> None:
    p = tmp_path / "m.json"
    write_json_atomic(p, {"a": 1})
    assert read_json(p) == {"a": 1}
    assert not (tmp_path / "m.json.tmp").exists()
    p.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        read_json(p)
    with pytest.raises(UserError, match="not found"):
        read_json(tmp_path / "missing.json")


def test_invalid_record_line_is_user_error(tmp_path: Path) -> None:
    p = tmp_path / "r.jsonl"
    p.write_text('{"item_id": "a"}\n')
    with pytest.raises(UserError, match="line 1 is not a valid record"):
        load_records(p, McqRecord)
