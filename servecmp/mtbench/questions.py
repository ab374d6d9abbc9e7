"""MT-Bench questions and reference answers: loading, selecting, sampling temperatures.

The 80 questions, the judge prompts and GPT-4's reference answers are vendored in
prompts/mt_bench/ (Apache-2.0, from FastChat) and read through importlib.resources. A user's own
question file uses the same JSONL layout (question_id, category, turns, optional reference).

References, as FastChat uses them: only math, reasoning and coding are judged against a reference.
With the vendored questions the vendored GPT-4 reference file is used (FastChat's
reference_answer/gpt-4.jsonl); with a user's question file, a `--references` file when given,
else the question's own `reference` field. A reference file wins over the `reference` field.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib.abc import Traversable
from importlib.resources import files
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from servecmp.errors import UserError, first_error
from servecmp.judges.prompts import NEED_REF_CATEGORIES
from servecmp.runstore import line_error, read_jsonl_objects, read_jsonl_rows

CATEGORIES = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")

#: FastChat's `temperature_config` (fastchat/llm_judge/common.py), without arena-hard-200.
TEMPERATURE_BY_CATEGORY: dict[str, float] = {
    "writing": 0.7,
    "roleplay": 0.7,
    "extraction": 0.0,
    "math": 0.0,
    "coding": 0.0,
    "reasoning": 0.0,
    "stem": 0.1,
    "humanities": 0.1,
}
#: FastChat's temperature for a category it has no entry for.
DEFAULT_TEMPERATURE = 0.7

QuestionId = int | str


class MtQuestion(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    question_id: QuestionId
    category: str
    turns: list[str]
    reference: list[str] | None = None
    required_temperature: float | None = None

    @field_validator("turns")
    @classmethod
    def _one_or_two_turns(cls, turns: list[str]) -> list[str]:
        if not 1 <= len(turns) <= 2:
            raise ValueError(f"MT-Bench questions have 1 or 2 turns, not {len(turns)}")
        return turns

    @property
    def temperature(self) -> float:
        if self.required_temperature is not None:
            return self.required_temperature
        return TEMPERATURE_BY_CATEGORY.get(self.category, DEFAULT_TEMPERATURE)

    @property
    def needs_reference(self) -> bool:
        return self.category in NEED_REF_CATEGORIES


def vendored(name: str) -> Traversable:
    return files("servecmp.prompts") / "mt_bench" / name


def load_questions(source: Traversable | Path | None = None) -> list[MtQuestion]:
    src = source if source is not None else vendored("question.jsonl")

    def question(n: int, obj: dict[str, Any]) -> MtQuestion:
        try:
            return MtQuestion.model_validate(obj)
        except ValidationError as exc:
            raise line_error(src, n, f"not an MT-Bench question ({first_error(exc)})") from exc

    questions = read_jsonl_rows(src, question, lambda q: q.question_id, "question_id")
    if not questions:
        raise UserError(f"{src} holds no questions")
    return questions


def load_reference_answers(source: Traversable | Path) -> dict[QuestionId, list[str]]:
    """Reference answers in FastChat's answer-file layout: question_id → turns of choice 0."""
    refs: dict[QuestionId, list[str]] = {}
    for n, obj in read_jsonl_objects(source):
        try:
            qid = obj["question_id"]
            turns = obj["choices"][0]["turns"]
        except (KeyError, IndexError, TypeError) as exc:
            raise line_error(source, n, "not a FastChat answer line (question_id, choices)") from exc
        if not isinstance(qid, int | str) or not isinstance(turns, list):
            raise line_error(source, n, "malformed question_id or turns")
        refs[qid] = [str(t) for t in turns]
    return refs


def with_references(questions: Sequence[MtQuestion], refs: dict[QuestionId, list[str]]) -> list[MtQuestion]:
    """Questions whose `reference` comes from `refs` where it has one (FastChat's precedence)."""
    return [
        q.model_copy(update={"reference": refs[q.question_id]}) if q.question_id in refs else q
        for q in questions
    ]


def select(
    questions: Sequence[MtQuestion], *, categories: Sequence[str] | None = None, limit: int | None = None
) -> list[MtQuestion]:
    """Questions of the given categories (file order), then the first `limit` of them."""
    chosen = list(questions)
    if categories:
        known = {q.category for q in questions}
        unknown = sorted(set(categories) - known)
        if unknown:
            raise UserError(
                f"unknown categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)} "
                f"(the question file has: {', '.join(sorted(known))})"
            )
        chosen = [q for q in chosen if q.category in set(categories)]
    if limit is not None:
        if limit < 1:
            raise UserError(f"--limit must be at least 1, got {limit}")
        chosen = chosen[:limit]
    return chosen


def fingerprint(questions: Sequence[MtQuestion]) -> str:
    """sha256 of the selected questions (with their references), to keep --resume on the same set."""
    blob = "\n".join(q.model_dump_json() for q in questions)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def write_questions(path: Path, questions: Sequence[MtQuestion]) -> None:
    """The run's own copy of its questions, so --resume needs nothing but the run directory."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(q.model_dump_json(exclude_none=True) + "\n" for q in questions), encoding="utf-8")
    tmp.replace(path)
