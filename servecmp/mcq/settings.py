"""What an MCQ run does: from the flags and servecmp.toml (a new run) or from its manifest (a resume).

    McqOptions   the flags as given; None means "not given"
    McqSettings  every setting that decides a run's results or its traffic, typed
    McqManifest  <run>/manifest.json: the settings as the run used them (model names resolved,
                 source and few-shot count resolved) plus what the run found (item count, task
                 fingerprint, prompt-format hash, times). kind "mcq", version 2.

Precedence for a new run: flag, then servecmp.toml (`[baseline]`, `[candidate]`, `[mcq]`), then
the defaults of `EndpointSpec` and `McqConfig`.

Resume policy. A resumed run must finish the same comparison at the same pace, so `--resume RUN_DIR`
restores every setting from the manifest, pacing (concurrency, rps, timeout, retries) included, and
reads no config file. Presentation flags (`--json`, `--show`) may be given. Any other flag is
accepted only when it equals what the manifest holds (so a command line repeated with `--resume`
added works) and otherwise refused, all conflicts named in one line.

Version-1 manifests (servecmp before issue 8: settings as strings in `extra`, no `version`) are
upgraded on read: every result-deciding setting they hold carries over exactly. They did not record
pacing, so a resume of one takes pacing from its flags, else the defaults, and rewrites the manifest
as version 2.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError

from servecmp import __version__
from servecmp.endpoints import EndpointSpec, endpoint_from, normalise_url
from servecmp.errors import UserError
from servecmp.records import ROLES, EndpointRole, RunManifest
from servecmp.runstore import MANIFEST, read_json, utcnow, write_json_atomic

if TYPE_CHECKING:
    from servecmp.config import Config
    from servecmp.tasks.registry import TaskData

KIND = "mcq"
MANIFEST_VERSION = 2
#: Flags that change how results are shown, never what they are: always accepted with --resume.
PRESENTATION_FLAGS = ("--json", "--show")


@dataclass
class McqOptions:
    """The command-line flags of `servecmp mcq`; None means "not given"."""

    baseline: str | None = None
    candidate: str | None = None
    baseline_model: str | None = None
    candidate_model: str | None = None
    baseline_key_env: str | None = None
    candidate_key_env: str | None = None
    task: str | None = None
    data_dir: str | None = None
    source: str | None = None
    fewshot: int | None = None
    fewshot_file: str | None = None
    limit: int | None = None
    sample: int | None = None
    seed: int | None = None
    top_k: int | None = None
    concurrency: int | None = None
    rps: float | None = None
    timeout: float | None = None
    retries: int | None = None
    runs_dir: Path | None = None
    resume: Path | None = None
    config: Path | None = None


class McqSettings(BaseModel):
    """Everything a run needs, after flags, config file and defaults are merged."""

    model_config = ConfigDict(extra="forbid")

    baseline: EndpointSpec
    candidate: EndpointSpec
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
    runs_dir: Path = Path("runs")

    def endpoint(self, role: EndpointRole) -> EndpointSpec:
        return self.baseline if role == "baseline" else self.candidate


class ManifestEndpoint(EndpointSpec):
    """One endpoint as the manifest records it: the full `EndpointSpec` (never a key, only the
    name of its variable) and its role."""

    role: EndpointRole
    #: Resolved from /v1/models when the run started, if it was not given.
    model: str

    def spec(self) -> EndpointSpec:
        return EndpointSpec.model_validate(self.model_dump(exclude={"role"}))


class McqManifest(BaseModel):
    """<run>/manifest.json of an MCQ run (layout version 2)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["mcq"] = "mcq"
    version: Literal[2] = 2
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
    started_at: str
    finished_at: str | None = None

    #: The layout version the manifest had on disk (1: upgraded on read, pacing not recorded).
    _version_on_disk: int = PrivateAttr(default=MANIFEST_VERSION)

    @property
    def pacing_recorded(self) -> bool:
        return self._version_on_disk >= MANIFEST_VERSION

    def endpoint(self, role: EndpointRole) -> EndpointSpec:
        for e in self.endpoints:
            if e.role == role:
                return e.spec()
        raise UserError(f"the run's manifest names no {role} endpoint")

    def settings(self, runs_dir: Path) -> McqSettings:
        return McqSettings(
            baseline=self.endpoint("baseline"),
            candidate=self.endpoint("candidate"),
            task=self.task,
            data_dir=self.data_dir,
            source=self.source,
            fewshot=self.fewshot,
            fewshot_file=self.fewshot_file,
            limit=self.limit,
            sample=self.sample,
            seed=self.seed,
            top_k=self.top_k,
            runs_dir=runs_dir,
        )


def new_manifest(settings: McqSettings, data: TaskData) -> McqManifest:
    """The manifest of a new run; endpoints must carry their resolved model names by now."""
    return McqManifest(
        servecmp_version=__version__,
        task=settings.task,
        data_dir=settings.data_dir,
        source=data.source_kind,
        source_description=data.source,
        fewshot=data.fewshot,
        fewshot_file=settings.fewshot_file,
        limit=settings.limit,
        sample=settings.sample,
        seed=settings.seed,
        top_k=settings.top_k,
        task_fingerprint=data.fingerprint,
        prompt_format_hash=data.prompt_format_hash,
        n_items=len(data.items),
        endpoints=[ManifestEndpoint(role=role, **settings.endpoint(role).model_dump()) for role in ROLES],
        started_at=utcnow(),
    )


def write_manifest(run_dir: Path, manifest: McqManifest) -> None:
    # Atomic: a crash while writing leaves the previous manifest, never half of one.
    write_json_atomic(run_dir / MANIFEST, manifest.model_dump(mode="json"))


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"


def _upgrade_v1(raw: dict[str, Any], path: Path) -> McqManifest:
    """A version-1 manifest as version 2: every setting it holds carries over; pacing, which it did
    not record, takes `EndpointSpec`'s defaults."""
    try:
        old = RunManifest.model_validate(raw)
    except ValidationError as exc:
        raise UserError(f"{path}: not a servecmp manifest ({_first_error(exc)})") from exc
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
    if version != MANIFEST_VERSION:
        raise UserError(f"{path} has manifest version {version}; this servecmp ({__version__}) reads "
                        f"versions 1 and {MANIFEST_VERSION}: upgrade servecmp")
    try:
        return McqManifest.model_validate(raw)
    except ValidationError as exc:
        raise UserError(f"{path}: not a valid MCQ manifest ({_first_error(exc)})") from exc


# --- a new run ------------------------------------------------------------------------------------


def new_settings(opts: McqOptions, cfg: Config) -> McqSettings:
    """Flags over servecmp.toml over defaults. UserError for a missing endpoint or a bad value."""
    pacing = {"max_concurrency": opts.concurrency, "requests_per_second": opts.rps, "timeout_s": opts.timeout,
              "max_retries": opts.retries}
    mc = cfg.mcq
    # --limit (the first N) given as a flag replaces the config's seeded sample: they are alternatives.
    sample = opts.sample if opts.sample is not None or opts.limit is not None else mc.sample
    return McqSettings(
        baseline=endpoint_from("baseline", cfg.baseline, opts.baseline, model=opts.baseline_model,
                               api_key_env=opts.baseline_key_env, **pacing),
        candidate=endpoint_from("candidate", cfg.candidate, opts.candidate, model=opts.candidate_model,
                                api_key_env=opts.candidate_key_env, **pacing),
        task=opts.task or mc.task,
        data_dir=opts.data_dir if opts.data_dir is not None else mc.data_dir,
        source=opts.source if opts.source is not None else mc.source,
        fewshot=opts.fewshot if opts.fewshot is not None else mc.fewshot,
        fewshot_file=opts.fewshot_file if opts.fewshot_file is not None else mc.fewshot_file,
        limit=opts.limit,
        sample=sample,
        seed=opts.seed if opts.seed is not None else mc.seed,
        top_k=opts.top_k if opts.top_k is not None else mc.top_k,
        runs_dir=opts.runs_dir if opts.runs_dir is not None else Path(mc.runs_dir),
    )


# --- a resumed run --------------------------------------------------------------------------------


def _same_path(a: str | Path | None, b: str | Path | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return os.path.realpath(a) == os.path.realpath(b)


def _same_task(given: str, stored: str) -> bool:
    from servecmp.tasks.registry import JSONL_PREFIX

    if given.startswith(JSONL_PREFIX) and stored.startswith(JSONL_PREFIX):
        return _same_path(given.removeprefix(JSONL_PREFIX), stored.removeprefix(JSONL_PREFIX))
    return given == stored


def _same_url(given: str, stored: str) -> bool:
    return normalise_url(given) == stored


def _shown(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _pacing_conflict(flag: str, given: float, specs: dict[EndpointRole, EndpointSpec], attr: str) -> str | None:
    stored = {role: getattr(spec, attr) for role, spec in specs.items()}
    if all(v is not None and float(v) == float(given) for v in stored.values()):
        return None
    if len(set(stored.values())) == 1:
        ran = _shown(stored["baseline"])
    else:
        ran = ", ".join(f"{role} {_shown(v)}" for role, v in stored.items())
    return f"{flag} {_shown(given)} (it ran with {ran})"


def resume_conflicts(opts: McqOptions, run_dir: Path, m: McqManifest) -> list[str]:
    """The given flags that differ from what the run's manifest holds, each as
    "--flag value (what the run has)"; empty when the resume may go ahead."""
    specs = {role: m.endpoint(role) for role in ROLES}
    out: list[str] = []

    def differs(flag: str, given: Any, stored: Any, same: Any = None, why: str | None = None) -> None:
        if given is None:
            return
        if not (same(given, stored) if same is not None else given == stored):
            out.append(f"{flag} {_shown(given)} ({why or f'it has {_shown(stored)}'})")

    for role in ROLES:
        differs(f"--{role}", getattr(opts, role), specs[role].base_url, _same_url)
        differs(f"--{role}-model", getattr(opts, f"{role}_model"), specs[role].model)
        differs(f"--{role}-key-env", getattr(opts, f"{role}_key_env"), specs[role].api_key_env)
    differs("--task", opts.task, m.task, _same_task, why=f"it is a run of task '{m.task}'")
    differs("--data-dir", opts.data_dir, m.data_dir, _same_path)
    differs("--source", opts.source, m.source)
    differs("--fewshot", opts.fewshot, m.fewshot)
    differs("--fewshot-file", opts.fewshot_file, m.fewshot_file, _same_path)
    differs("--limit", opts.limit, m.limit)
    differs("--sample", opts.sample, m.sample)
    differs("--seed", opts.seed, m.seed)
    differs("--top-k", opts.top_k, m.top_k)
    differs("--runs-dir", opts.runs_dir, run_dir.parent, _same_path)
    if m.pacing_recorded:
        for flag, value, attr in (("--concurrency", opts.concurrency, "max_concurrency"),
                                  ("--rps", opts.rps, "requests_per_second"),
                                  ("--timeout", opts.timeout, "timeout_s"),
                                  ("--retries", opts.retries, "max_retries")):
            if value is not None and (conflict := _pacing_conflict(flag, value, specs, attr)):
                out.append(conflict)
    if opts.config is not None:
        out.append(f"-c/--config {opts.config} (a resumed run reads no config file)")
    return out


def resumed_settings(opts: McqOptions) -> tuple[McqSettings, McqManifest]:
    """The settings of the run in `opts.resume`, exactly as its manifest holds them.

    UserError, one line, naming every given flag that differs from the manifest.
    """
    assert opts.resume is not None
    run_dir = opts.resume
    manifest = read_manifest(run_dir)
    conflicts = resume_conflicts(opts, run_dir, manifest)
    if conflicts:
        raise UserError(
            f"cannot resume {run_dir} with {'; '.join(conflicts)}: a resumed run keeps every setting of the "
            "original, read from its manifest, so it finishes the same comparison at the same pace; drop "
            f"{'that flag' if len(conflicts) == 1 else 'those flags'} (only {' and '.join(PRESENTATION_FLAGS)} "
            "may be given with --resume) or start a new run"
        )
    settings = manifest.settings(runs_dir=run_dir.parent)
    if not manifest.pacing_recorded:
        # A version-1 manifest holds no pacing: the flags (else the defaults) decide it, and the
        # manifest rewritten as version 2 at the start of the resume records it from then on.
        pacing = {"max_concurrency": opts.concurrency, "requests_per_second": opts.rps,
                  "timeout_s": opts.timeout, "max_retries": opts.retries}
        given = {k: v for k, v in pacing.items() if v is not None}
        settings = settings.model_copy(update={
            role: endpoint_from(role, settings.endpoint(role), None, **given) for role in ROLES
        })
    return settings, manifest
