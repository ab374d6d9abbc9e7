"""The records of a `servecmp gen` run (one JSON object a line; other tools may read them).

records.jsonl: one `GenRecord` per item, endpoint and sample, with at least ``item_id``,
``endpoint``, ``sample``, ``text`` (the generation), ``answer`` (extracted, or null), ``gold``,
``correct``, ``finish_reason`` and ``completion_tokens``. GSM8K records also carry lm-eval's second
extraction (``answer_flexible``, ``correct_flexible``); ``answer``/``correct`` are its strict-match.

teacher_forcing.jsonl: one `TfRecord` per item and compared endpoint: that endpoint's per-token KL
along the baseline's greedy answer, or the reason it could not be measured.

baseline_forcing.jsonl: one `BaselineForcing` per item: the token ids teacher-forced (prompt and the
baseline's answer) and the baseline's own top-k at each answer position. The candidates' KL is
computed against these stored rows, so a later run can teacher-force candidates along this run's
baseline without asking it (`servecmp gen --baseline-run`). A file of its own because it is large
(top-k per answer token) and no report reads it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from servecmp.records import ItemRecord

RECORDS = "records.jsonl"
ITEMS = "items.jsonl"
TEACHER_FORCING = "teacher_forcing.jsonl"
BASELINE_FORCING = "baseline_forcing.jsonl"


class GenRecord(ItemRecord):
    model_config = ConfigDict(extra="ignore")

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


class TfRecord(ItemRecord):
    """The candidate (``endpoint``) teacher-forced along the baseline's answer to ``item_id``."""

    model_config = ConfigDict(extra="ignore")

    #: Answer positions scored (the baseline's answer tokens, at most the run's max tokens).
    n_positions: int = 0
    #: Per-position KL(baseline ‖ endpoint), nats: the tight top-k estimate (servecmp.metrics.kl).
    kl: list[float] = Field(default_factory=list)
    #: Why nothing was measured ("no_tokenize", "no_prompt_logprobs", "empty_answer", ...).
    error: str | None = None


class BaselineForcing(BaseModel):
    """The baseline teacher-forced along its own answer to ``item_id``: what each candidate is scored against."""

    model_config = ConfigDict(extra="ignore")

    item_id: str
    #: The prompt's token ids followed by the answer's (at most the run's max tokens).
    ids: list[int] = Field(default_factory=list)
    #: Where the answer starts in ``ids``.
    start: int = 0
    #: Per answer position: the baseline's top-k (plus the actual token) logprobs by token id.
    topk: list[dict[str, float]] = Field(default_factory=list)
    #: Why the baseline could not be teacher-forced ("empty_answer", "no_tokenize", "baseline_...");
    #: every candidate's record for the item carries it.
    error: str | None = None
