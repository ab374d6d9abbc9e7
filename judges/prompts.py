"""MT-Bench's judge prompts: loading, choosing the right one, and rendering the chat messages.

The choice mirrors FastChat's gen_judgment.py: math, reasoning and coding questions are judged
against a reference answer; turn 2 is judged with the multi-turn prompts, which show the whole
conversation and ask about the second answer. The messages are what FastChat sends an OpenAI
judge: the prompt's system message, then the rendered user prompt.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.abc import Traversable
from importlib.resources import files
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ValidationError

from servecmp.errors import UserError, first_error
from servecmp.runstore import jsonl_objects, line_error

JudgeKind = Literal["single", "pairwise"]

#: FastChat's NEED_REF_CATS (without its arena-hard-200 entry, which is not an MT-Bench category).
NEED_REF_CATEGORIES = frozenset({"math", "reasoning", "coding"})

_PROMPT_NAMES: dict[tuple[JudgeKind, bool, bool], str] = {
    # (kind, reference-guided, multi-turn) -> prompt name in judge_prompts.jsonl
    ("single", False, False): "single-v1",
    ("single", True, False): "single-math-v1",
    ("single", False, True): "single-v1-multi-turn",
    ("single", True, True): "single-math-v1-multi-turn",
    ("pairwise", False, False): "pair-v2",
    ("pairwise", True, False): "pair-math-v1",
    ("pairwise", False, True): "pair-v2-multi-turn",
    ("pairwise", True, True): "pair-math-v1-multi-turn",
}

Message = dict[str, str]


class JudgePrompt(BaseModel):
    name: str
    type: Literal["single", "pairwise"]
    category: str
    system_prompt: str
    prompt_template: str
    output_format: str


def vendored_judge_prompts() -> Traversable:
    return files("servecmp.prompts") / "mt_bench" / "judge_prompts.jsonl"


@dataclass(frozen=True)
class JudgePrompts:
    by_name: dict[str, JudgePrompt]
    #: sha256 of the file's bytes, recorded in a run's manifest so --resume refuses other prompts.
    fingerprint: str

    def choose(self, kind: JudgeKind, *, reference_guided: bool, multi_turn: bool) -> JudgePrompt:
        return self.by_name[_PROMPT_NAMES[(kind, reference_guided, multi_turn)]]


def load_judge_prompts(source: Traversable | Path | None = None) -> JudgePrompts:
    src = source if source is not None else vendored_judge_prompts()
    try:
        data = src.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{src} not found") from None
    by_name: dict[str, JudgePrompt] = {}
    # Parsed from the bytes the fingerprint is taken of, not from a second read of the file.
    for n, obj in jsonl_objects(io.BytesIO(data), src):
        try:
            prompt = JudgePrompt.model_validate(obj)
        except ValidationError as exc:
            raise line_error(src, n, f"not a judge prompt ({first_error(exc)})") from exc
        by_name[prompt.name] = prompt
    missing = sorted(set(_PROMPT_NAMES.values()) - set(by_name))
    if missing:
        raise UserError(f"{src}: missing judge prompts {', '.join(missing)}")
    return JudgePrompts(by_name=by_name, fingerprint=hashlib.sha256(data).hexdigest())


def _messages(prompt: JudgePrompt, user_prompt: str) -> list[Message]:
    return [{"role": "system", "content": prompt.system_prompt}, {"role": "user", "content": user_prompt}]


def _reference_kwargs(reference: Sequence[str] | None, multi_turn: bool) -> dict[str, str]:
    if reference is None:
        return {}
    kwargs = {"ref_answer_1": reference[0]}
    if multi_turn:
        kwargs["ref_answer_2"] = reference[1] if len(reference) > 1 else ""
    return kwargs


def _render(
    prompt: JudgePrompt,
    turn: int,
    reference: Sequence[str] | None,
    /,
    **turns: Sequence[str],
) -> list[Message]:
    """The messages of `prompt` with each of `turns` (questions, answers) filled in.

    A turn-1 prompt takes `{name}` (the first turn); the turn-2 one takes `{name}_1` and `{name}_2`.
    """
    if turn == 2:
        fields = {f"{name}_{i}": values[i - 1] for name, values in turns.items() for i in (1, 2)}
    else:
        fields = {name: values[0] for name, values in turns.items()}
    user = prompt.prompt_template.format(**fields, **_reference_kwargs(reference, turn == 2))
    return _messages(prompt, user)


def render_single(
    prompt: JudgePrompt,
    questions: Sequence[str],
    answers: Sequence[str],
    *,
    turn: int,
    reference: Sequence[str] | None = None,
) -> list[Message]:
    """Messages asking for a 1-10 rating of `answers[turn - 1]` (turn 2 shows the whole dialogue)."""
    return _render(prompt, turn, reference, question=questions, answer=answers)


def render_pair(
    prompt: JudgePrompt,
    questions: Sequence[str],
    answers_a: Sequence[str],
    answers_b: Sequence[str],
    *,
    turn: int,
    reference: Sequence[str] | None = None,
) -> list[Message]:
    """Messages asking which of assistant A and assistant B answered better."""
    return _render(prompt, turn, reference, question=questions, answer_a=answers_a, answer_b=answers_b)
