"""The records an MT-Bench run writes, in FastChat's layouts so existing MT-Bench tooling reads them.

- `AnswerRecord`: one line of model_answer/<model>.jsonl, FastChat's answer file (question_id,
  answer_id, model_id, choices[{index, turns}], tstamp) plus a `servecmp` block FastChat ignores.
- `SingleJudgment`: one line of model_judgment/<judge>_single.jsonl, FastChat's single-grading
  layout, with `score` null (not -1) when there is no valid rating and `status` saying why.
- `PairJudgment`: one line of model_judgment/<judge>_pair.jsonl, FastChat's pairwise layout
  (g1 = model_1 shown as A, g2 = swapped), plus the per-game status.
A record may be written again for the same key (a resumed run retrying an error); readers keep the
last one.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from servecmp.mtbench.questions import QuestionId
from servecmp.records import EndpointRole

JudgmentStatus = Literal["ok", "unparseable", "out_of_range", "error"]
GameWinner = Literal["model_1", "model_2", "tie", "error"]
GameStatus = Literal["ok", "unparseable", "error"]


class AnswerChoice(BaseModel):
    index: int = 0
    turns: list[str]


class AnswerMeta(BaseModel):
    """servecmp's additions to a FastChat answer line (FastChat reads only the fields it knows)."""

    endpoint: EndpointRole
    temperature: float
    max_tokens: int
    latency_s: list[float] = Field(default_factory=list)
    completion_tokens: list[int] = Field(default_factory=list)
    finish_reasons: list[str | None] = Field(default_factory=list)


class AnswerRecord(BaseModel):
    question_id: QuestionId
    answer_id: str
    model_id: str
    choices: list[AnswerChoice]
    tstamp: float
    servecmp: AnswerMeta

    @property
    def turns(self) -> list[str]:
        return self.choices[0].turns


class SingleJudgment(BaseModel):
    question_id: QuestionId
    #: The answer file's name (FastChat's model name), which is unique within a run.
    model: str
    #: (judge model, judge prompt name), as FastChat writes it.
    judge: tuple[str, str]
    user_prompt: str
    judgment: str
    score: float | None
    turn: int
    tstamp: float
    status: JudgmentStatus
    endpoint: EndpointRole
    category: str
    raw_rating: str | None = None
    error: str | None = None


class PairJudgment(BaseModel):
    question_id: QuestionId
    model_1: str
    model_2: str
    g1_winner: GameWinner
    g2_winner: GameWinner
    judge: tuple[str, str]
    g1_user_prompt: str
    g1_judgment: str
    g2_user_prompt: str
    g2_judgment: str
    turn: int
    tstamp: float
    g1_status: GameStatus
    g2_status: GameStatus
    category: str
    error: str | None = None
