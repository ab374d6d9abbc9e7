"""What an MCQ run does: from the flags and servecmp.toml (a new run) or from its manifest (a resume).

    McqOptions   the flags as given; None means "not given"
    McqSettings  every setting that decides a run's results or its traffic, typed
    McqManifest  <run>/manifest.json: the settings as the run used them (model names resolved,
                 source and few-shot count resolved) plus what the run found (item count, task
                 fingerprint, prompt-format hash, times). kind "mcq", version 3 (2 and 1 read).

Concurrency: "auto" unless --concurrency or the endpoint's servecmp.toml section sets a number
(`_mcq_pacing`; MT-Bench, sharing `candidate_endpoints`, keeps `EndpointSpec`'s fixed 4); the manifest records
"auto" as such, so a resumed run adapts again rather than replaying the level the original reached.

Precedence for a new run: flag, then servecmp.toml (`[baseline]`, `[candidate]` or `[[candidates]]`,
`[secondary]` when `[mcq] secondary = true`, `[mcq]`), then the defaults of `EndpointSpec` and
`McqConfig`. `--candidate` flags replace the file's candidates.

Resume policy (the same as MT-Bench's). `--resume RUN_DIR` takes every setting that decides the
run's results from its manifest and reads no config file: a flag that would decide one (endpoints,
task, items, seed, top-k, noise floor, runs dir, -c/--config) is refused when given at all, even
with the stored value, all such flags named in one line. Pacing flags (`RESUME_PACING_FLAGS`:
--concurrency, --max-concurrency, --rps, --timeout, --retries) apply to every endpoint for this invocation only (not
given: the manifest's values); presentation and verdict flags (--json, --show, --gate,
--summary-md) are accepted too.

Several candidates. `candidates` holds every candidate, each a `NamedEndpoint` (an `EndpointSpec`
with the name its records carry). One candidate is named "candidate" (the two-endpoint layout of
every earlier run); with several, the given names or else the served model names (deduplicated with
"-2", "-3", ...). `secondary` is a second replica of the baseline; `noise_floor` the size of the
seeded sample asked again on every endpoint after the main pass.

Version-1 manifests (servecmp before issue 8: settings as strings in `extra`, no `version`) are
upgraded on read: every result-deciding setting they hold carries over exactly. They did not record
pacing, so a resume of one takes pacing from its flags, else the defaults, and rewrites the manifest
as version 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from servecmp import __version__
from servecmp.capabilities import EndpointCapabilities
from servecmp.endpoints import EndpointSpec, endpoint_from
from servecmp.errors import UserError, first_error
from servecmp.gates import Gate, parse_gates
from servecmp.options import EndpointOptions, StoredRunOptions
from servecmp.records import ROLES, EndpointRole, RunManifest
from servecmp.runstore import MANIFEST, StoredRunRef, read_json, refuse_on_resume, utcnow, write_json_atomic

if TYPE_CHECKING:
    from servecmp.config import Config
    from servecmp.tasks.registry import TaskData

KIND = "mcq"
MANIFEST_VERSION = 3
#: Flags that change how results are shown, never what they are: always accepted with --resume.
PRESENTATION_FLAGS = ("--json", "--show", "--gate", "--summary-md")
#: Pacing flags: accepted with --resume, for that invocation (every endpoint).
RESUME_PACING_FLAGS = ("--concurrency", "--max-concurrency", "--rps", "--timeout", "--retries")
#: Every flag --resume accepts (the --help of `servecmp mcq --resume` lists the same).
ACCEPTED_ON_RESUME = RESUME_PACING_FLAGS + PRESENTATION_FLAGS
#: Names a candidate may not take: the other roles' record names.
RESERVED_NAMES = ("baseline", "secondary")


def name_candidates(candidates: list[NamedEndpoint]) -> None:
    """Name several candidates in place: the given name, else the served model's last path part,
    made unique with -2, -3, ... and never a reserved role name (mcq and mtbench alike)."""
    taken: set[str] = set(RESERVED_NAMES)
    for c in candidates:
        base = c.name or (c.model or "candidate").rsplit("/", 1)[-1]
        name, i = base, 2
        while name in taken:
            name, i = f"{base}-{i}", i + 1
        c.name = name
        taken.add(name)


class BaselineCheck(BaseModel):
    """The live baseline re-asked on a seeded sample of the stored items."""

    model_config = ConfigDict(extra="forbid")

    items: int
    answer_changes: int
    max_option_kl: float
    tolerance: float
    reproduced: bool


class StoredBaseline(StoredRunRef):
    """What the manifest records of the stored baseline a run joined."""

    #: The drift check, when a live --baseline was given as well.
    check: BaselineCheck | None = None


#: Items per look unless --batch says otherwise.
DEFAULT_BATCH = 20


class SequentialPlan(BaseModel):
    """What --until-decided runs to: recorded in the manifest, so a resume stops where the original would."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: The gate expressions whose decision stops the run (`servecmp.gates` syntax, kind mcq).
    gates: list[str]
    batch: int = Field(default=DEFAULT_BATCH, ge=1)
    #: Requests per candidate at most (None: the item set).
    budget: int | None = Field(default=None, ge=1)

    def parsed(self) -> list[Gate]:
        return parse_gates(self.gates, "mcq")


@dataclass
class McqOptions(StoredRunOptions):
    """The command-line flags of `servecmp mcq`; None means "not given". Concurrency not given is
    "auto", unless the endpoint's servecmp.toml section sets a number."""

    fewshot_file: str | None = None
    #: --until-decided, --batch, --budget (servecmp.mcq.sequential).
    until_decided: bool | None = None
    batch: int | None = None
    budget: int | None = None


class NamedEndpoint(EndpointSpec):
    """A candidate: its endpoint and its name in the run (records, report, verdicts)."""

    name: str | None = None


class McqSettings(BaseModel):
    """Everything a run needs, after flags, config file and defaults are merged."""

    model_config = ConfigDict(extra="forbid")

    baseline: EndpointSpec
    #: Every candidate, in the order given; names resolved when the run starts (`resolve_names`).
    candidates: list[NamedEndpoint]
    #: A second replica of the baseline, compared with it like a candidate: the noise floor.
    secondary: EndpointSpec | None = None
    #: After the main pass, this many seeded items asked again on the baseline and every candidate.
    noise_floor: int | None = None
    task: str = "mmlu"
    data_dir: str | None = None
    #: "csv", "sample", "hf", "jsonl"; None: the task's own.
    source: str | None = None
    #: Exemplars per prompt; None: the task's own (MMLU 5, a JSONL few-shot file: all its rows).
    fewshot: int | None = None
    fewshot_file: str | None = None
    #: The first N items in source order.
    limit: int | None = None
    #: A seeded sample of N items.
    sample: int | None = None
    #: Seeds the sample and every bootstrap interval.
    seed: int = 0
    top_k: int = 20
    #: The API letter items are asked through: "auto" (completions when every endpoint has it, else
    #: chat), "completions" or "chat" (servecmp.capabilities.choose_api).
    api: Literal["auto", "completions", "chat"] = "auto"
    runs_dir: Path = Path("runs")
    #: --until-decided: the gates that stop the run, the batch and the budget (None: fixed-n).
    until_decided: SequentialPlan | None = None
    #: --baseline-run: the stored run whose baseline records stand in for the baseline endpoint.
    baseline_run: Path | None = None
    #: With a stored baseline: whether `baseline` is a live endpoint to re-check (--baseline given),
    #: and how many stored items to re-ask it.
    live_baseline: bool = True
    baseline_check: int = 20
    #: --baseline-only: a baseline profile, no candidate.
    baseline_only: bool = False

    @model_validator(mode="before")
    @classmethod
    def _one_candidate(cls, data: Any) -> Any:
        # McqSettings(baseline=..., candidate=...): the two-endpoint form, one candidate.
        if isinstance(data, dict) and "candidate" in data:
            data = dict(data)
            one = data.pop("candidate")
            spec = one.model_dump() if isinstance(one, BaseModel) else dict(one)
            data["candidates"] = [{**spec, "name": spec.get("name")}]
        return data

    @property
    def candidate(self) -> NamedEndpoint:
        """The first candidate (the only one in a two-endpoint run)."""
        return self.candidates[0]

    def endpoint(self, role: EndpointRole) -> EndpointSpec:
        return self.baseline if role == "baseline" else self.candidate

    def named_endpoints(self) -> dict[str, EndpointSpec]:
        """Every endpoint by the name its records carry: baseline, the candidates, secondary."""
        out: dict[str, EndpointSpec] = {"baseline": self.baseline}
        for c in self.candidates:
            out[c.name or "candidate"] = c
        if self.secondary is not None:
            out["secondary"] = self.secondary
        return out

    def resolve_names(self) -> None:
        """Give every candidate its name (in place); models must be resolved by now."""
        if len(self.candidates) == 1:
            self.candidates[0].name = self.candidates[0].name or "candidate"
            return
        name_candidates(self.candidates)


class ManifestEndpoint(EndpointSpec):
    """One endpoint as the manifest records it: the full `EndpointSpec` (never a key, only the
    name of its variable) and its role."""

    role: EndpointRole
    #: Resolved from /v1/models when the run started, if it was not given.
    model: str

    #: The name its records carry (version 3; None in older manifests: the role).
    name: str | None = None

    def spec(self) -> EndpointSpec:
        return EndpointSpec.model_validate(self.model_dump(exclude={"role", "name"}))

    def named(self) -> NamedEndpoint:
        return NamedEndpoint.model_validate({**self.model_dump(exclude={"role"}), "name": self.name or self.role})


class SecondaryEndpoint(EndpointSpec):
    """The secondary (a replica of the baseline) as the manifest records it."""

    model: str

    def spec(self) -> EndpointSpec:
        return EndpointSpec.model_validate(self.model_dump())


#: The settings a manifest records as given, under the same names (`new_manifest`) and gives back
#: to a resumed run (`McqManifest.settings`); source and fewshot it records as the task resolved them.
RECORDED_AS_GIVEN = {"task", "data_dir", "fewshot_file", "limit", "sample", "seed", "top_k", "noise_floor", "api",
                     "until_decided"}


class McqManifest(BaseModel):
    """<run>/manifest.json of an MCQ run (layout version 3: version 2 plus candidate names, several
    candidates, the secondary and the noise floor; a version-2 file reads as one candidate)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["mcq"] = "mcq"
    version: Literal[2, 3] = 3
    servecmp_version: str
    task: str
    data_dir: str | None = None
    #: The source kind the task resolved to: "csv", "sample", "hf" or "jsonl".
    source: str
    #: Where the items came from, in words (shown in the report).
    source_description: str
    #: Exemplars in every prompt (0: zero-shot).
    fewshot: int
    fewshot_file: str | None = None
    limit: int | None = None
    sample: int | None = None
    seed: int = 0
    top_k: int
    #: Identifies the exact item set and prompt rendering, so a resume refuses changed data.
    task_fingerprint: str
    prompt_format_hash: str
    #: Items the run scores (after --limit / --sample).
    n_items: int
    #: Both endpoints, as a list with roles: the layout every manifest kind shares
    #: (`servecmp.records.RunManifest.endpoints`), so readers of any run find them the same way.
    endpoints: list[ManifestEndpoint]
    #: A second replica of the baseline (not in `endpoints`, whose roles are baseline/candidate).
    secondary: SecondaryEndpoint | None = None
    noise_floor: int | None = None
    #: The API asked for (--api). Manifests from before it read as "auto"; their records all came
    #: through completions, which `endpoint_apis` (None there) means to a resume.
    api: Literal["auto", "completions", "chat"] = "auto"
    #: The API each endpoint was asked through, by endpoint name (None: before the capability probe).
    endpoint_apis: dict[str, Literal["completions", "chat"]] | None = None
    #: What the capability probe found at each endpoint, by endpoint name.
    capabilities: dict[str, EndpointCapabilities] | None = None
    #: --until-decided (None: a fixed-n run, and every manifest from before it).
    until_decided: SequentialPlan | None = None
    #: The stored baseline this run joined (--baseline-run), and --baseline-only.
    stored_baseline: StoredBaseline | None = None
    baseline_only: bool = False
    started_at: str
    finished_at: str | None = None

    #: The layout version the manifest had on disk (1: upgraded on read, pacing not recorded).
    _version_on_disk: int = PrivateAttr(default=MANIFEST_VERSION)

    @property
    def pacing_recorded(self) -> bool:
        return self._version_on_disk >= 2

    @property
    def candidates(self) -> list[NamedEndpoint]:
        return [e.named() for e in self.endpoints if e.role == "candidate"]

    def endpoint(self, role: EndpointRole) -> EndpointSpec:
        for e in self.endpoints:
            if e.role == role:
                return e.spec()
        raise UserError(f"the run's manifest names no {role} endpoint")

    def settings(self, runs_dir: Path) -> McqSettings:
        return McqSettings(
            baseline=self.endpoint("baseline"),
            candidates=self.candidates,
            secondary=self.secondary.spec() if self.secondary is not None else None,
            source=self.source,
            fewshot=self.fewshot,
            runs_dir=runs_dir,
            baseline_run=Path(self.stored_baseline.run_dir) if self.stored_baseline is not None else None,
            live_baseline=self.stored_baseline is None,
            baseline_only=self.baseline_only,
            **self.model_dump(include=RECORDED_AS_GIVEN),
        )


def new_manifest(settings: McqSettings, data: TaskData) -> McqManifest:
    """The manifest of a new run; endpoints must carry their resolved model names by now."""
    return McqManifest(
        servecmp_version=__version__,
        source=data.source_kind,
        source_description=data.source,
        fewshot=data.fewshot,
        task_fingerprint=data.fingerprint,
        prompt_format_hash=data.prompt_format_hash,
        n_items=len(data.items),
        endpoints=[ManifestEndpoint(role="baseline", **settings.baseline.model_dump()),
                   *(ManifestEndpoint(role="candidate", **c.model_dump()) for c in settings.candidates)],
        secondary=(SecondaryEndpoint(**settings.secondary.model_dump())
                   if settings.secondary is not None else None),
        started_at=utcnow(),
        baseline_only=settings.baseline_only,
        **settings.model_dump(include=RECORDED_AS_GIVEN),
    )


def write_manifest(run_dir: Path, manifest: McqManifest) -> None:
    # Atomic: a crash while writing leaves the previous manifest, never half of one.
    write_json_atomic(run_dir / MANIFEST, manifest.model_dump(mode="json"))


def _upgrade_v1(raw: dict[str, Any], path: Path) -> McqManifest:
    """A version-1 manifest as version 2: every setting it holds carries over; pacing, which it did
    not record, takes `EndpointSpec`'s defaults."""
    try:
        old = RunManifest.model_validate(raw)
    except ValidationError as exc:
        raise UserError(f"{path}: not a servecmp manifest ({first_error(exc)})") from exc
    from servecmp.tasks.continuation_tasks import CONTINUATION_TASKS
    from servecmp.tasks.registry import HF_SOURCE, JSONL_PREFIX, JSONL_SOURCE

    data_dir = old.extra.get("data_dir") or None
    # Version 1 had no --source or --fewshot: every task loaded from its default source, with its
    # default exemplars (MMLU 5, JSONL zero-shot, continuation tasks zero-shot).
    if old.task.startswith(JSONL_PREFIX):
        source, fewshot = JSONL_SOURCE, 0
    elif old.task in CONTINUATION_TASKS:
        source, fewshot = HF_SOURCE, 0
    else:
        source, fewshot = ("csv" if data_dir else "sample"), 5
    key_envs = {role: old.extra.get(f"{role}_api_key_env") or None for role in ROLES}
    try:
        endpoints = [ManifestEndpoint(role=e.role, base_url=e.base_url, model=e.model,
                                      api_key_env=key_envs[e.role]) for e in old.endpoints]
        manifest = McqManifest(
            servecmp_version=old.servecmp_version,
            task=old.task,
            data_dir=data_dir,
            source=source,
            source_description=old.source,
            fewshot=fewshot,
            sample=old.limit,
            seed=old.seed,
            top_k=int(old.extra.get("top_k", "20")),
            task_fingerprint=old.task_fingerprint,
            prompt_format_hash=old.prompt_format_hash,
            n_items=old.n_items,
            endpoints=endpoints,
            started_at=old.started_at,
            finished_at=old.finished_at,
        )
    except (ValidationError, ValueError) as exc:
        raise UserError(f"{path}: a version-1 manifest servecmp cannot read ({exc})") from exc
    manifest._version_on_disk = 1
    return manifest


def read_manifest(run_dir: Path) -> McqManifest:
    """The manifest of an MCQ run directory (version 1 upgraded in memory). One-line UserError for
    a directory that is not an MCQ run or a manifest of a newer layout."""
    path = run_dir / MANIFEST
    if not path.is_file():
        raise UserError(f"{run_dir} is not a servecmp run directory (no {MANIFEST})")
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise UserError(f"{path} is not a servecmp manifest")
    if raw.get("kind") != KIND:
        raise UserError(f"{run_dir} is a {raw.get('kind')} run, not an mcq run")
    version = raw.get("version", 1)
    if version == 1:
        return _upgrade_v1(raw, path)
    if version not in (2, MANIFEST_VERSION):
        raise UserError(f"{path} has manifest version {version}; this servecmp ({__version__}) reads "
                        f"versions 1 to {MANIFEST_VERSION}: upgrade servecmp")
    try:
        return McqManifest.model_validate(raw)
    except ValidationError as exc:
        raise UserError(f"{path}: not a valid MCQ manifest ({first_error(exc)})") from exc


# --- a new run ------------------------------------------------------------------------------------


def _as_list(value: list[str] | str | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def candidate_endpoints(opts: EndpointOptions, cfg: Config, pacing: dict[str, Any], *,
                        auto_default: bool = False) -> list[NamedEndpoint]:
    """--candidate flags (with --candidate-model/-key-env/-name by position), else servecmp.toml's
    `[[candidates]]`, else its `[candidate]`. `auto_default`: MCQ's concurrency default (`_mcq_pacing`);
    MT-Bench, which shares this, keeps the fixed one. Any kind's options with the endpoint flags will do."""
    urls = _as_list(opts.candidate)
    models, keys, names = (_as_list(opts.candidate_model), _as_list(opts.candidate_key_env),
                           _as_list(opts.candidate_name))
    for flag, values in (("--candidate-model", models), ("--candidate-key-env", keys),
                         ("--candidate-name", names)):
        if len(values) > max(1, len(urls)):
            raise UserError(f"{len(values)} {flag} flags for {len(urls)} --candidate URL(s): give at most one "
                            "per --candidate, matched by position")
    out: list[NamedEndpoint] = []
    if urls:
        sections: list[EndpointSpec | None] = [None] * len(urls)
        if len(urls) == 1 and not cfg.candidates:
            sections = [cfg.candidate]
        for i, url in enumerate(urls):
            spec = endpoint_from("candidate", sections[i], url, model=models[i] if i < len(models) else None,
                                 api_key_env=keys[i] if i < len(keys) else None,
                                 **_mcq_pacing(pacing, sections[i], auto_default))
            out.append(NamedEndpoint(**spec.model_dump(), name=names[i] if i < len(names) else None))
    elif cfg.candidates:
        if cfg.candidate is not None:
            raise UserError("servecmp.toml has both [candidate] and [[candidates]]: keep one")
        if len(models) > 1 or len(keys) > 1 or len(names) > 1:
            raise UserError("several --candidate-model/--candidate-key-env/--candidate-name flags need as many "
                            "--candidate URLs")
        for c in cfg.candidates:
            flags = _mcq_pacing(pacing, c, auto_default)
            if len(cfg.candidates) == 1:
                flags.update(model=models[0] if models else None, api_key_env=keys[0] if keys else None)
            spec = endpoint_from("candidate", EndpointSpec(**c.model_dump(exclude={"name"})), None, **flags)
            name = names[0] if names and len(cfg.candidates) == 1 else c.name
            out.append(NamedEndpoint(**spec.model_dump(), name=name))
    else:
        spec = endpoint_from("candidate", cfg.candidate, None, model=models[0] if models else None,
                             api_key_env=keys[0] if keys else None, **_mcq_pacing(pacing, cfg.candidate, auto_default))
        out.append(NamedEndpoint(**spec.model_dump(), name=names[0] if names else None))
    given = [c.name for c in out if c.name]
    for name in given:
        if name in RESERVED_NAMES:
            raise UserError(f"--candidate-name {name}: that name is the {name}'s; choose another")
    if len(set(given)) < len(given):
        raise UserError(f"--candidate-name: the names must differ ({', '.join(given)})")
    return out


def _api(value: str) -> Literal["auto", "completions", "chat"]:
    if value not in ("auto", "completions", "chat"):
        raise UserError(f"--api {value}: expected auto, completions or chat")
    return value  # type: ignore[return-value]


def _mcq_pacing(pacing: dict[str, Any], section: BaseModel | None, auto_default: bool = True) -> dict[str, Any]:
    """MCQ's default concurrency is "auto" (servecmp.concurrency), unless --concurrency or the
    endpoint's own servecmp.toml section (a key written there, not its default) sets one. MT-Bench
    keeps `EndpointSpec`'s fixed default."""
    if auto_default and pacing.get("max_concurrency") is None and (
            section is None or "max_concurrency" not in section.model_fields_set):
        return {**pacing, "max_concurrency": "auto"}
    return dict(pacing)


def new_settings(opts: McqOptions, cfg: Config) -> McqSettings:
    """Flags over servecmp.toml over defaults. UserError for a missing endpoint or a bad value."""
    api = _api(opts.api if opts.api is not None else cfg.mcq.api)
    task = opts.task or cfg.mcq.task
    from servecmp.tasks.continuation_tasks import CONTINUATION_TASKS

    if api == "chat" and task in CONTINUATION_TASKS:
        # Refused before any data is loaded or request sent (servecmp.capabilities.choose_api says the same).
        raise UserError("continuation tasks (arc, hellaswag, piqa, winogrande) score each choice's echoed prompt "
                        "logprobs, which /v1/chat/completions cannot return: use --api completions")
    pacing = opts.endpoint_pacing()
    mc = cfg.mcq
    # --limit (the first N) given as a flag replaces the config's seeded sample: they are alternatives.
    sample = opts.sample if opts.sample is not None or opts.limit is not None else mc.sample
    secondary = None
    if opts.secondary is not None or mc.secondary:
        secondary = endpoint_from("secondary", cfg.secondary, opts.secondary, model=opts.secondary_model,
                                  api_key_env=opts.secondary_key_env, **_mcq_pacing(pacing, cfg.secondary))
    elif opts.secondary_model is not None or opts.secondary_key_env is not None:
        raise UserError("--secondary-model/--secondary-key-env need --secondary URL")
    return McqSettings(
        baseline=endpoint_from("baseline", cfg.baseline, opts.baseline, model=opts.baseline_model,
                               api_key_env=opts.baseline_key_env, **_mcq_pacing(pacing, cfg.baseline)),
        candidates=[] if opts.baseline_only else candidate_endpoints(opts, cfg, pacing, auto_default=True),
        secondary=secondary,
        noise_floor=opts.noise_floor if opts.noise_floor is not None else mc.noise_floor,
        task=opts.task or mc.task,
        data_dir=opts.data_dir if opts.data_dir is not None else mc.data_dir,
        source=opts.source if opts.source is not None else mc.source,
        fewshot=opts.fewshot if opts.fewshot is not None else mc.fewshot,
        fewshot_file=opts.fewshot_file if opts.fewshot_file is not None else mc.fewshot_file,
        limit=opts.limit,
        sample=sample,
        seed=opts.seed if opts.seed is not None else mc.seed,
        top_k=opts.top_k if opts.top_k is not None else mc.top_k,
        api=api,
        runs_dir=opts.runs_dir if opts.runs_dir is not None else Path(mc.runs_dir),
    )


# --- a resumed run --------------------------------------------------------------------------------



def resume_conflicts(opts: McqOptions) -> list[str]:
    """The given flags --resume refuses (any value: the manifest decides), in a fixed order."""
    return opts.fixed_on_resume()


def resumed_settings(opts: McqOptions) -> tuple[McqSettings, McqManifest]:
    """The settings of the run in `opts.resume`: its manifest's, with the pacing flags given now
    applied to every endpoint for this invocation.

    UserError, one line, naming every given flag that would decide a result.
    """
    assert opts.resume is not None
    run_dir = opts.resume
    refuse_on_resume(run_dir, resume_conflicts(opts), ACCEPTED_ON_RESUME)
    manifest = read_manifest(run_dir)
    settings = manifest.settings(runs_dir=run_dir.parent)
    given = opts.given_pacing()
    if given:
        settings = settings.model_copy(update={
            "baseline": endpoint_from("baseline", settings.baseline, None, **given),
            "candidates": [NamedEndpoint.model_validate({**c.model_dump(), **given}) for c in settings.candidates],
            "secondary": (endpoint_from("secondary", settings.secondary, None, **given)
                          if settings.secondary is not None else None),
        })
    return settings, manifest
