"""Typed records at servecmp's boundaries: per-item MCQ results and the manifest header every run shares.

Data flows one way: a task loader yields `servecmp.tasks.items.McqItem`s, the MCQ scorer turns each
(item, endpoint) into one `McqRecord` (appended to the run's JSONL as soon as it exists), and the
metrics read arrays built from those records. A lower layer: nothing here does I/O or imports a
feature package, so task importers (servecmp.tasks.lmeval_import) can build records too.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

EndpointRole = Literal["baseline", "candidate"]
ROLES: tuple[EndpointRole, EndpointRole] = ("baseline", "candidate")


class EndpointInfo(BaseModel):
    """An endpoint as the manifest records it. Deliberately has no field for a key."""

    role: EndpointRole
    base_url: str
    model: str


class RunManifest(BaseModel):
    """The version-1 manifest layout, and the header every run's manifest still shares.

    Each kind now writes its own typed, versioned manifest (`servecmp.mcq.settings.McqManifest`,
    `servecmp.mtbench.manifest`), keeping these field names (kind, task, n_items, endpoints[] with
    role/base_url/model, started_at, finished_at, ...) so that generic readers such as correlate
    can read any run with this model (it ignores the keys it does not know). Version-1 files
    (no `version` key, settings as strings in `extra`) are converted by each kind's reader.
    """

    kind: Literal["mcq", "mtbench"] = "mcq"
    servecmp_version: str
    task: str
    #: Identifies the exact item set and prompt rendering, so --resume can refuse a different task.
    task_fingerprint: str
    prompt_format_hash: str
    n_items: int
    limit: int | None = None
    seed: int = 0
    source: str = ""
    endpoints: list[EndpointInfo] = Field(default_factory=list)
    started_at: str
    finished_at: str | None = None
    extra: dict[str, str] = Field(default_factory=dict)


class ItemRecord(BaseModel):
    """The key of every per-item record a run appends (MCQ answers, generated answers, teacher
    forcing): one item, one endpoint. Readers keep an (item, endpoint)'s last record."""

    item_id: str
    #: The endpoint's name in the run: "baseline", "candidate" (the one candidate of a two-endpoint
    #: run), a candidate's name in a multi-candidate run, "secondary" (a replica of the baseline) or
    #: a kind's own (generated answers: "baseline@floor").
    endpoint: str


class McqRecord(ItemRecord):
    """What one endpoint answered for one item: everything the metrics need, nothing they don't."""

    # An option that cannot be scored at all is -inf; JSON has no such number, so write it as
    # -Infinity (Python's json reads it back) rather than null, which would lose the meaning.
    model_config = ConfigDict(ser_json_inf_nan="constants")

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
