"""Planning and running MT-Bench judgments for one run: single grading and pairwise, both turns.

Planning is pure: from the questions, the answers and the judgments already on disk it lists the
judgments still owed (missing, or recorded as an error last time). Running asks the judge for each
and appends the record as soon as it exists. A judgment the judge answered but we cannot read is
recorded with its text and status, never dropped or given a number.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from servecmp.concurrency import gather_or_cancel
from servecmp.judges.pairwise import Game, Winner, winner_of
from servecmp.judges.parsing import parse_rating, parse_verdict
from servecmp.judges.prompts import JudgePrompt, JudgePrompts, Message, render_pair, render_single
from servecmp.judges.runner import JudgeBudgetExhausted, JudgeKind, JudgeReply, JudgeRunner
from servecmp.mtbench.questions import MtQuestion, QuestionId
from servecmp.mtbench.records import AnswerRecord, GameStatus, JudgmentStatus, PairJudgment, SingleJudgment
from servecmp.records import ROLES, EndpointRole
from servecmp.runstore import JsonlAppender


@dataclass(frozen=True)
class SingleJob:
    question: MtQuestion
    role: EndpointRole
    model: str
    turn: int
    prompt: JudgePrompt
    messages: list[Message]


@dataclass(frozen=True)
class PairJob:
    question: MtQuestion
    turn: int
    model_1: str
    model_2: str
    prompt: JudgePrompt
    #: Game 1 shows model_1 (baseline) as A; game 2 shows model_2 (candidate) as A.
    g1_messages: list[Message]
    g2_messages: list[Message]


def _reference(q: MtQuestion) -> tuple[bool, list[str] | None]:
    guided = q.needs_reference and q.reference is not None
    return guided, (q.reference if guided else None)


def _turns(q: MtQuestion) -> range:
    return range(1, len(q.turns) + 1)


def plan_single(
    questions: Sequence[MtQuestion],
    answers: Mapping[EndpointRole, Mapping[QuestionId, AnswerRecord]],
    stems: Mapping[EndpointRole, str],
    prompts: JudgePrompts,
    done: Mapping[tuple[QuestionId, str, int], SingleJudgment],
    roles: Sequence[EndpointRole] = ROLES,
) -> list[SingleJob]:
    """Single-grading jobs still owed for `roles` (a run with several candidates plans the baseline once)."""
    jobs = []
    for q in questions:
        guided, ref = _reference(q)
        for turn in _turns(q):
            prompt = prompts.choose("single", reference_guided=guided, multi_turn=turn == 2)
            for role in roles:
                answer = answers[role].get(q.question_id)
                previous = done.get((q.question_id, stems[role], turn))
                if answer is None or (previous is not None and previous.status != "error"):
                    continue
                messages = render_single(prompt, q.turns, answer.turns, turn=turn, reference=ref)
                jobs.append(SingleJob(q, role, stems[role], turn, prompt, messages))
    return jobs


def plan_pairs(
    questions: Sequence[MtQuestion],
    answers: Mapping[EndpointRole, Mapping[QuestionId, AnswerRecord]],
    stems: Mapping[EndpointRole, str],
    prompts: JudgePrompts,
    done: Mapping[tuple[QuestionId, int], PairJudgment],
) -> list[PairJob]:
    jobs = []
    for q in questions:
        base, cand = answers["baseline"].get(q.question_id), answers["candidate"].get(q.question_id)
        if base is None or cand is None:
            continue
        guided, ref = _reference(q)
        for turn in _turns(q):
            previous = done.get((q.question_id, turn))
            if previous is not None and "error" not in (previous.g1_status, previous.g2_status):
                continue
            prompt = prompts.choose("pairwise", reference_guided=guided, multi_turn=turn == 2)
            g1 = render_pair(prompt, q.turns, base.turns, cand.turns, turn=turn, reference=ref)
            g2 = render_pair(prompt, q.turns, cand.turns, base.turns, turn=turn, reference=ref)
            jobs.append(PairJob(q, turn, stems["baseline"], stems["candidate"], prompt, g1, g2))
    return jobs


def requests_of(
    single: Sequence[SingleJob], pairs: Sequence[PairJob]
) -> Iterator[tuple[list[Message], JudgeKind]]:
    """Every judge request the jobs make, in order (a pair job makes two)."""
    for s in single:
        yield s.messages, "single"
    for p in pairs:
        yield p.g1_messages, "pairwise"
        yield p.g2_messages, "pairwise"


def single_record(job: SingleJob, reply: JudgeReply, judge_model: str) -> SingleJudgment:
    status: JudgmentStatus
    if reply.text is None:
        text, score, status, raw = "", None, "error", None
    else:
        rating = parse_rating(reply.text)
        text, score, status, raw = reply.text, rating.score, rating.status, rating.raw
    return SingleJudgment(
        question_id=job.question.question_id,
        model=job.model,
        judge=(judge_model, job.prompt.name),
        user_prompt=job.messages[-1]["content"],
        judgment=text,
        score=score,
        turn=job.turn,
        tstamp=time.time(),
        status=status,
        endpoint=job.role,
        category=job.question.category,
        raw_rating=raw,
        error=reply.error,
    )


def _game(reply: JudgeReply, game: Game) -> tuple[Winner | Literal["error"], GameStatus]:
    if reply.text is None:
        return "error", "error"
    verdict = parse_verdict(reply.text)
    if verdict is None:
        return "error", "unparseable"
    return winner_of(verdict, game), "ok"


def pair_record(job: PairJob, g1: JudgeReply, g2: JudgeReply, judge_model: str) -> PairJudgment:
    g1_winner, g1_status = _game(g1, 1)
    g2_winner, g2_status = _game(g2, 2)
    errors = [e for e in (g1.error, g2.error) if e]
    return PairJudgment(
        question_id=job.question.question_id,
        model_1=job.model_1,
        model_2=job.model_2,
        g1_winner=g1_winner,
        g2_winner=g2_winner,
        judge=(judge_model, job.prompt.name),
        g1_user_prompt=job.g1_messages[-1]["content"],
        g1_judgment=g1.text or "",
        g2_user_prompt=job.g2_messages[-1]["content"],
        g2_judgment=g2.text or "",
        turn=job.turn,
        tstamp=time.time(),
        g1_status=g1_status,
        g2_status=g2_status,
        category=job.question.category,
        error="; ".join(errors) or None,
    )


@dataclass
class JudgingOutcome:
    single: list[SingleJudgment]
    pairs: list[PairJudgment]
    #: Jobs left undone because --max-judge-calls was reached.
    skipped: int


async def run_jobs(
    runner: JudgeRunner,
    single: Sequence[SingleJob],
    pairs: Sequence[PairJob],
    single_out: JsonlAppender,
    pair_out: JsonlAppender,
    on_done: Callable[[], None] | None = None,
) -> JudgingOutcome:
    """Run every job concurrently (the client caps in-flight requests); JudgeUnavailable propagates."""
    outcome = JudgingOutcome(single=[], pairs=[], skipped=0)

    async def do_single(job: SingleJob) -> None:
        try:
            reply = await runner.ask(job.messages, "single")
        except JudgeBudgetExhausted:
            outcome.skipped += 1
            return
        record = single_record(job, reply, runner.model)
        single_out.append(record)
        outcome.single.append(record)
        if on_done is not None:
            on_done()

    async def do_pair(job: PairJob) -> None:
        # Both games run to completion even if one fails, so an answered game lands in the cache.
        g1, g2 = await asyncio.gather(
            runner.ask(job.g1_messages, "pairwise"),
            runner.ask(job.g2_messages, "pairwise"),
            return_exceptions=True,
        )
        for result in (g1, g2):
            if isinstance(result, BaseException) and not isinstance(result, JudgeBudgetExhausted):
                raise result
        if not isinstance(g1, JudgeReply) or not isinstance(g2, JudgeReply):
            outcome.skipped += 1
            return
        record = pair_record(job, g1, g2, runner.model)
        pair_out.append(record)
        outcome.pairs.append(record)
        if on_done is not None:
            on_done()

    tasks = [asyncio.ensure_future(do_single(j)) for j in single]
    tasks += [asyncio.ensure_future(do_pair(j)) for j in pairs]
    await gather_or_cancel(tasks)
    return outcome
