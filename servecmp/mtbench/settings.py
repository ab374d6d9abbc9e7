"""What an MT-Bench run does, from the flags and servecmp.toml (new run) or from its manifest (resume).

Precedence: flag, then config file, then the defaults documented on JudgeConfig/MtBenchConfig.
A resumed run takes its questions, endpoints, judge and answer settings from the run directory,
so it finishes the same comparison; only pacing and presentation flags may change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast
from urllib.parse import urlparse

from servecmp import __version__
from servecmp.config import Config
from servecmp.endpoints import EndpointSpec, endpoint_from
from servecmp.errors import UserError
from servecmp.judges.cost import is_paid_judge
from servecmp.judges.parsing import FORCED_MAX_TOKENS
from servecmp.judges.prompts import JudgePrompts, load_judge_prompts
from servecmp.mtbench import questions as qmod
from servecmp.mtbench.questions import MtQuestion
from servecmp.mtbench.rundir import MtRunPaths, answer_stems
from servecmp.records import EndpointInfo, EndpointRole, RunManifest
from servecmp.runstore import read_model, utcnow
from servecmp.serving.modelpair import cache_root

Mode = Literal["single", "pairwise", "both"]
MODES: tuple[Mode, ...] = ("single", "pairwise", "both")
OPENAI_HOST = "api.openai.com"
DEMO_JUDGE = "baseline"
TASK = "mt_bench"


@dataclass
class MtBenchOptions:
    """The command-line flags; None means "not given"."""

    questions: Path | None = None
    references: Path | None = None
    limit: int | None = None
    categories: list[str] | None = None
    max_tokens: int | None = None
    baseline: str | None = None
    baseline_model: str | None = None
    candidate: str | None = None
    candidate_model: str | None = None
    judge_url: str | None = None
    judge_model: str | None = None
    judge_api_key_env: str | None = None
    judge_force_format: bool | None = None
    mode: str | None = None
    resume: Path | None = None
    max_judge_calls: int | None = None
    judge_rps: float | None = None
    judge_cache: str | None = None
    runs_dir: Path | None = None
    show: int | None = None
    yes: bool = False


@dataclass
class MtBenchSettings:
    questions: list[MtQuestion]
    question_source: str
    reference_source: str
    baseline: EndpointSpec
    candidate: EndpointSpec
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
    stems: dict[EndpointRole, str] = field(default_factory=dict)

    @property
    def judge_paid(self) -> bool:
        return is_paid_judge(self.judge.base_url, self.judge.api_key_env)


def _mode(value: str) -> Mode:
    if value not in MODES:
        raise UserError(f"--mode must be one of {', '.join(MODES)}, not {value!r}")
    return cast(Mode, value)


def _is_openai(url: str) -> bool:
    return (urlparse(url if "://" in url else f"https://{url}").hostname or "").lower() == OPENAI_HOST


def _endpoint(role: str, section: EndpointSpec | None, url: str | None, model: str | None) -> EndpointSpec:
    return endpoint_from(role, section, url, model=model)


def _shared_cache(flag: str | None, cfg: Config) -> Path | None:
    value = flag if flag is not None else cfg.judge.cache_dir
    if value is not None and value.lower() in ("off", "none", ""):
        return None
    return Path(value) if value is not None else cache_root() / "judgments"


def _judge_spec(opts: MtBenchOptions, cfg: Config, baseline: EndpointSpec) -> tuple[EndpointSpec, bool]:
    jc = cfg.judge
    url = opts.judge_url or jc.url
    if url == DEMO_JUDGE:
        # The offline demo: the baseline model judges. Its model is the baseline's, resolved later.
        return baseline.model_copy(update={"model": opts.judge_model or baseline.model}), True
    model = opts.judge_model or jc.model or ("gpt-4" if _is_openai(url) else None)
    key_env = opts.judge_api_key_env or jc.api_key_env or ("OPENAI_API_KEY" if _is_openai(url) else None)
    spec = EndpointSpec(
        base_url=url,
        model=model,
        api_key_env=key_env,
        timeout_s=jc.timeout_s,
        max_concurrency=jc.max_concurrency,
        requests_per_second=opts.judge_rps or jc.requests_per_second,
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

    baseline = _endpoint("baseline", cfg.baseline, opts.baseline, opts.baseline_model)
    candidate = _endpoint("candidate", cfg.candidate, opts.candidate, opts.candidate_model)
    judge, is_demo = _judge_spec(opts, cfg, baseline)
    force, judge_tokens = _judge_format(opts, cfg, is_demo)
    max_tokens = opts.max_tokens if opts.max_tokens is not None else mc.max_tokens
    if max_tokens < 1:
        raise UserError(f"--max-tokens must be at least 1, got {max_tokens}")
    return MtBenchSettings(
        questions=questions,
        question_source=str(question_file) if question_file else "prompts/mt_bench/question.jsonl",
        reference_source=reference_source,
        baseline=baseline,
        candidate=candidate,
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


# Flags that would change what a run compares; --resume refuses them instead of silently mixing runs.
_FIXED_ON_RESUME = (
    "questions", "references", "limit", "categories", "max_tokens", "baseline", "baseline_model",
    "candidate", "candidate_model", "judge_url", "judge_model", "judge_api_key_env", "judge_force_format",
)  # fmt: skip


def manifest_for(settings: MtBenchSettings) -> RunManifest:
    """The manifest of a new run; `extra` holds everything --resume needs (key names, never keys)."""
    s = settings
    return RunManifest(
        kind="mtbench",
        servecmp_version=__version__,
        task=TASK,
        task_fingerprint=qmod.fingerprint(s.questions),
        prompt_format_hash=s.prompts.fingerprint,
        n_items=len(s.questions),
        limit=s.limit,
        source=s.question_source,
        endpoints=[
            EndpointInfo(role="baseline", base_url=s.baseline.normalised_url(), model=s.baseline.model or ""),
            EndpointInfo(
                role="candidate", base_url=s.candidate.normalised_url(), model=s.candidate.model or ""
            ),
        ],
        started_at=utcnow(),
        extra={
            "references": s.reference_source,
            "categories": ",".join(s.categories or []),
            "max_tokens": str(s.max_tokens),
            "mode": s.mode,
            "baseline_api_key_env": s.baseline.api_key_env or "",
            "candidate_api_key_env": s.candidate.api_key_env or "",
            "baseline_answer_file": s.stems["baseline"],
            "candidate_answer_file": s.stems["candidate"],
            "judge_url": DEMO_JUDGE if s.judge_is_baseline else s.judge.normalised_url(),
            "judge_model": s.judge.model or "",
            "judge_api_key_env": s.judge.api_key_env or "",
            "judge_force_format": str(s.judge_force_format).lower(),
            "judge_max_tokens": str(s.judge_max_tokens),
        },
    )


def assign_stems(settings: MtBenchSettings) -> None:
    """Name the answer files once both model names are known."""
    base, cand = answer_stems(settings.baseline.model or "baseline", settings.candidate.model or "candidate")
    settings.stems = {"baseline": base, "candidate": cand}


def read_manifest(paths: MtRunPaths) -> RunManifest:
    if not paths.root.is_dir():
        raise UserError(f"--resume: {paths.root} is not a directory")
    manifest = read_model(paths.manifest, RunManifest)
    if manifest.kind != "mtbench":
        raise UserError(f"--resume: {paths.root} is a {manifest.kind} run, not an MT-Bench run")
    return manifest


def resumed_settings(
    paths: MtRunPaths, opts: MtBenchOptions, cfg: Config
) -> tuple[MtBenchSettings, RunManifest]:
    given = [name for name in _FIXED_ON_RESUME if getattr(opts, name) not in (None, [])]
    if given:
        flags = ", ".join("--" + g.replace("_", "-") for g in given)
        raise UserError(f"--resume takes the run's settings from {paths.manifest}; drop {flags}")
    manifest = read_manifest(paths)
    x = manifest.extra
    missing = [k for k in ("judge_url", "baseline_answer_file", "candidate_answer_file") if k not in x]
    if missing:
        raise UserError(
            f"--resume: {paths.manifest} lacks {', '.join(missing)} (not written by servecmp mtbench?)"
        )
    prompts = load_judge_prompts()
    if prompts.fingerprint != manifest.prompt_format_hash:
        raise UserError(
            f"--resume: {paths.root} was judged with other judge prompts than this servecmp ships"
        )
    questions = qmod.load_questions(paths.questions)
    if qmod.fingerprint(questions) != manifest.task_fingerprint:
        raise UserError(f"--resume: {paths.questions} does not match the run's manifest (edited?)")
    roles = {e.role: e for e in manifest.endpoints}
    if set(roles) != {"baseline", "candidate"}:
        raise UserError(f"--resume: {paths.manifest} does not name a baseline and a candidate endpoint")

    def endpoint(role: EndpointRole) -> EndpointSpec:
        section = cfg.baseline if role == "baseline" else cfg.candidate
        return endpoint_from(role, section, roles[role].base_url, model=roles[role].model,
                             api_key_env=x.get(f"{role}_api_key_env") or None)

    baseline, candidate = endpoint("baseline"), endpoint("candidate")
    is_demo = x.get("judge_url") == DEMO_JUDGE
    if is_demo:
        judge = baseline.model_copy(update={"model": x.get("judge_model") or baseline.model})
    else:
        jc = cfg.judge
        judge = EndpointSpec(
            base_url=x["judge_url"],
            model=x.get("judge_model") or None,
            api_key_env=x.get("judge_api_key_env") or None,
            timeout_s=jc.timeout_s,
            max_concurrency=jc.max_concurrency,
            requests_per_second=opts.judge_rps or jc.requests_per_second,
            max_retries=jc.max_retries,
        )
    settings = MtBenchSettings(
        questions=questions,
        question_source=manifest.source,
        reference_source=x.get("references", ""),
        baseline=baseline,
        candidate=candidate,
        judge=judge,
        judge_is_baseline=is_demo,
        judge_force_format=x.get("judge_force_format") == "true",
        judge_max_tokens=int(x.get("judge_max_tokens", "2048")),
        mode=_mode(opts.mode or x.get("mode", "both")),
        max_tokens=int(x.get("max_tokens", "1024")),
        limit=manifest.limit,
        categories=[c for c in x.get("categories", "").split(",") if c] or None,
        max_judge_calls=opts.max_judge_calls
        if opts.max_judge_calls is not None
        else cfg.judge.max_judge_calls,
        shared_cache_dir=_shared_cache(opts.judge_cache, cfg),
        show=opts.show if opts.show is not None else cfg.mtbench.show,
        assume_yes=opts.yes,
        prompts=prompts,
        stems={"baseline": x["baseline_answer_file"], "candidate": x["candidate_answer_file"]},
    )
    return settings, manifest
