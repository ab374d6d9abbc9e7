"""Typed records at servecmp's boundaries: dataset items, per-item results, run manifests.

Data flows one way: a task loader yields `McqItem`s, the scorer turns each (item, endpoint) into
one `McqRecord` (appended to the run's JSONL as soon as it exists), and the metrics read arrays
built from those records. Nothing here does I/O.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

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
