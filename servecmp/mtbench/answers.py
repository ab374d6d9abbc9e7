"""Generating MT-Bench answers: two chat turns per question, the second seeing the first answer.

As FastChat's gen_api_answer.py: one conversation per question, sampled at the category's
temperature (`MtQuestion.temperature`), `max_tokens` new tokens per turn. No system message is
added: each served model's own chat template decides. Each finished question is appended to the
endpoint's answer file at once, so an interrupted run keeps every answer it paid for.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence

from servecmp.concurrency import gather_or_cancel
from servecmp.endpoints import EndpointClient
from servecmp.mtbench.questions import MtQuestion
from servecmp.mtbench.records import AnswerChoice, AnswerMeta, AnswerRecord
from servecmp.records import EndpointRole
from servecmp.runstore import JsonlAppender


async def answer_question(
    client: EndpointClient, question: MtQuestion, *, role: EndpointRole, model_id: str, max_tokens: int
) -> AnswerRecord:
    messages: list[dict[str, str]] = []
    meta = AnswerMeta(endpoint=role, temperature=question.temperature, max_tokens=max_tokens)
    turns: list[str] = []
    for user_turn in question.turns:
        messages.append({"role": "user", "content": user_turn})
        resp, latency = await client.chat(messages, max_tokens=max_tokens, temperature=question.temperature)
        choice = resp.choices[0] if resp.choices else None
        text = (choice.message.content if choice is not None else None) or ""
        messages.append({"role": "assistant", "content": text})
        turns.append(text)
        meta.latency_s.append(round(latency, 4))
        meta.completion_tokens.append(int(getattr(resp.usage, "completion_tokens", 0) or 0))
        meta.finish_reasons.append(choice.finish_reason if choice is not None else None)
    return AnswerRecord(
        question_id=question.question_id,
        answer_id=uuid.uuid4().hex[:22],
        model_id=model_id,
        choices=[AnswerChoice(index=0, turns=turns)],
        tstamp=time.time(),
        servecmp=meta,
    )


async def generate_answers(
    client: EndpointClient,
    questions: Sequence[MtQuestion],
    out: JsonlAppender,
    *,
    role: EndpointRole,
    max_tokens: int,
    on_done: Callable[[AnswerRecord], None] | None = None,
) -> list[AnswerRecord]:
    """Answer `questions` concurrently (the client caps concurrency), appending each as it completes.

    The first EndpointError cancels the rest and propagates; what was appended stays.
    """

    async def one(q: MtQuestion) -> AnswerRecord:
        record = await answer_question(client, q, role=role, model_id=client.model, max_tokens=max_tokens)
        out.append(record)
        if on_done is not None:
            on_done(record)
        return record

    return await gather_or_cancel([asyncio.ensure_future(one(q)) for q in questions])
