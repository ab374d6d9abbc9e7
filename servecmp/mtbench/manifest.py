"""An MT-Bench run's manifest: everything the run compares, typed and versioned.

`manifest.json` is written when a run starts (once both model names are known) and is the only
source of settings for `--resume` and `servecmp report`. Layout (version 3; a one-candidate run
writes version 2, the same layout with exactly one candidate and no names)::

    kind, version, servecmp_version          "mtbench", 2, the servecmp that started the run
    task, source, task_fingerprint, n_items   "mt_bench", question file, sha256 of the selected
                                              questions (references attached), how many
    limit, categories, references             the selection and where reference answers came from
    max_tokens, mode                          per answer turn; single | pairwise | both
    endpoints[]                               the baseline, then every candidate: the full EndpointSpec
                                              (base_url, model, api_key_env, timeout_s,
                                              max_concurrency, requests_per_second, max_retries)
                                              plus role, answer_file (model_answer/<answer_file>.jsonl)
                                              and (version 3) each candidate's name
    judge                                     url ("baseline" = the offline demo judge), model,
                                              api_key_env, force_format, max_tokens, and its pacing
    prompt_format_hash                        sha256 of the judge prompts file
    started_at, finished_at                   UTC ISO times; finished_at once every judgment exists

The header fields (kind ... n_items, endpoints[].role/base_url/model, prompt_format_hash,
started_at, finished_at) have the names of `servecmp.records.RunManifest`, which every servecmp
run shares, so generic readers (`servecmp correlate`, `servecmp report`'s dispatch on `kind`) read
an MT-Bench manifest unchanged. Keys are never stored: only the NAME of the environment variable
that holds one.

Version 1 (no `version` key; settings as strings in `extra`, as the first MT-Bench runs wrote it) is
converted on reading. It did not record the endpoints' pacing, so a converted manifest takes it
from servecmp.toml (or the defaults), as a version-1 resume did; `--resume` writes it back as
version 2. A version newer than this servecmp knows is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)

from servecmp.config import Config
from servecmp.endpoints import EndpointSpec, endpoint_from
from servecmp.errors import UserError, first_error
from servecmp.records import ROLES, EndpointRole
from servecmp.runstore import MANIFEST, read_json

MANIFEST_VERSION: Literal[3] = 3
TASK = "mt_bench"
#: The judge URL that means "the baseline endpoint judges" (the offline demo).
DEMO_JUDGE = "baseline"

Mode = Literal["single", "pairwise", "both"]


class MtEndpoint(EndpointSpec):
    """One answering endpoint as the run reaches it: its EndpointSpec with the model resolved."""

    role: EndpointRole
    model: str
    #: The answer file's stem (FastChat names it after the model): model_answer/<answer_file>.jsonl.
    answer_file: str
    #: A candidate's name in the run (version 3; None reads as "candidate", the only one).
    name: str | None = None

    @model_serializer(mode="wrap")
    def _no_null_name(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A one-candidate (version-2) manifest keeps its exact layout: no "name" key.
        data: dict[str, Any] = handler(self)
        if data.get("name", 0) is None:
            del data["name"]
        return data

    def spec(self) -> EndpointSpec:
        return EndpointSpec.model_validate(self.model_dump(exclude={"role", "answer_file", "name"}))


class MtJudge(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: The judge's base URL (normalised), or "baseline": the baseline endpoint judges (offline demo).
    url: str
    model: str
    #: Name of the environment variable holding the judge's API key (never the key).
    api_key_env: str | None = None
    #: vLLM structured outputs force a parseable rating/verdict.
    force_format: bool
    max_tokens: int = Field(ge=1)
    # Pacing the run started with; a resume keeps it unless --judge-rps is given.
    timeout_s: float = Field(gt=0)
    #: "auto" only for the demo judge (the baseline judges, at the baseline's pacing).
    max_concurrency: Annotated[int, Field(ge=1)] | Literal["auto"]
    requests_per_second: float | None = Field(default=None, gt=0)
    max_retries: int = Field(ge=0)

    @property
    def is_demo(self) -> bool:
        return self.url == DEMO_JUDGE


class MtBenchManifest(BaseModel):
    # A hand-edited key with a typo should fail, not be silently dropped on the next write.
    model_config = ConfigDict(extra="forbid")

    kind: Literal["mtbench"] = "mtbench"
    #: 3 when the run has several candidates; a one-candidate run still writes 2 (the same layout).
    version: Literal[2, 3] = 2
    servecmp_version: str
    task: str = TASK
    #: Where the questions came from (the run keeps its own copy in questions.jsonl).
    source: str
    #: sha256 of the selected questions with their references (`questions.fingerprint`).
    task_fingerprint: str
    n_items: int
    limit: int | None = None
    categories: list[str] | None = None
    #: Where the reference answers for math/reasoning/coding came from.
    references: str
    max_tokens: int = Field(ge=1)
    mode: Mode
    endpoints: list[MtEndpoint]
    judge: MtJudge
    #: sha256 of the judge prompts file, so --resume refuses a servecmp with other prompts.
    prompt_format_hash: str
    started_at: str
    finished_at: str | None = None

    @model_validator(mode="after")
    def _roles(self) -> MtBenchManifest:
        roles = [e.role for e in self.endpoints]
        if len(roles) < 2 or roles[0] != "baseline" or any(r != "candidate" for r in roles[1:]):
            raise ValueError("endpoints must be the baseline, then the candidate(s)")
        if self.version == 2 and len(roles) != 2:
            raise ValueError("a version-2 manifest has exactly one candidate")
        names = [self.candidate_name(e) for e in self.candidates]
        if len(set(names)) != len(names):
            raise ValueError("the candidates' names must differ")
        return self

    def endpoint(self, role: EndpointRole) -> MtEndpoint:
        """The baseline, or the first candidate (the only one in a one-candidate run)."""
        return self.endpoints[ROLES.index(role)]

    @property
    def candidates(self) -> list[MtEndpoint]:
        return self.endpoints[1:]

    def candidate_name(self, e: MtEndpoint) -> str:
        return e.name or "candidate"

    @property
    def judge_base_url(self) -> str:
        """The URL the judge was reached at (for the demo judge, the baseline's)."""
        return self.endpoint("baseline").base_url if self.judge.is_demo else self.judge.url


def _invalid(path: Path, exc: ValidationError) -> UserError:
    return UserError(f"{path}: not an MT-Bench manifest ({first_error(exc)})")


def _from_version_1(data: dict[str, Any], path: Path, cfg: Config) -> MtBenchManifest:
    """Convert a manifest written before version 2 (RunManifest with string settings in `extra`)."""
    x = data.get("extra") or {}
    missing = [k for k in ("judge_url", "baseline_answer_file", "candidate_answer_file") if k not in x]
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)} (not written by servecmp mtbench?)")
    infos = {e.get("role"): e for e in data.get("endpoints", []) if isinstance(e, dict)}
    if set(infos) != set(ROLES):
        raise UserError(f"{path} does not name a baseline and a candidate endpoint")
    try:
        endpoints = []
        for role in ROLES:
            # As a version-1 resume did: pacing from servecmp.toml's section, the rest from the run.
            section = cfg.baseline if role == "baseline" else cfg.candidate
            spec = endpoint_from(role, section, infos[role]["base_url"], model=infos[role]["model"])
            spec = spec.model_copy(update={"api_key_env": x.get(f"{role}_api_key_env") or None})
            endpoints.append(
                MtEndpoint(**spec.model_dump(exclude={"model"}), role=role, model=infos[role]["model"],
                           answer_file=x[f"{role}_answer_file"])
            )
        jc = cfg.judge
        judge = MtJudge(
            url=x["judge_url"],
            model=x.get("judge_model") or endpoints[0].model,
            api_key_env=x.get("judge_api_key_env") or None,
            force_format=x.get("judge_force_format") == "true",
            max_tokens=int(x.get("judge_max_tokens", "2048")),
            timeout_s=jc.timeout_s,
            max_concurrency=jc.max_concurrency,
            requests_per_second=jc.requests_per_second,
            max_retries=jc.max_retries,
        )
        return MtBenchManifest(
            servecmp_version=data["servecmp_version"],
            task=data.get("task", TASK),
            source=data.get("source", ""),
            task_fingerprint=data["task_fingerprint"],
            n_items=data["n_items"],
            limit=data.get("limit"),
            categories=[c for c in x.get("categories", "").split(",") if c] or None,
            references=x.get("references", ""),
            max_tokens=int(x.get("max_tokens", "1024")),
            mode=x.get("mode", "both"),
            endpoints=endpoints,
            judge=judge,
            prompt_format_hash=data["prompt_format_hash"],
            started_at=data["started_at"],
            finished_at=data.get("finished_at"),
        )
    except ValidationError as exc:
        raise _invalid(path, exc) from None
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path}: not an MT-Bench manifest ({type(exc).__name__}: {exc})") from None


def read_manifest(run_dir: Path, cfg: Config | None = None) -> MtBenchManifest:
    """The manifest of the MT-Bench run in `run_dir` (a version-1 one converted, see the module doc).

    `cfg` only matters for a version-1 manifest: the pacing it did not record."""
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a directory")
    path = run_dir / MANIFEST
    data = read_json(path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a servecmp manifest (not a JSON object)")
    kind = data.get("kind")
    if kind != "mtbench":
        raise UserError(f"{run_dir} is a {kind or 'non-servecmp'} run, not an MT-Bench run")
    version = data.get("version")
    if version is None:
        return _from_version_1(data, path, cfg or Config())
    if not isinstance(version, int) or version > MANIFEST_VERSION:
        raise UserError(
            f"{path} has manifest version {version!r}; this servecmp reads up to {MANIFEST_VERSION} (upgrade it)"
        )
    try:
        return MtBenchManifest.model_validate(data)
    except ValidationError as exc:
        raise _invalid(path, exc) from None
