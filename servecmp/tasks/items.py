"""Dataset items as task loaders yield them: `McqItem`, one multiple-choice question already rendered.

A lower layer: task loaders (servecmp.tasks.*) build these, the MCQ feature scores them, and nothing
here knows about runs, endpoints or scoring.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

#: How a task is scored.
#: - "letter": the prompt ends with "Answer:" and each option is one next token (" A", " B", ...);
#:   one request reads the top-k logprobs at the answer position (MMLU-style).
#: - "continuation": each option is a continuation of the context and is scored by its summed
#:   logprob, as lm-eval scores ARC / HellaSwag / PIQA / Winogrande.
ScoringKind = Literal["letter", "continuation"]


class McqItem(BaseModel):
    """One multiple-choice question, already rendered into the text the model sees."""

    model_config = ConfigDict(frozen=True)

    item_id: str
    task: str
    kind: ScoringKind
    #: Letter tasks: the full prompt, ending just before the answer letter.
    #: Continuation tasks: the shared context (Winogrande: unused, see `contexts`).
    prompt: str
    #: The text scored for each option, e.g. [" A", " B", " C", " D"] or [" a rock", " a tree"].
    continuations: list[str]
    gold: int
    subject: str | None = None
    category: str | None = None
    #: Per-option contexts when options differ in their context rather than their continuation
    #: (Winogrande's partial scoring). Empty means every option shares `prompt`.
    contexts: list[str] = Field(default_factory=list)
    #: The question and option texts as a reader sees them (no exemplars, no letters): what reports
    #: show, written to the run's items.jsonl so a report never reloads the task or parses a prompt.
    question: str = ""
    options: list[str] = Field(default_factory=list)

    def context_for(self, option: int) -> str:
        return self.contexts[option] if self.contexts else self.prompt
