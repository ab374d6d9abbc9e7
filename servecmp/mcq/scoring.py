"""Turn one (item, endpoint) into one `McqRecord`: the requests, and parsing their logprobs.

Letter tasks (MMLU): one completion request with `max_tokens=1, logprobs=k` reads the top-k
next-token logprobs at the answer position; each option's logprob is that of its token (" A", ...).
An option whose token is not in the top-k is scored in one extra batched `echo` request, so the
common case costs one request per item instead of lm-eval's one request per option.

Continuation tasks (ARC, HellaSwag, ...): one request per item carrying every option as an element
of a prompt list (`echo=True`), so vLLM's prefix cache computes the shared context once; an option's
score is the sum of the logprobs of the tokens that start at or after the end of its context.

Responses are the decoded JSON `EndpointClient.completion` returns (dicts; no SDK objects, which
cost more CPU to build than everything else servecmp does per item), read by key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from servecmp.capabilities import chat_top
from servecmp.endpoints import EndpointClient
from servecmp.mcq.chat import chat_messages, option_logprobs_from_chat
from servecmp.mcq.records import McqItem, McqRecord
from servecmp.records import EndpointRole
from servecmp.tasks import choice_lengths


@dataclass
class EchoScore:
    logprob: float
    n_tokens: int


def continuation_logprob(logprobs: dict[str, Any], context_len: int, text_len: int) -> EchoScore:
    """Sum the echoed logprobs of tokens whose text starts in [context_len, text_len).

    `logprobs` is a choice's ``logprobs`` object (``text_offset``, ``token_logprobs``). `text_len`
    excludes the generated token vLLM appends after the prompt (max_tokens=1). The first prompt
    token has no logprob (None); it never belongs to a continuation.
    """
    total = 0.0
    n = 0
    for offset, lp in zip(logprobs["text_offset"], logprobs["token_logprobs"], strict=False):
        if offset < context_len or offset >= text_len:
            continue
        if lp is None:
            continue
        total += float(lp)
        n += 1
    if n == 0:
        # The continuation merged into the context's last token: no token starts inside it.
        return EchoScore(-math.inf, 0)
    return EchoScore(total, n)


def parse_usage(resp: dict[str, Any]) -> tuple[int, int]:
    """(prompt_tokens, completion_tokens) of a response; (0, 0) when it reports no usage."""
    usage = resp.get("usage")
    if not usage:
        return 0, 0
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


def _second(kv: tuple[str, float]) -> float:
    return kv[1]


def parse_topk(resp: dict[str, Any]) -> list[tuple[str, float]]:
    """The top-k (token, logprob) pairs at the first generated position, most likely first
    (ties keep the server's order)."""
    logprobs = resp["choices"][0].get("logprobs")
    tops = logprobs.get("top_logprobs") if logprobs else None
    top = tops[0] if tops else None
    if not top:
        return []
    return sorted(((str(t), float(lp)) for t, lp in top.items()), key=_second, reverse=True)


def argmax(values: list[float]) -> int:
    # Ties go to the lowest index, the same rule as numpy.argmax in the metrics.
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


async def _echo_scores(client: EndpointClient, item: McqItem,
                       options: list[int]) -> tuple[list[EchoScore], dict[str, Any], float]:
    """Score `options` in one request (a prompt list); returns (scores, response, latency)."""
    texts = [item.context_for(i) + item.continuations[i] for i in options]
    resp, latency = await client.completion(texts, max_tokens=1, logprobs=1, echo=True)
    by_index = {c["index"]: c for c in resp["choices"]}
    scores = []
    for j, i in enumerate(options):
        ctx = item.context_for(i)
        scores.append(continuation_logprob(by_index[j]["logprobs"], len(ctx), len(texts[j])))
    return scores, resp, latency


async def score_item(client: EndpointClient, item: McqItem, role: EndpointRole, top_k: int) -> McqRecord:
    if item.kind == "letter":
        if client.api == "chat":
            return await score_letter_chat(client, item, role, top_k)
        return await _score_letter(client, item, role, top_k)
    return await _score_continuation(client, item, role)


def _record(item: McqItem, role: EndpointRole, option_lp: list[float], *, topk: list[tuple[str, float]],
            latency: float, usage: tuple[int, int], n_requests: int) -> McqRecord:
    return McqRecord(
        item_id=item.item_id,
        endpoint=role,
        task=item.task,
        subject=item.subject,
        category=item.category,
        gold=item.gold,
        option_logprobs=option_lp,
        option_lengths=choice_lengths(item.continuations, item.contexts),
        chosen=argmax(option_lp),
        topk=topk,
        latency_s=latency,
        prompt_tokens=usage[0],
        completion_tokens=usage[1],
        n_requests=n_requests,
    )


async def _score_letter(client: EndpointClient, item: McqItem, role: EndpointRole, top_k: int) -> McqRecord:
    resp, latency = await client.completion(item.prompt, max_tokens=1, logprobs=top_k)
    topk = parse_topk(resp)
    top = dict(topk)
    option_lp: list[float] = [top.get(c, math.nan) for c in item.continuations]
    prompt_tokens, completion_tokens = parse_usage(resp)
    n_requests = 1
    missing = [i for i, lp in enumerate(option_lp) if math.isnan(lp)]
    if not topk and not client.echo_fallback:
        from servecmp.errors import EndpointError

        # llama-cpp-python returns no logprobs when the generated token ends the text; with no
        # second path that agrees, the item cannot be scored here (counted as an item error).
        raise EndpointError(f"{client.spec.base_url}: no top-k logprobs for item {item.item_id} (the model "
                            "ended the text?) and no echo path that agrees with the top-k", status=422)
    if missing and topk and not client.echo_fallback:
        # No second path (no echo, or an echo that disagrees with the top-k: servecmp.capabilities):
        # the smallest top-k logprob bounds a missing option from above; counted, never silent.
        for i in missing:
            option_lp[i] = topk[-1][1]
        return _record(item, role, option_lp, topk=topk, latency=latency,
                       usage=(prompt_tokens, completion_tokens), n_requests=n_requests).model_copy(
            update={"censored_options": len(missing)})
    if missing:
        scores, resp2, _ = await _echo_scores(client, item, missing)
        for i, s in zip(missing, scores, strict=True):
            option_lp[i] = s.logprob
        p2, c2 = parse_usage(resp2)
        prompt_tokens += p2
        completion_tokens += c2
        n_requests += 1
    record = _record(item, role, option_lp, topk=topk, latency=latency,
                     usage=(prompt_tokens, completion_tokens), n_requests=n_requests)
    return record.model_copy(update={"echo_options": len(missing)}) if missing else record


async def _score_continuation(client: EndpointClient, item: McqItem, role: EndpointRole) -> McqRecord:
    scores, resp, latency = await _echo_scores(client, item, list(range(len(item.continuations))))
    return _record(item, role, [sc.logprob for sc in scores], topk=[], latency=latency, usage=parse_usage(resp),
                   n_requests=1)


async def score_letter_chat(client: EndpointClient, item: McqItem, role: EndpointRole, top_k: int) -> McqRecord:
    resp, latency = await client.chat(chat_messages(item), max_tokens=1,
                                      extra_body={"logprobs": True, "top_logprobs": top_k})
    top = sorted(chat_top(resp), key=lambda kv: kv[1], reverse=True)
    if not top:
        from servecmp.errors import EndpointError

        # The probe saw chat logprobs; an answer without them is this request's failure.
        raise EndpointError(f"{client.spec.base_url}: a chat answer without top_logprobs for item {item.item_id}",
                            status=422)
    option_lp, censored = option_logprobs_from_chat(top, item.continuations)
    record = _record(item, role, option_lp, topk=top, latency=latency, usage=parse_usage(resp), n_requests=1)
    return record.model_copy(update={"api": "chat", "censored_options": censored})
