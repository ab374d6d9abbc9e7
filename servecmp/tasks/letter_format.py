"""The MMLU letter layout shared by MMLU and users' own JSONL sets.

lm-eval's `mmlu` task and Hendrycks' evaluate.py render the same text except for two details;
servecmp follows lm-eval on both so its prompts equal what lm-eval sends: the question is
stripped of surrounding whitespace (1.3k MMLU questions have some) and the header names the
subject with single spaces ("about abstract algebra", where evaluate.py writes two).
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass

LETTERS = string.ascii_uppercase
MAX_CHOICES = len(LETTERS)

#: Describes the rendering below; its hash goes into run manifests, so edit it whenever the
#: rendering changes and old runs will refuse to resume against new prompts.
LETTER_FORMAT = (
    "letter-v1|header=The following are multiple choice questions (with answers) about {subject words}.\\n\\n"
    "|question={question.strip()}\\n{L}. {choice}...\\nAnswer:|exemplar={question block} {L}\\n\\n"
    "|continuations= {L}"
)


@dataclass(frozen=True)
class LetterQuestion:
    question: str
    choices: tuple[str, ...]
    answer: int


def subject_header(subject: str) -> str:
    return (
        f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
    )


def question_block(q: LetterQuestion) -> str:
    """The question and its lettered options, ending with "Answer:" (no trailing space)."""
    options = "".join(f"\n{LETTERS[i]}. {choice}" for i, choice in enumerate(q.choices))
    return f"{q.question.strip()}{options}\nAnswer:"


def exemplar_block(q: LetterQuestion) -> str:
    return f"{question_block(q)} {LETTERS[q.answer]}\n\n"


def render_prompt(header: str, exemplars: Sequence[LetterQuestion], q: LetterQuestion) -> str:
    return header + "".join(exemplar_block(ex) for ex in exemplars) + question_block(q)


def letter_continuations(n_choices: int) -> list[str]:
    return [f" {LETTERS[i]}" for i in range(n_choices)]


def parse_letter(value: str, n_choices: int) -> int | None:
    """The index of an answer letter ("B" → 1), or None if it is not one of the first n letters."""
    letter = value.strip().upper()
    if len(letter) == 1 and letter in LETTERS[:n_choices]:
        return LETTERS.index(letter)
    return None
