"""Running an MT-Bench comparison end to end: answers, judgments, summary. Resumable at every step.

Order of work: (1) refuse early if a paid judge would need a confirmation nobody can give;
(2) answers still missing from either endpoint, appended as they arrive; (3) judgments still owed,
after the cost guard, appended as they arrive; (4) the summary, rebuilt from what is on disk.
An endpoint that fails after the client's retries stops the run with one line naming the run
directory; `--resume RUN_DIR` then continues where it stopped, paying for nothing twice.

The summary is always `load_summary(run_dir)`: computed from the manifest, questions, answers and
judgments on disk, with no endpoint and no key. A finished run and `servecmp report RUN_DIR` on it
therefore give the same numbers by construction.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from servecmp.concurrency import gather_or_cancel
from servecmp.endpoints import EndpointClient, EndpointError, api_key_from_env
from servecmp.errors import RunFailed, RunInterrupted, UserError
from servecmp.judges.cache import CACHE_FILE, JudgeCache
from servecmp.judges.cost import CostEstimate, confirm_cost, count_prompt_tokens, refuse_if_unconfirmable
from servecmp.judges.runner import JudgeRunner, JudgeUnavailable
from servecmp.mtbench import questions as qmod
from servecmp.mtbench.answers import generate_answers
from servecmp.mtbench.judging import PairJob, SingleJob, plan_pairs, plan_single, requests_of, run_jobs
from servecmp.mtbench.manifest import MtBenchManifest, read_manifest
from servecmp.mtbench.questions import QuestionId, write_questions
from servecmp.mtbench.records import AnswerRecord
from servecmp.mtbench.report import (
    MtBenchComparison,
    MtBenchSummary,
    MtComparedEndpoint,
    build_comparison,
    build_summary,
)
from servecmp.mtbench.rundir import MtRunPaths, load_answers, load_pairs, load_single
from servecmp.mtbench.settings import MtBenchSettings, assign_stems, manifest_for
from servecmp.progress import counting_progress
from servecmp.records import ROLES, EndpointRole
from servecmp.runstore import JsonlAppender, new_run_dir, utcnow, write_json_atomic

#: Largest drops a summary keeps when the caller does not say (servecmp.toml's [mtbench] show default).
DEFAULT_SHOW = 5

DEMO_JUDGE_NOTE = (
    "judge: the baseline model itself (offline demo). A small model's ratings (e.g. a 135M model's) only "
    "exercise the pipeline; they say nothing about answer quality."
)


@dataclass
class RunIO:
    console: Console
    is_tty: bool
    ask: Callable[[str], bool]
    #: Set by execute() as soon as the run directory exists, so an interrupted caller can name it.
    run_dir: Path | None = None

    def say(self, message: str) -> None:
        self.console.print(message, highlight=False, soft_wrap=True, markup=False)


@dataclass
class GenerationStats:
    answers: dict[str, int] = field(default_factory=dict)
    completion_tokens: dict[str, int] = field(default_factory=dict)
    wall_s: dict[str, float] = field(default_factory=dict)
    total_s: float = 0.0


@dataclass
class JudgingStats:
    wall_s: float = 0.0
    #: Judge calls made (each may have taken several HTTP requests, see `http_requests`).
    calls: int = 0
    cache_hits: int = 0
    http_requests: int = 0
    #: Judgments left undone because --max-judge-calls was reached.
    skipped: int = 0


@dataclass
class MtBenchResult:
    paths: MtRunPaths
    #: One candidate: its MtBenchSummary; several: the MtBenchComparison.
    summary: MtBenchSummary | MtBenchComparison
    generation: GenerationStats
    judging: JudgingStats


def _progress(io: RunIO) -> Progress:
    return counting_progress(console=io.console, transient=True, disable=not io.is_tty)


def _resume_hint(paths: MtRunPaths) -> str:
    return f"finished work is saved; resume with --resume {paths.root}"


async def _start_new(
    s: MtBenchSettings, clients: dict[str, EndpointClient], cand_clients: list[EndpointClient],
    runs_root: Path, io: RunIO,
) -> tuple[MtRunPaths, MtBenchManifest]:
    await clients["baseline"].resolve_model("baseline")
    for i, client in enumerate(cand_clients):
        await client.resolve_model("candidate" if len(cand_clients) == 1 else f"candidate {i + 1}")
    if s.judge_is_baseline:
        s.judge.model = s.judge.model or s.baseline.model
    elif s.judge.model is None:
        await clients["judge"].resolve_model("judge")
    assign_stems(s)
    for c, client in zip(s.candidates, cand_clients, strict=True):
        clients[s.name_of(c)] = client
    paths = MtRunPaths(new_run_dir(runs_root, "mtbench"))
    paths.make_dirs()
    write_questions(paths.questions, s.questions)
    manifest = manifest_for(s)
    write_json_atomic(paths.manifest, manifest.model_dump(mode="json"))
    io.say(f"run directory: {paths.root}")
    return paths, manifest


async def _generate(
    s: MtBenchSettings,
    clients: dict[str, EndpointClient],
    paths: MtRunPaths,
    io: RunIO,
    stats: GenerationStats,
) -> None:
    # Every endpoint by its name: the baseline (answers generated once) and each candidate.
    names = ["baseline", *(s.name_of(c) for c in s.candidates)]
    answers = {name: load_answers(paths.answers(s.stems[name])) for name in names}
    todo = {name: [q for q in s.questions if q.question_id not in answers[name]] for name in names}
    if not any(todo.values()):
        return
    io.say(
        f"generating answers (max {s.max_tokens} tokens per turn): "
        + ", ".join(f"{name} {len(todo[name])} questions" for name in names if todo[name])
    )

    with _progress(io) as progress:

        async def one_role(role: str) -> None:
            if not todo[role]:
                return
            endpoint_role: EndpointRole = "baseline" if role == "baseline" else "candidate"
            task = progress.add_task(f"answers {role}", total=len(todo[role]))
            t0 = time.perf_counter()
            stats.answers[role] = stats.completion_tokens[role] = 0

            def done(record: AnswerRecord) -> None:
                progress.advance(task)
                stats.answers[role] += 1
                stats.completion_tokens[role] += sum(record.servecmp.completion_tokens)

            with JsonlAppender(paths.answers(s.stems[role])) as out:
                try:
                    await generate_answers(
                        clients[role], todo[role], out, role=endpoint_role, max_tokens=s.max_tokens,
                        on_done=done,
                    )
                except EndpointError as exc:
                    raise RunFailed(
                        f"{role} endpoint failed: {exc}; {stats.answers[role]} new {role} answers saved; "
                        + _resume_hint(paths)
                    ) from exc
                finally:
                    stats.wall_s[role] = time.perf_counter() - t0

        tasks = [asyncio.ensure_future(one_role(name)) for name in names]
        await gather_or_cancel(tasks)


async def _judge(
    s: MtBenchSettings, judge_client: EndpointClient, paths: MtRunPaths, io: RunIO, stats: JudgingStats
) -> None:
    judge_model = judge_client.model
    base_answers = load_answers(paths.answers(s.stems["baseline"]))
    done_single = load_single(paths.single(judge_model))
    single_jobs: list[SingleJob] = []
    pair_jobs: list[PairJob] = []
    # Per candidate: its answers against the baseline's; the baseline's own grading is planned once.
    for i, c in enumerate(s.candidates):
        name = s.name_of(c)
        answers: dict[EndpointRole, dict[QuestionId, AnswerRecord]] = {
            "baseline": base_answers,
            "candidate": load_answers(paths.answers(s.stems[name])),
        }
        stems: dict[EndpointRole, str] = {"baseline": s.stems["baseline"], "candidate": s.stems[name]}
        if s.mode in ("single", "both"):
            roles: tuple[EndpointRole, ...] = ROLES if i == 0 else ("candidate",)
            single_jobs += plan_single(s.questions, answers, stems, s.prompts, done_single, roles)
        if s.mode in ("pairwise", "both"):
            done_pairs = load_pairs(paths.pair(judge_model), stems["candidate"] if len(s.candidates) > 1 else None)
            pair_jobs += plan_pairs(s.questions, answers, stems, s.prompts, done_pairs)
    cache_paths = [paths.cache] + ([s.shared_cache_dir / CACHE_FILE] if s.shared_cache_dir else [])
    with JudgeCache(cache_paths) as cache:
        runner = JudgeRunner(
            judge_client,
            cache,
            max_tokens=s.judge_max_tokens,
            force_format=s.judge_force_format,
            max_calls=s.max_judge_calls,
        )
        requests = list(requests_of(single_jobs, pair_jobs))
        if not requests:
            return
        uncached: dict[str, str] = {}
        for messages, kind in requests:
            key = runner.key(messages, kind)
            if key not in cache:
                uncached.setdefault(key, "\n".join(m["content"] for m in messages))
        to_call = list(uncached.values())
        if s.max_judge_calls is not None and len(to_call) > s.max_judge_calls:
            io.say(
                f"--max-judge-calls {s.max_judge_calls}: {len(to_call) - s.max_judge_calls} judge calls are "
                "left for a later --resume"
            )
            to_call = to_call[: s.max_judge_calls]
        tokens, method = count_prompt_tokens(to_call, judge_model)
        judge_desc = f"{judge_model} at {s.judge.normalised_url()}"
        confirm_cost(
            CostEstimate(
                calls=len(to_call), cached=len(requests) - len(uncached), prompt_tokens=tokens, method=method
            ),
            judge_desc,
            paid=s.judge_paid,
            assume_yes=s.assume_yes,
            is_tty=io.is_tty,
            ask=io.ask,
            say=io.say,
        )
        if s.judge_is_baseline:
            io.say(DEMO_JUDGE_NOTE)
        t0 = time.perf_counter()
        with (
            JsonlAppender(paths.single(judge_model)) as single_out,
            JsonlAppender(paths.pair(judge_model)) as pair_out,
            _progress(io) as progress,
        ):
            task = progress.add_task("judging", total=len(single_jobs) + len(pair_jobs))
            try:
                outcome = await run_jobs(
                    runner,
                    single_jobs,
                    pair_jobs,
                    single_out,
                    pair_out,
                    on_done=lambda: progress.advance(task),
                )
            except JudgeUnavailable as exc:
                raise RunFailed(f"judge {judge_desc} failed: {exc}; " + _resume_hint(paths)) from exc
            finally:
                stats.wall_s = time.perf_counter() - t0
                stats.calls = runner.stats.calls
                stats.cache_hits = runner.stats.cache_hits
                stats.http_requests = judge_client.stats.requests
        stats.skipped = outcome.skipped


def _candidate_summaries(run_dir: Path, show: int) -> tuple[MtBenchManifest, list[MtBenchSummary]]:
    """Every candidate's summary against the baseline, recomputed from the run's files."""
    paths = MtRunPaths(run_dir)
    manifest = read_manifest(run_dir)
    questions = qmod.load_questions(paths.questions)
    if qmod.fingerprint(questions) != manifest.task_fingerprint:
        raise UserError(f"{paths.questions} does not match the run's manifest (edited?)")
    judge_model = manifest.judge.model
    base = manifest.endpoint("baseline")
    base_answers = load_answers(paths.answers(base.answer_file))
    single = load_single(paths.single(judge_model))
    several = len(manifest.candidates) > 1
    out = []
    for e in manifest.candidates:
        stems: dict[EndpointRole, str] = {"baseline": base.answer_file, "candidate": e.answer_file}
        answers: dict[EndpointRole, dict[QuestionId, AnswerRecord]] = {
            "baseline": base_answers, "candidate": load_answers(paths.answers(e.answer_file)),
        }  # fmt: skip
        out.append(build_summary(
            questions=questions,
            answers=answers,
            stems=stems,
            models={"baseline": base.model, "candidate": e.model},
            single=single,
            pairs=load_pairs(paths.pair(judge_model), e.answer_file if several else None),
            mode=manifest.mode,
            judge_model=judge_model,
            judge_url=manifest.judge_base_url,
            judge_is_baseline=manifest.judge.is_demo,
            show=show,
        ))  # fmt: skip
    return manifest, out


def load_summary(run_dir: Path, *, show: int = DEFAULT_SHOW) -> MtBenchSummary:
    """The summary of the MT-Bench run in `run_dir`, recomputed from its files (manifest, questions,
    answers, judgments). Needs no endpoint and no key; writes nothing. `show`: how many of the
    largest drops the summary carries (render() shows at most that many). For a run with several
    candidates: the first candidate's (see `load_result` for all of them)."""
    return _candidate_summaries(run_dir, show)[1][0]


def load_result(run_dir: Path, *, show: int = DEFAULT_SHOW) -> MtBenchSummary | MtBenchComparison:
    """What summary.json holds: the MtBenchSummary of a one-candidate run, or the MtBenchComparison
    of a run with several candidates (each candidate's MtBenchSummary against the baseline)."""
    manifest, summaries = _candidate_summaries(run_dir, show)
    if len(summaries) == 1:
        return summaries[0]
    base = manifest.endpoint("baseline")
    return build_comparison(
        baseline=MtComparedEndpoint(name="baseline", model=base.model, url=base.normalised_url(),
                                    answer_file=f"model_answer/{base.answer_file}.jsonl"),
        candidates=[
            (MtComparedEndpoint(name=manifest.candidate_name(e), model=e.model, url=e.normalised_url(),
                                answer_file=f"model_answer/{e.answer_file}.jsonl"), summary)
            for e, summary in zip(manifest.candidates, summaries, strict=True)
        ],
    )  # fmt: skip


def _check_keys(s: MtBenchSettings) -> None:
    """Every key variable the run names must be set, before any work (the key is read, never kept)."""
    api_key_from_env(s.baseline.api_key_env, "baseline")
    for c in s.candidates:
        api_key_from_env(c.api_key_env, "candidate" if len(s.candidates) == 1 else f"candidate {c.name or c.base_url}")
    if s.judge_is_baseline:
        return
    try:
        api_key_from_env(s.judge.api_key_env, "judge")
    except UserError as exc:
        raise UserError(
            f"{exc}; set it, or pass --judge-url baseline for the offline demo judge (the baseline model "
            "judges; its scores only exercise the pipeline)"
        ) from None


async def execute(
    s: MtBenchSettings,
    io: RunIO,
    *,
    runs_root: Path | None = None,
    resume: tuple[MtRunPaths, MtBenchManifest] | None = None,
) -> MtBenchResult:
    """Start a new run under `runs_root`, or finish the run in `resume`."""
    refuse_if_unconfirmable(paid=s.judge_paid, assume_yes=s.assume_yes, is_tty=io.is_tty)
    # Before any request: a missing key must not leave a run directory with answers but no judge.
    _check_keys(s)
    async with AsyncExitStack() as stack:
        judge_client = await stack.enter_async_context(EndpointClient(s.judge))
        clients: dict[str, EndpointClient] = {"judge": judge_client}
        clients["baseline"] = await stack.enter_async_context(EndpointClient(s.baseline))
        cand_clients = [await stack.enter_async_context(EndpointClient(c)) for c in s.candidates]
        if resume is None:
            if runs_root is None:
                raise ValueError("execute() needs runs_root or resume")
            paths, manifest = await _start_new(s, clients, cand_clients, runs_root, io)
        else:
            paths, manifest = resume
            for c, client in zip(s.candidates, cand_clients, strict=True):
                clients[s.name_of(c)] = client
            io.say(f"resuming {paths.root}")
            if s.mode != manifest.mode:
                # Another kind of judging over the same answers: the run is unfinished until it is done.
                manifest.mode, manifest.finished_at = s.mode, None
            # Also turns a version-1 manifest into version 2 (see servecmp.mtbench.manifest).
            write_json_atomic(paths.manifest, manifest.model_dump(mode="json"))
        io.run_dir = paths.root

        gen, judging = GenerationStats(), JudgingStats()
        t0 = time.perf_counter()
        await _generate(s, clients, paths, io, gen)
        gen.total_s = time.perf_counter() - t0
        await _judge(s, judge_client, paths, io, judging)

    summary = load_result(paths.root, show=s.show)
    write_json_atomic(paths.summary, summary.model_dump(mode="json"))
    if summary.complete and manifest.finished_at is None:
        manifest.finished_at = utcnow()
        write_json_atomic(paths.manifest, manifest.model_dump(mode="json"))
    if judging.skipped:
        io.say(f"{judging.skipped} judgments not made (--max-judge-calls); " + _resume_hint(paths))
    return MtBenchResult(paths=paths, summary=summary, generation=gen, judging=judging)


def run_blocking(
    s: MtBenchSettings,
    io: RunIO,
    *,
    runs_root: Path | None = None,
    resume: tuple[MtRunPaths, MtBenchManifest] | None = None,
) -> MtBenchResult:
    """`execute` from synchronous code. Ctrl-C (or SIGTERM turned into KeyboardInterrupt) after the
    run directory exists becomes RunInterrupted (exit 130) naming it: everything finished is on disk."""
    try:
        return asyncio.run(execute(s, io, runs_root=runs_root, resume=resume))
    except KeyboardInterrupt:
        if io.run_dir is None:
            raise
        raise RunInterrupted(
            f"interrupted; finished answers and judgments are saved in {io.run_dir}; "
            f"resume with: servecmp mtbench --resume {io.run_dir}"
        ) from None
