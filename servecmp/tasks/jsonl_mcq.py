"""Users' own multiple-choice sets: one JSON object per line, rendered in the MMLU letter layout.

    {"question": "...", "choices": ["...", "..."], "answer": 1, "subject": "optional", "id": "optional"}

`answer` is the gold index (0-based) or its letter ("B"). `choices` holds 2 to 26 strings.
Items are zero-shot unless a few-shot file of the same format is given: then every row of that
file (or its first N rows, `--fewshot N`), in order, is an exemplar for every item. A row with a
`subject` gets the MMLU subject header line; a row without one starts straight with its
exemplars or question.
Items without an `id` are numbered by their line number in the file ("L<line>").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from servecmp.errors import UserError
from servecmp.runstore import line_error, read_jsonl_rows
from servecmp.tasks.items import McqItem
from servecmp.tasks.letter_format import (
    LETTER_FORMAT,
    LETTERS,
    MAX_CHOICES,
    LetterQuestion,
    letter_continuations,
    parse_letter,
    render_prompt,
    subject_header,
)
from servecmp.tasks.mmlu_subjects import category_of

JSONL_FORMAT = (
    f"jsonl-mcq-v1|header only when the row has a subject|exemplars=all few-shot rows|{LETTER_FORMAT}"
)


@dataclass(frozen=True)
class JsonlRow:
    line: int
    item_id: str
    subject: str | None
    question: LetterQuestion


def _gold(value: Any, n_choices: int, path: Path, line: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value < n_choices:
            return value
        raise line_error(path, line, f"`answer` {value} is out of range for {n_choices} choices (0-based index)")
    if isinstance(value, str):
        gold = parse_letter(value, n_choices)
        if gold is not None:
            return gold
        raise line_error(
            path, line, f"`answer` {value!r} is not one of the letters {LETTERS[0]}..{LETTERS[n_choices - 1]}"
        )
    raise line_error(path, line, f"`answer` must be an index or a letter, got {type(value).__name__}")


def _row(obj: dict[str, Any], path: Path, line: int) -> JsonlRow:
    for key in ("question", "choices", "answer"):
        if key not in obj:
            raise line_error(path, line, f"missing `{key}`")
    question, choices = obj["question"], obj["choices"]
    if not isinstance(question, str) or not question.strip():
        raise line_error(path, line, "`question` must be a non-empty string")
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise line_error(path, line, "`choices` must be a list of strings")
    if not 2 <= len(choices) <= MAX_CHOICES:
        raise line_error(path, line, f"`choices` must hold 2 to {MAX_CHOICES} strings, got {len(choices)}")
    subject = obj.get("subject")
    if subject is not None and (not isinstance(subject, str) or not subject.strip()):
        raise line_error(path, line, "`subject` must be a non-empty string when present")
    raw_id = obj.get("id")
    if raw_id is not None and (isinstance(raw_id, bool) or not isinstance(raw_id, str | int) or raw_id == ""):
        raise line_error(path, line, "`id` must be a non-empty string or an integer when present")
    return JsonlRow(
        line=line,
        item_id=f"L{line}" if raw_id is None else str(raw_id),
        subject=subject,
        question=LetterQuestion(
            question=question, choices=tuple(choices), answer=_gold(obj["answer"], len(choices), path, line)
        ),
    )


def read_rows(path: Path) -> list[JsonlRow]:
    """Every row of a JSONL MCQ file, validated; blank lines are skipped."""
    return read_jsonl_rows(path, lambda line, obj: _row(obj, path, line), lambda row: row.item_id, "id")


def load_jsonl(path: Path, *, task: str, fewshot: Path | None = None, n_shots: int | None = None) -> list[McqItem]:
    """The items of `path`; with a `fewshot` file, its rows (the first `n_shots` of them, when
    given) are the exemplars of every item."""
    shots = [row.question for row in read_rows(fewshot)] if fewshot is not None else []
    if n_shots is not None:
        if n_shots > len(shots):
            have = f"{fewshot} has {len(shots)} rows" if fewshot is not None else "no few-shot file was given"
            raise UserError(f"--fewshot {n_shots}: {have}")
        shots = shots[:n_shots]
    return [
        McqItem(
            item_id=row.item_id,
            task=task,
            kind="letter",
            prompt=render_prompt(subject_header(row.subject) if row.subject else "", shots, row.question),
            continuations=letter_continuations(len(row.question.choices)),
            gold=row.question.answer,
            subject=row.subject,
            category=category_of(row.subject),
            question=row.question.question,
            options=list(row.question.choices),
        )
        for row in read_rows(path)
    ]
