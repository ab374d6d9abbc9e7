"""What a `servecmp gen` run does: from the flags and servecmp.toml (a new run) or its manifest (a resume).

    GenOptions   the flags as given; None means "not given"
    GenManifest  <run>/manifest.json: every setting that decides the run's results, with the model
                 names and the API resolved; kind "gen", schema "servecmp.gen_manifest/1"

Endpoints are named as in MCQ runs (servecmp.mcq.settings: one candidate is "candidate", several
take their given or served-model names); "secondary" is a replica of the baseline, asked every item;
"baseline@floor" is the baseline asked a seeded sample of --noise-floor items again (with the next
sampling seed when sampling). Both measure the noise floor the candidates' numbers are read against.

Resume (as MCQ's): `--resume RUN_DIR` takes every result-deciding setting from the manifest and
refuses flags that would set one; pacing flags apply to this invocation; presentation flags too.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from servecmp import __version__
from servecmp.endpoints import EndpointSpec, endpoint_from
from servecmp.errors import UserError, first_error
from servecmp.options import StoredRunOptions
from servecmp.runstore import MANIFEST, StoredRunRef, read_json, refuse_on_resume, utcnow, write_json_atomic

if TYPE_CHECKING:
    from servecmp.config import Config
    from servecmp.tasks.gen_task import GenItem

KIND: Literal["gen"] = "gen"
SCHEMA: Literal["servecmp.gen_manifest/1"] = "servecmp.gen_manifest/1"
BASELINE, SECONDARY, FLOOR = "baseline", "secondary", "baseline@floor"
Role = Literal["baseline", "candidate", "secondary", "floor"]
ApiChoice = Literal["auto", "completions", "chat"]
ApiKind = Literal["completions", "chat"]
PRESENTATION_FLAGS = ("--json", "--show", "--gate", "--summary-md", "--html", "--allow-code-execution")
RESUME_PACING_FLAGS = ("--concurrency", "--max-concurrency", "--rps", "--timeout", "--retries")
ACCEPTED_ON_RESUME = RESUME_PACING_FLAGS + PRESENTATION_FLAGS
DEFAULT_MAX_TOKENS = 256


@dataclass
class GenOptions(StoredRunOptions):
    """The command-line flags of `servecmp gen`; None means "not given"."""

    max_tokens: int | None = None
    samples: int | None = None
    temperature: float | None = None
    teacher_forcing: bool | None = None
    #: Consent to run model-written code (code tasks); asked of every invocation, resumes included.
    allow_code_execution: bool | None = None


class GenEndpoint(EndpointSpec):
    """One endpoint of the run: its spec (model resolved once the run starts) and its place."""

    name: str
    role: Role
    #: The API its items go through (resolved from --api when the run starts).
    api: ApiKind | None = None
    #: Sampling seed sent with every request (None: greedy runs send none).
    seed: int | None = None


class GenBaselineCheck(BaseModel):
    """The live baseline re-asked a seeded sample of the stored items (greedy answers, text by text)."""

    model_config = ConfigDict(extra="forbid")

    url: str
    items: int
    #: Items whose live answer is not the stored text.
    changed: int
    reproduced: bool


class GenStoredBaseline(StoredRunRef):
    """What the manifest records of the stored baseline a run joined (--baseline-run)."""

    #: The drift check, when a live --baseline was given as well.
    check: GenBaselineCheck | None = None


class GenManifest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_: Literal["servecmp.gen_manifest/1"] = Field(default=SCHEMA, alias="schema")
    kind: Literal["gen"] = "gen"
    servecmp_version: str = __version__
    task: str
    source: str
    data_dir: str | None = None
    fewshot: int
    task_fingerprint: str
    n_items: int
    n_available: int
    limit: int | None = None
    sample: int | None = None
    seed: int = 0
    api: ApiChoice = "auto"
    max_tokens: int = Field(default=DEFAULT_MAX_TOKENS, ge=1)
    #: Completions per item and endpoint (one request with n); 1 with temperature 0 is greedy.
    samples: int = Field(default=1, ge=1)
    temperature: float = Field(default=0.0, ge=0.0)
    top_k: int = Field(default=20, ge=1)
    teacher_forcing: bool = True
    endpoints: list[GenEndpoint]
    #: Items the noise-floor pass asks the baseline again (--noise-floor N: a seeded sample).
    floor_items: list[str] = Field(default_factory=list)
    started_at: str = Field(default_factory=utcnow)
    finished_at: str | None = None
    #: The stored baseline whose records stand in for the baseline endpoint (never asked in the run).
    stored_baseline: GenStoredBaseline | None = None
    #: A profile: the baseline alone, for later --baseline-run.
    baseline_only: bool = False

    @property
    def greedy(self) -> bool:
        return self.samples == 1 and self.temperature == 0.0

    def endpoint(self, name: str) -> GenEndpoint:
        for e in self.endpoints:
            if e.name == name:
                return e
        raise KeyError(name)

    @property
    def baseline(self) -> GenEndpoint:
        return self.endpoint(BASELINE)

    @property
    def candidates(self) -> list[GenEndpoint]:
        return [e for e in self.endpoints if e.role == "candidate"]

    @property
    def floors(self) -> list[GenEndpoint]:
        return [e for e in self.endpoints if e.role in ("secondary", "floor")]


def write_manifest(run_dir: Path, manifest: GenManifest) -> None:
    write_json_atomic(run_dir / MANIFEST, manifest.model_dump(mode="json", by_alias=True))


def read_manifest(run_dir: Path) -> GenManifest:
    """The run's manifest; UserError (one line) when it is not a gen manifest this servecmp reads."""
    path = run_dir / MANIFEST
    if not path.is_file():
        raise UserError(f"{run_dir} is not a servecmp run directory (no {MANIFEST})")
    raw = read_json(path)
    if not isinstance(raw, dict) or raw.get("kind") != KIND:
        raise UserError(f"{path}: not a servecmp gen run (kind {raw.get('kind') if isinstance(raw, dict) else None!r})")
    if raw.get("schema") != SCHEMA:
        raise UserError(f"{path}: schema {raw.get('schema')!r} is not one this servecmp reads ({SCHEMA}); "
                        "a newer servecmp wrote it: upgrade servecmp")
    try:
        return GenManifest.model_validate(raw)
    except ValidationError as exc:
        raise UserError(f"{path}: not a valid gen manifest ({first_error(exc)})") from None


def select_items(items: list[GenItem], *, limit: int | None, sample: int | None, seed: int) -> list[GenItem]:
    """--limit: the first N in file order; --sample: a seeded random N of those, kept in file order."""
    chosen = items[:limit] if limit is not None else list(items)
    if sample is not None and sample < len(chosen):
        keep = set(random.Random(f"gen-sample:{seed}").sample(range(len(chosen)), sample))
        chosen = [it for i, it in enumerate(chosen) if i in keep]
    return chosen


def floor_sample(items: list[GenItem], n: int, seed: int) -> list[str]:
    keep = set(random.Random(f"gen-floor:{seed}").sample(range(len(items)), min(n, len(items))))
    return [it.item_id for i, it in enumerate(items) if i in keep]


def _candidate_endpoints(opts: GenOptions, cfg: Config, pacing: dict[str, Any]) -> list[GenEndpoint]:
    # MCQ's rules for candidates (flags by position, [[candidates]], [candidate]) and names.
    from servecmp.mcq.settings import candidate_endpoints, name_candidates

    named = candidate_endpoints(opts, cfg, pacing, auto_default=True)
    if len(named) > 1:
        name_candidates(named)
    out = []
    for c in named:
        data = c.model_dump()
        name = data.pop("name") or "candidate"
        if name == FLOOR:
            raise UserError(f"--candidate-name {FLOOR}: that name is the noise floor's; choose another")
        out.append(GenEndpoint(**data, name=name, role="candidate"))
    return out


def _pacing(pacing: dict[str, Any], section: BaseModel | None) -> dict[str, Any]:
    from servecmp.mcq.settings import _mcq_pacing

    return _mcq_pacing(pacing, section, True)


def new_manifest(opts: GenOptions, cfg: Config) -> tuple[GenManifest, list[GenItem]]:
    """Flags over servecmp.toml's [gen] and endpoint sections over defaults; loads the task. The
    models and the API are resolved when the run starts (servecmp.gen.run)."""
    from servecmp.tasks.gen_registry import load_gen_task
    from servecmp.tasks.gen_task import fingerprint

    g = cfg.gen
    api_given = opts.api if opts.api is not None else g.api
    if api_given not in ("auto", "completions", "chat"):
        raise UserError(f"--api {api_given}: expected auto, completions or chat")
    api: ApiChoice = api_given  # type: ignore[assignment]
    samples = opts.samples if opts.samples is not None else g.samples
    temperature = opts.temperature if opts.temperature is not None else g.temperature
    if samples > 1 and temperature == 0.0:
        raise UserError(f"--samples {samples} with temperature 0 would ask for {samples} copies of the greedy "
                        "answer: give --temperature T > 0")
    pacing = opts.endpoint_pacing()
    seed = opts.seed if opts.seed is not None else g.seed
    sampling = samples > 1 or temperature > 0
    base = endpoint_from("baseline", cfg.baseline, opts.baseline, model=opts.baseline_model,
                         api_key_env=opts.baseline_key_env, **_pacing(pacing, cfg.baseline))
    endpoints = [GenEndpoint(**base.model_dump(), name=BASELINE, role="baseline", seed=seed if sampling else None)]
    for c in [] if opts.baseline_only else _candidate_endpoints(opts, cfg, pacing):
        endpoints.append(c.model_copy(update={"seed": seed if sampling else None}))
    if opts.secondary is not None or g.secondary:
        sec = endpoint_from("secondary", cfg.secondary, opts.secondary, model=opts.secondary_model,
                            api_key_env=opts.secondary_key_env, **_pacing(pacing, cfg.secondary))
        endpoints.append(GenEndpoint(**sec.model_dump(), name=SECONDARY, role="secondary",
                                     seed=seed if sampling else None))
    elif opts.secondary_model is not None or opts.secondary_key_env is not None:
        raise UserError("--secondary-model/--secondary-key-env need --secondary URL")
    noise_floor = opts.noise_floor if opts.noise_floor is not None else g.noise_floor
    task_name = opts.task or g.task
    data_dir = opts.data_dir if opts.data_dir is not None else g.data_dir
    task = load_gen_task(task_name, data_dir=Path(data_dir) if data_dir else None,
                         source=opts.source if opts.source is not None else g.source,
                         fewshot=opts.fewshot if opts.fewshot is not None else g.fewshot)
    limit = opts.limit
    sample = opts.sample if opts.sample is not None or opts.limit is not None else g.sample
    items = select_items(task.items, limit=limit, sample=sample, seed=seed)
    from servecmp.tasks.gen_registry import require_code_consent

    # Refused before any request (and before the endpoints are asked anything).
    require_code_consent(items, bool(opts.allow_code_execution))
    floor_items: list[str] = []
    if noise_floor:
        floor_items = floor_sample(items, noise_floor, seed)
        # Another seed when sampling: the floor of a sampled run is the baseline against itself.
        endpoints.append(GenEndpoint(**base.model_dump(), name=FLOOR, role="floor",
                                     seed=seed + 1 if sampling else None))
    manifest = GenManifest(
        task=task_name, source=task.source, data_dir=data_dir, fewshot=task.fewshot,
        task_fingerprint=fingerprint(items), n_items=len(items), n_available=task.n_available, limit=limit,
        sample=sample, seed=seed, api=api, max_tokens=opts.max_tokens if opts.max_tokens is not None else g.max_tokens,
        samples=samples, temperature=temperature, top_k=opts.top_k if opts.top_k is not None else g.top_k,
        teacher_forcing=opts.teacher_forcing if opts.teacher_forcing is not None else g.teacher_forcing,
        endpoints=endpoints, floor_items=floor_items, baseline_only=bool(opts.baseline_only),
    )
    return manifest, items




def resumed_manifest(opts: GenOptions) -> GenManifest:
    """The manifest of the run in `opts.resume`, with the pacing flags given now applied to every
    endpoint (for this invocation; the manifest on disk keeps its own)."""
    assert opts.resume is not None
    refuse_on_resume(opts.resume, opts.fixed_on_resume(), ACCEPTED_ON_RESUME)
    manifest = read_manifest(opts.resume)
    given = opts.given_pacing()
    if given:
        manifest = manifest.model_copy(update={"endpoints": [
            GenEndpoint.model_validate({**e.model_dump(), **given}) for e in manifest.endpoints]})
    return manifest
