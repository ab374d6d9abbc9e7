"""What an MT-Bench run does, from the flags and servecmp.toml (new run) or from its manifest (resume).

Precedence for a new run: flag, then config file, then the defaults documented on
JudgeConfig/MtBenchConfig and EndpointSpec.

A resumed run takes everything it compares from its manifest (`servecmp.mtbench.manifest`): the
questions, both endpoints in full (URL, model, key variable, timeout, concurrency, rate, retries),
the judge, the answer settings and the mode. Flags that would change the comparison are refused by
name (`servecmp.options.RESULT_FLAGS`); the ones in `ACCEPTED_ON_RESUME` apply to this invocation only: they pace
the work, bound it, or present the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from servecmp import __version__
from servecmp.config import Config
from servecmp.endpoints import EndpointSpec, endpoint_from, normalise_url
from servecmp.errors import UserError
from servecmp.judges.cost import is_openai, is_paid_judge
from servecmp.judges.parsing import FORCED_MAX_TOKENS
from servecmp.judges.prompts import JudgePrompts, load_judge_prompts
from servecmp.mcq.settings import NamedEndpoint, candidate_endpoints, name_candidates
from servecmp.mtbench import questions as qmod
from servecmp.mtbench.manifest import (
    DEMO_JUDGE,
    MANIFEST_VERSION,
    TASK,
    Mode,
    MtBenchManifest,
    MtEndpoint,
    MtJudge,
    read_manifest,
)
from servecmp.mtbench.questions import MtQuestion
from servecmp.mtbench.rundir import MtRunPaths, answer_stems, file_stem
from servecmp.options import EndpointOptions, PacingOptions, RunOptions
from servecmp.runstore import refuse_on_resume, utcnow
from servecmp.serving.modelpair import cache_root

MODES: tuple[Mode, ...] = ("single", "pairwise", "both")

__all__ = [
    "ACCEPTED_ON_RESUME",
    "DEMO_JUDGE",
    "MODES",
    "TASK",
    "Mode",
    "MtBenchOptions",
    "MtBenchSettings",
    "assign_stems",
    "manifest_for",
    "new_settings",
    "resumed_settings",
]


# Bases listed last come first among a dataclass's fields (servecmp.options). MT-Bench has no
# --max-concurrency (its concurrency is a fixed number unless "auto" is given): that field stays None.
@dataclass
class MtBenchOptions(RunOptions, PacingOptions, EndpointOptions):
    """The command-line flags; None means "not given". Pacing is the answering endpoints' (the
    judge has its own, from [judge] and --judge-rps); concurrency not given: EndpointSpec's fixed default."""

    questions: Path | None = None
    references: Path | None = None
    categories: list[str] | None = None
    max_tokens: int | None = None
    judge_url: str | None = None
    judge_model: str | None = None
    judge_key_env: str | None = None
    judge_force_format: bool | None = None
    mode: str | None = None
    max_judge_calls: int | None = None
    judge_rps: float | None = None
    judge_cache: str | None = None
    show: int | None = None
    yes: bool = False



#: Flags --resume accepts, for this invocation: --mode (judge the same answers another way), the
#: pacing of the endpoints and of the judge, how many judge calls to make now, and presentation.
#: -c/--config then supplies only what the manifest does not hold: [judge] max_judge_calls and
#: cache_dir, [mtbench] show.
ACCEPTED_ON_RESUME: tuple[str, ...] = (
    "--mode", "--concurrency", "--rps", "--timeout", "--retries", "--judge-rps", "--max-judge-calls",
    "--judge-cache", "--show", "--json", "--yes", "-c/--config",
)  # fmt: skip


@dataclass
class MtBenchSettings:
    questions: list[MtQuestion]
    question_source: str
    reference_source: str
    baseline: EndpointSpec
    #: Every candidate in the order given; names resolved when the run starts (`resolve_names`).
    candidates: list[NamedEndpoint]
    judge: EndpointSpec
    judge_is_baseline: bool
    judge_force_format: bool
    judge_max_tokens: int
    mode: Mode
    max_tokens: int
    limit: int | None
    categories: list[str] | None
    max_judge_calls: int | None
    shared_cache_dir: Path | None
    show: int
    assume_yes: bool
    prompts: JudgePrompts
    #: Answer-file stems by endpoint name: "baseline" and each candidate's name ("candidate" when only one).
    stems: dict[str, str] = field(default_factory=dict)

    @property
    def candidate(self) -> EndpointSpec:
        """The first candidate's endpoint (the only one in a one-candidate run); a copy, without its name."""
        return EndpointSpec.model_validate(self.candidates[0].model_dump(exclude={"name"}))

    def name_of(self, c: NamedEndpoint) -> str:
        return c.name or "candidate"

    def resolve_names(self) -> None:
        """Give every candidate its name, once the models are known (as `servecmp mcq` does)."""
        if len(self.candidates) == 1:
            # One candidate keeps the role's name: today's files, summary and manifest (version 2).
            self.candidates[0].name = "candidate"
            return
        name_candidates(self.candidates)

    @property
    def judge_paid(self) -> bool:
        return is_paid_judge(self.judge.base_url, self.judge.api_key_env)


def _mode(value: str) -> Mode:
    if value not in MODES:
        raise UserError(f"--mode must be one of {', '.join(MODES)}, not {value!r}")
    return cast(Mode, value)


def _shared_cache(flag: str | None, cfg: Config) -> Path | None:
    value = flag if flag is not None else cfg.judge.cache_dir
    if value is not None and value.lower() in ("off", "none", ""):
        return None
    return Path(value) if value is not None else cache_root() / "judgments"


def _judge_url(url: str) -> str:
    try:
        return normalise_url(url)
    except UserError as exc:
        raise UserError(f"--judge-url: {exc}, or 'baseline' for the offline demo judge") from None


def _judge_spec(opts: MtBenchOptions, cfg: Config, baseline: EndpointSpec) -> tuple[EndpointSpec, bool]:
    jc = cfg.judge
    url = opts.judge_url or jc.url
    if url == DEMO_JUDGE:
        if opts.judge_key_env is not None:
            # Silently ignoring it would leave the user believing the judge uses that key.
            raise UserError("--judge-key-env does not apply to --judge-url baseline (it uses --baseline-key-env)")
        # The offline demo: the baseline endpoint judges. Its model is the baseline's, resolved later.
        return baseline.model_copy(update={"model": opts.judge_model or baseline.model}), True
    base_url = _judge_url(url)
    openai = is_openai(base_url)
    spec = endpoint_from(
        "judge",
        None,
        base_url,
        model=opts.judge_model or jc.model or ("gpt-4" if openai else None),
        api_key_env=opts.judge_key_env or jc.api_key_env or ("OPENAI_API_KEY" if openai else None),
        timeout_s=jc.timeout_s,
        max_concurrency=jc.max_concurrency,
        requests_per_second=opts.judge_rps if opts.judge_rps is not None else jc.requests_per_second,
        max_retries=jc.max_retries,
    )
    return spec, False


def _judge_format(opts: MtBenchOptions, cfg: Config, is_demo: bool) -> tuple[bool, int]:
    force = opts.judge_force_format
    if force is None:
        force = cfg.judge.force_format if cfg.judge.force_format is not None else is_demo
    explicit_tokens = "max_tokens" in cfg.judge.model_fields_set
    max_tokens = cfg.judge.max_tokens if explicit_tokens or not force else FORCED_MAX_TOKENS
    return force, max_tokens


def new_settings(opts: MtBenchOptions, cfg: Config) -> MtBenchSettings:
    mc = cfg.mtbench
    question_file = opts.questions or (Path(mc.question_file) if mc.question_file else None)
    reference_file = opts.references or (Path(mc.reference_file) if mc.reference_file else None)
    questions = qmod.load_questions(question_file)
    if reference_file is not None:
        questions = qmod.with_references(questions, qmod.load_reference_answers(reference_file))
        reference_source = str(reference_file)
    elif question_file is None:
        questions = qmod.with_references(
            questions, qmod.load_reference_answers(qmod.vendored("reference_answer/gpt-4.jsonl"))
        )
        reference_source = "prompts/mt_bench/reference_answer/gpt-4.jsonl"
    else:
        reference_source = "the question file's reference field"
    categories = opts.categories or mc.categories
    limit = opts.limit if opts.limit is not None else mc.limit
    questions = qmod.select(questions, categories=categories, limit=limit)

    pacing = opts.endpoint_pacing()
    baseline = endpoint_from(
        "baseline", cfg.baseline, opts.baseline, model=opts.baseline_model, api_key_env=opts.baseline_key_env,
        **pacing,
    )  # fmt: skip
    candidates = candidate_endpoints(opts, cfg, pacing)
    judge, is_demo = _judge_spec(opts, cfg, baseline)
    force, judge_tokens = _judge_format(opts, cfg, is_demo)
    max_tokens = opts.max_tokens if opts.max_tokens is not None else mc.max_tokens
    if max_tokens < 1:
        raise UserError(f"--max-tokens must be at least 1, got {max_tokens}")
    if opts.max_judge_calls is not None and opts.max_judge_calls < 0:
        raise UserError("--max-judge-calls must be 0 or more")
    return MtBenchSettings(
        questions=questions,
        question_source=str(question_file) if question_file else "prompts/mt_bench/question.jsonl",
        reference_source=reference_source,
        baseline=baseline,
        candidates=candidates,
        judge=judge,
        judge_is_baseline=is_demo,
        judge_force_format=force,
        judge_max_tokens=judge_tokens,
        mode=_mode(opts.mode or mc.mode),
        max_tokens=max_tokens,
        limit=limit,
        categories=categories,
        max_judge_calls=opts.max_judge_calls
        if opts.max_judge_calls is not None
        else cfg.judge.max_judge_calls,
        shared_cache_dir=_shared_cache(opts.judge_cache, cfg),
        show=opts.show if opts.show is not None else mc.show,
        assume_yes=opts.yes,
        prompts=load_judge_prompts(),
    )


def assign_stems(settings: MtBenchSettings) -> None:
    """Name the answer files (and the candidates) once every model name is known."""
    settings.resolve_names()
    base_model = settings.baseline.model or "baseline"
    if len(settings.candidates) == 1:
        base, cand = answer_stems(base_model, settings.candidate.model or "candidate")
        settings.stems = {"baseline": base, "candidate": cand}
        return
    stems = {settings.name_of(c): file_stem(c.model or "candidate") for c in settings.candidates}
    clash = {st for st in stems.values() if list(stems.values()).count(st) > 1}
    base = file_stem(base_model)
    if base in stems.values():
        clash.add(base)
        base = f"{base}-baseline"
    settings.stems = {"baseline": base}
    for name, st in stems.items():
        settings.stems[name] = f"{st}-{file_stem(name)}" if st in clash else st


def _resolved(model: str | None, what: str) -> str:
    if not model:
        # execute() resolves every model before it writes the manifest; reaching this is a bug.
        raise ValueError(f"manifest_for() needs the {what} model resolved")
    return model


def manifest_for(settings: MtBenchSettings) -> MtBenchManifest:
    """The manifest of a new run, written once both models and the judge's are known."""
    s = settings
    several = len(s.candidates) > 1
    endpoints = [
        MtEndpoint(**s.baseline.model_dump(exclude={"model"}), role="baseline",
                   model=_resolved(s.baseline.model, "baseline"), answer_file=s.stems["baseline"])
    ]
    for c in s.candidates:
        name = s.name_of(c)
        endpoints.append(
            MtEndpoint(**c.model_dump(exclude={"model", "name"}), role="candidate",
                       model=_resolved(c.model, name), answer_file=s.stems[name], name=name if several else None)
        )  # fmt: skip
    j = s.judge
    return MtBenchManifest(
        servecmp_version=__version__,
        source=s.question_source,
        task_fingerprint=qmod.fingerprint(s.questions),
        n_items=len(s.questions),
        limit=s.limit,
        categories=s.categories,
        references=s.reference_source,
        max_tokens=s.max_tokens,
        mode=s.mode,
        version=MANIFEST_VERSION if several else 2,
        endpoints=endpoints,
        judge=MtJudge(
            url=DEMO_JUDGE if s.judge_is_baseline else j.base_url, model=_resolved(j.model, "judge"),
            force_format=s.judge_force_format, max_tokens=s.judge_max_tokens,
            # The judge's key variable and pacing, as the run starts with them.
            **j.model_dump(include={"api_key_env", "timeout_s", "max_concurrency", "requests_per_second",
                                    "max_retries"}),
        ),
        prompt_format_hash=s.prompts.fingerprint,
        started_at=utcnow(),
    )


def refuse_fixed_flags(opts: MtBenchOptions, paths: MtRunPaths) -> None:
    # -c/--config is read on resume too, for what the manifest does not hold (see ACCEPTED_ON_RESUME).
    given = opts.fixed_on_resume(accepted=("config",))
    refuse_on_resume(paths.root, given, ACCEPTED_ON_RESUME)


def resumed_settings(
    paths: MtRunPaths, opts: MtBenchOptions, cfg: Config
) -> tuple[MtBenchSettings, MtBenchManifest]:
    refuse_fixed_flags(opts, paths)
    manifest = read_manifest(paths.root, cfg)
    prompts = load_judge_prompts()
    if prompts.fingerprint != manifest.prompt_format_hash:
        raise UserError(
            f"--resume: {paths.root} was judged with other judge prompts than this servecmp ships"
        )
    questions = qmod.load_questions(paths.questions)
    if qmod.fingerprint(questions) != manifest.task_fingerprint:
        raise UserError(f"--resume: {paths.questions} does not match the run's manifest (edited?)")
    if opts.max_judge_calls is not None and opts.max_judge_calls < 0:
        raise UserError("--max-judge-calls must be 0 or more")

    pacing = opts.endpoint_pacing()
    baseline = endpoint_from("baseline", manifest.endpoint("baseline").spec(), None, **pacing)
    candidates = [
        NamedEndpoint(**endpoint_from("candidate", e.spec(), None, **pacing).model_dump(),
                      name=manifest.candidate_name(e))
        for e in manifest.candidates
    ]  # fmt: skip
    j = manifest.judge
    if j.is_demo:
        judge = baseline.model_copy(update={"model": j.model})
    else:
        judge = endpoint_from(
            "judge", None, j.url, model=j.model, api_key_env=j.api_key_env, timeout_s=j.timeout_s,
            max_concurrency=j.max_concurrency, max_retries=j.max_retries,
            requests_per_second=opts.judge_rps if opts.judge_rps is not None else j.requests_per_second,
        )  # fmt: skip
    settings = MtBenchSettings(
        questions=questions,
        question_source=manifest.source,
        reference_source=manifest.references,
        baseline=baseline,
        candidates=candidates,
        judge=judge,
        judge_is_baseline=j.is_demo,
        judge_force_format=j.force_format,
        judge_max_tokens=j.max_tokens,
        mode=_mode(opts.mode or manifest.mode),
        max_tokens=manifest.max_tokens,
        limit=manifest.limit,
        categories=manifest.categories,
        max_judge_calls=opts.max_judge_calls
        if opts.max_judge_calls is not None
        else cfg.judge.max_judge_calls,
        shared_cache_dir=_shared_cache(opts.judge_cache, cfg),
        show=opts.show if opts.show is not None else cfg.mtbench.show,
        assume_yes=opts.yes,
        prompts=prompts,
        stems={"baseline": manifest.endpoint("baseline").answer_file,
               **{manifest.candidate_name(e): e.answer_file for e in manifest.candidates}},
    )
    return settings, manifest
