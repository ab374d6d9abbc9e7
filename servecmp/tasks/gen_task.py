"""Tasks with generated, verifiable answers (`servecmp gen`): task names → `GenItem`s.

gsm8k          lm-eval's `gsm8k` layout, 5-shot (servecmp.tasks.gsm8k): --data-dir DIR with
               train.jsonl/test.jsonl (or a local copy of the hub dataset), else the vendored sample;
               source "hf" reads openai/gsm8k from the hub
jsonl:PATH     the user's own tasks, one object a line (servecmp.tasks.gen_jsonl)
humaneval      HumanEval (the optional extra ``code``; servecmp.tasks.humaneval): zero-shot completions
               graded by running each program's unit tests, only with --allow-code-execution;
               --data-dir a HumanEval-format JSONL file instead of the packaged one

A `GenItem` carries both prompt layouts (a completions prompt and chat messages) so one item list
serves every endpoint, and the grader that decides its correctness. The run writes the items to
its directory (items.jsonl), so a report never loads the task again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

JSONL_PREFIX = "jsonl:"
GEN_TASKS: tuple[str, ...] = ("gsm8k", "humaneval", f"{JSONL_PREFIX}PATH")
#: The grader name of lm-eval's gsm8k scoring: strict ("#### N") and flexible (last number) extraction.
GSM8K_GRADER = "gsm8k"
#: The grader of code tasks: the completion passes the problem's unit tests (servecmp.tasks.code_exec).
CODE_GRADER = "humaneval"


class GenItem(BaseModel):
    """One item of a generation task, as written to a run's items.jsonl."""

    model_config = ConfigDict(extra="forbid")

    item_id: str
    #: What the report shows as the question (the last user turn, without exemplars).
    question: str
    #: The reference answer the grader compares with (GSM8K: the number after "#### ").
    gold: str
    #: The reference's worked solution when the task has one (GSM8K), for the report.
    solution: str | None = None
    #: The completions prompt; None when the item only exists as chat messages.
    prompt: str | None
    #: The chat layout: exemplars as prior turns, the question last.
    messages: list[dict[str, str]]
    #: Stop strings sent with every request.
    stop: list[str] = Field(default_factory=list)
    #: "gsm8k", "humaneval" or a grader spec of servecmp.tasks.extract.parse_grader (number, exact,
    #: regex:..., choice).
    grader: str
    #: Code tasks: the unit tests and the function they check (so a report or a resume never needs
    #: the task's files again).
    tests: str | None = None
    entry_point: str | None = None


@dataclass(frozen=True)
class GenTask:
    name: str
    items: list[GenItem]
    #: Where the items came from, for the manifest and the report.
    source: str
    #: Exemplars in every prompt.
    fewshot: int
    #: Items the task holds before --limit / --sample.
    n_available: int


def fingerprint(items: Sequence[GenItem]) -> str:
    """Identifies the item set and its rendering; order-independent."""
    rows = sorted(json.dumps(i.model_dump(mode="json"), sort_keys=True) for i in items)
    return hashlib.sha256("\n".join(rows).encode("utf-8")).hexdigest()[:16]
