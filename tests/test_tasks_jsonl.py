"""Users' JSONL multiple-choice sets: rendering in the MMLU letter layout, and one UserError with
file:line for every malformed row."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from servecmp.errors import UserError
from servecmp.tasks.jsonl_mcq import load_jsonl


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def test_zero_shot_rendering_letters_ids_and_subjects(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "set.jsonl",
        [
            {"question": " Is the sky blue? ", "choices": ["yes", "no"], "answer": 0},
            "",
            {
                "question": "Pick C",
                "choices": ["a", "b", "c", "d", "e"],
                "answer": "c",
                "id": "q-7",
                "subject": "college_physics",
            },
            {
                "question": "Pick B",
                "choices": ["x", "y", "z"],
                "answer": "B",
                "id": 12,
                "subject": "my_own_topic",
            },
        ],
    )
    items = load_jsonl(path, task="jsonl:set")
    assert [it.prompt for it in items] == [
        "Is the sky blue?\nA. yes\nB. no\nAnswer:",
        "The following are multiple choice questions (with answers) about college physics.\n\n"
        "Pick C\nA. a\nB. b\nC. c\nD. d\nE. e\nAnswer:",
        "The following are multiple choice questions (with answers) about my own topic.\n\n"
        "Pick B\nA. x\nB. y\nC. z\nAnswer:",
    ]
    assert [it.item_id for it in items] == ["L1", "q-7", "12"]
    assert [it.gold for it in items] == [0, 2, 1]
    assert [it.continuations for it in items] == [
        [" A", " B"],
        [" A", " B", " C", " D", " E"],
        [" A", " B", " C"],
    ]
    assert [(it.subject, it.category) for it in items] == [
        (None, None),
        ("college_physics", "STEM"),
        ("my_own_topic", None),
    ]
    assert {(it.kind, it.task) for it in items} == {("letter", "jsonl:set")}


def test_few_shot_file_puts_every_row_before_each_question(tmp_path: Path) -> None:
    shots = write_jsonl(
        tmp_path / "shots.jsonl",
        [
            {"question": "1 + 1?", "choices": ["1", "2"], "answer": 1},
            {"question": "2 + 2?", "choices": ["4", "5"], "answer": "A"},
        ],
    )
    path = write_jsonl(tmp_path / "set.jsonl", [{"question": "3 + 3?", "choices": ["5", "6"], "answer": 1}])
    [item] = load_jsonl(path, task="jsonl:set", fewshot=shots)
    assert item.prompt == (
        "1 + 1?\nA. 1\nB. 2\nAnswer: B\n\n2 + 2?\nA. 4\nB. 5\nAnswer: A\n\n3 + 3?\nA. 5\nB. 6\nAnswer:"
    )


def test_26_choices_is_the_maximum(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "set.jsonl",
        [{"question": "q", "choices": list("abcdefghijklmnopqrstuvwxyz"), "answer": "Z"}],
    )
    [item] = load_jsonl(path, task="t")
    assert (item.gold, item.continuations[-1], item.prompt.splitlines()[-2]) == (25, " Z", "Z. z")


GOOD = {"question": "q", "choices": ["a", "b"], "answer": 0}


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("{not json", r"not valid JSON \(Expecting property name enclosed in double quotes at column 2\)"),
        ("[1, 2]", r"expected a JSON object, got list"),
        (json.dumps({"choices": ["a", "b"], "answer": 0}), r"missing `question`"),
        (json.dumps({"question": "q", "answer": 0}), r"missing `choices`"),
        (json.dumps({"question": "q", "choices": ["a", "b"]}), r"missing `answer`"),
        (json.dumps({**GOOD, "question": "  "}), r"`question` must be a non-empty string"),
        (json.dumps({**GOOD, "choices": "ab"}), r"`choices` must be a list of strings"),
        (json.dumps({**GOOD, "choices": ["a", 2]}), r"`choices` must be a list of strings"),
        (json.dumps({**GOOD, "choices": ["a"]}), r"`choices` must hold 2 to 26 strings, got 1"),
        (json.dumps({**GOOD, "choices": ["a"] * 27}), r"`choices` must hold 2 to 26 strings, got 27"),
        (json.dumps({**GOOD, "answer": 2}), r"`answer` 2 is out of range for 2 choices \(0-based index\)"),
        (json.dumps({**GOOD, "answer": -1}), r"`answer` -1 is out of range for 2 choices \(0-based index\)"),
        (json.dumps({**GOOD, "answer": "C"}), r"`answer` 'C' is not one of the letters A..B"),
        (json.dumps({**GOOD, "answer": True}), r"`answer` must be an index or a letter, got bool"),
        (json.dumps({**GOOD, "answer": 1.0}), r"`answer` must be an index or a letter, got float"),
        (json.dumps({**GOOD, "subject": 3}), r"`subject` must be a non-empty string when present"),
        (json.dumps({**GOOD, "id": ["x"]}), r"`id` must be a non-empty string or an integer when present"),
        (json.dumps({**GOOD, "id": "L1"}), r"duplicate id 'L1' \(first on line 1\)"),
    ],
)
def test_malformed_row_names_file_line_and_problem(tmp_path: Path, bad_line: str, message: str) -> None:
    path = write_jsonl(tmp_path / "set.jsonl", [GOOD, "", bad_line])
    with pytest.raises(UserError, match=rf"^{re.escape(str(tmp_path))}/set.jsonl:3: {message}$"):
        load_jsonl(path, task="t")


def test_malformed_few_shot_file_is_named(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "set.jsonl", [GOOD])
    shots = write_jsonl(tmp_path / "shots.jsonl", [{"question": "q"}])
    with pytest.raises(UserError, match=r"shots.jsonl:1: missing `choices`$"):
        load_jsonl(path, task="t", fewshot=shots)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"^.*absent.jsonl not found$"):
        load_jsonl(tmp_path / "absent.jsonl", task="t")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "set.jsonl"
    path.write_bytes(b'{"question": "caf\xe9"}\n')
    with pytest.raises(UserError, match=r"set.jsonl is not UTF-8 text"):
        load_jsonl(path, task="t")
