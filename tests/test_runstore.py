"""Run store: appends survive a torn write; manifests are written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from servecmp.errors import UserError
from servecmp.mcq.records import McqRecord
from servecmp.runstore import (
    JsonlAppender,
    iter_jsonl,
    line_error,
    load_records,
    read_json,
    read_jsonl_objects,
    write_json_atomic,
)


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


def test_jsonl_inputs_share_one_reader_and_one_error_format(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    # Blank lines are skipped but counted; U+2028 inside a string is not a line break in JSON Lines.
    path.write_text('{"a": 1}\n\n  \n{"b": "x\u2028y"}\n', encoding="utf-8")
    assert list(read_jsonl_objects(path)) == [(1, {"a": 1}), (4, {"b": "x\u2028y"})]
    cases = [
        (b'{"a": 1}\n[1, 2]\n', f"{path}:2: expected a JSON object, got list"),
        (b'{"a": 1}\n{"a": \n', f"{path}:2: not valid JSON (Expecting value at column 7)"),
        # Line 1 is 9 bytes with its newline, so the bad byte (the third of line 2) is byte 11.
        (b'{"a": 1}\n{"\xff": 1}\n', f"{path} is not UTF-8 text (invalid start byte at byte 11)"),
    ]
    for data, message in cases:
        path.write_bytes(data)
        with pytest.raises(UserError) as err:
            list(read_jsonl_objects(path))
        assert str(err.value) == message
    with pytest.raises(UserError) as err:
        list(read_jsonl_objects(tmp_path / "absent.jsonl"))
    assert str(err.value) == f"{tmp_path / 'absent.jsonl'} not found"
    with pytest.raises(UserError) as err:
        list(read_jsonl_objects(tmp_path))
    assert str(err.value) == f"cannot read {tmp_path}: Is a directory"
    assert str(line_error(path, 3, "duplicate id 'q'")) == f"{path}:3: duplicate id 'q'"
