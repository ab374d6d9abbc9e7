"""The records of a `servecmp gen` run (one JSON object a line; other tools may read them).

records.jsonl: one `GenRecord` per item, endpoint and sample, with at least ``item_id``,
``endpoint``, ``sample``, ``text`` (the generation), ``answer`` (extracted, or null), ``gold``,
``correct``, ``finish_reason`` and ``completion_tokens``. GSM8K records also carry lm-eval's second
extraction (``answer_flexible``, ``correct_flexible``); ``answer``/``correct`` are its strict-match.

teacher_forcing.jsonl: one `TfRecord` per item and compared endpoint: that endpoint's per-token KL
along the baseline's greedy answer, or the reason it could not be measured.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

RECORDS = "records.jsonl"
ITEMS = "items.jsonl"
TEACHER_FORCING = "teacher_forcing.jsonl"


class GenRecord(BaseModel):
    model_config = ConfigDict(extra="ignore")

    item_id: str
    #: The endpoint's name in the run: "baseline", a candidate's name, "secondary" or "baseline@floor".
    endpoint: str
    #: 0-based index of the sample (0 for a greedy run).
    sample: int = Field(ge=0)
    text: str
    answer: str | None
    gold: str
    correct: bool
    answer_flexible: str | None = None
    correct_flexible: bool | None = None
    finish_reason: str | None
    completion_tokens: int | None
    #: The generation's token ids from the endpoint's /tokenize (None: the endpoint has no /tokenize).
    token_ids: list[int] | None = None
    latency_s: float | None = None


class TfRecord(BaseModel):
    """The candidate (``endpoint``) teacher-forced along the baseline's answer to ``item_id``."""

    model_config = ConfigDict(extra="ignore")

    item_id: str
    endpoint: str
    #: Answer positions scored (the baseline's answer tokens, at most the run's max tokens).
    n_positions: int = 0
    #: Per-position KL(baseline ‖ endpoint), nats: the tight top-k estimate (servecmp.metrics.kl).
    kl: list[float] = Field(default_factory=list)
    #: Why nothing was measured ("no_tokenize", "no_prompt_logprobs", "empty_answer", ...).
    error: str | None = None
