"""MCQ records: dataset items (`McqItem`) and what one endpoint answered for one (`McqRecord`).

Data flows one way: a task loader yields `McqItem`s, the scorer turns each (item, endpoint) into
one `McqRecord` (appended to the run's JSONL as soon as it exists), and the metrics read arrays
built from those records. Nothing here does I/O.

A run directory holds manifest.json (`servecmp.mcq.settings.McqManifest`), `RECORDS`,
`ITEM_ERRORS` and summary.json (`servecmp.mcq.summary.McqSummary`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

#: One `McqRecord` per line, appended as results arrive.
RECORDS = "records.jsonl"
#: Items an endpoint refused (HTTP 400/413/422, e.g. a prompt over its context length). Kept apart
#: from records so the metrics never see them; a resume tries them again (say, after a server
#: restart with a longer --max-model-len).
ITEM_ERRORS = "item_errors.jsonl"

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

    def context_for(self, option: int) -> str:
        return self.contexts[option] if self.contexts else self.prompt


class McqRecord(BaseModel):
    """What one endpoint answered for one item: everything the metrics need, nothing they don't."""

    # An option that cannot be scored at all is -inf; JSON has no such number, so write it as
    # -Infinity (Python's json reads it back) rather than null, which would lose the meaning.
    model_config = ConfigDict(ser_json_inf_nan="constants")

    item_id: str
    #: The endpoint's name in the run: "baseline", "candidate" (the one candidate of a two-endpoint
    #: run), a candidate's name in a multi-candidate run, or "secondary" (a replica of the baseline).
    endpoint: str
    task: str
    subject: str | None = None
    category: str | None = None
    gold: int
    #: Log-probability of each option: the option token's logprob at the answer position (letter
    #: tasks) or the continuation's summed logprob (continuation tasks).
    option_logprobs: list[float]
    #: Length in characters of each continuation, for lm-eval's length-normalised accuracy.
    option_lengths: list[int] = Field(default_factory=list)
    chosen: int
    #: Top-k next-token logprobs at the answer position, as (token, logprob) pairs, most likely
    #: first. Empty for continuation tasks.
    topk: list[tuple[str, float]] = Field(default_factory=list)
    latency_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    n_requests: int = 1
    #: 0: the main pass. 1: the noise-floor pass (`--noise-floor N`: the same item asked again, in
    #: another order and at another concurrency); the metrics keep the two apart.
    repeat: int = 0
    #: The API the item was asked through: "completions" (top-k at the answer position) or "chat"
    #: (top_logprobs of the first generated token, see servecmp.mcq.chat).
    api: Literal["completions", "chat"] = "completions"
    #: Options missing from the top-k that were scored through echoed prompt logprobs instead: a
    #: second logprob path (servecmp.capabilities), counted so the two are never mixed silently.
    echo_options: int = 0
    #: Options missing from the top-k with no other path (chat, or an endpoint whose echo disagrees
    #: with its top-k): given the smallest top-k logprob, an upper bound.
    censored_options: int = 0
