"""Letter MCQ through /v1/chat/completions, for endpoints that serve no /v1/completions.

Layout: the exemplars as prior turns. The rendered 5-shot prompt is split back into its parts
(`chat_messages`): the subject header and the first exemplar's question open the first user turn,
each exemplar's answer letter is an assistant turn ("A", no leading space: what an assistant turn
holds), each further exemplar a user turn, and the test question the last user turn. This is
lm-evaluation-harness's ``--apply_chat_template --fewshot_as_multiturn`` layout.

Why not the whole prompt in one user message? A chat template changes what the model sees either
way (role markers, an end-of-turn token, often a default system prompt), so the chat path never
reproduces the completions prompt; the question is which layout makes the first generated token an
answer letter. With the exemplars as turns, the model has already "answered" five questions with a
bare letter in this conversation, so its first token is a letter: on the embedded SmolLM2-135M
(vLLM, 6 MMLU items) the four letters held 0.93-0.98 of the first token's mass, against 0.55-0.85
with one user message, where "The", "You", "Given" took the rest. Letters outside the top-k
cannot be scored through chat (no echo), so the layout that concentrates mass on letters is the one
that measures the options rather than their absence.

Scoring: one request, ``max_tokens=1, logprobs=true, top_logprobs=k``, read at the first generated
token. A chat model may emit a letter with or without a leading space ("A" or " A": different
tokens, the same answer), so an option's logprob is the log of the summed probability of both
spellings among the top-k. An option with neither spelling in the top-k gets the smallest top-k
logprob, an upper bound of its true logprob, and is counted in `McqRecord.censored_options`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from servecmp.errors import UserError
from servecmp.mcq.records import McqItem


def chat_top(resp: Mapping[str, Any]) -> list[tuple[str, float]]:
    """The top logprobs of the first generated token of a chat response, as (token, logprob)."""
    choices = resp.get("choices") or []
    logprobs = choices[0].get("logprobs") if choices and isinstance(choices[0], dict) else None
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not content or not isinstance(content[0], dict):
        return []
    return [(str(e["token"]), float(e["logprob"])) for e in content[0].get("top_logprobs") or []
            if isinstance(e, dict) and "token" in e and e.get("logprob") is not None]


def logsumexp(values: Sequence[float]) -> float:
    m = max(values)
    if m == -math.inf:
        return m
    return m + math.log(sum(math.exp(v - m) for v in values))


#: Describes the chat rendering; recorded beside the prompt-format hash so runs can tell layouts apart.
CHAT_FORMAT = "chat-multiturn-v1|exemplars=user question / assistant letter turns|header in first user turn"

#: One exemplar block of the letter format: its question (ending in "Answer:"), its answer letter.
_EXEMPLAR = re.compile(r"(.*?\nAnswer:) ([A-Z])\n\n", re.S)


def split_header(prompt: str) -> tuple[str, str]:
    """(the subject header with its blank line, or "", the rest) of a letter-format prompt."""
    if prompt.startswith("The following are multiple choice questions"):
        header, sep, rest = prompt.partition("\n\n")
        return header + sep, rest
    return "", prompt


def chat_messages(item: McqItem) -> list[dict[str, str]]:
    """The letter item's prompt as chat turns (see the module docstring for the layout).

    The prompt is the letter format (`servecmp.tasks.letter_format`): an optional header ending in a
    blank line, exemplar blocks ``<question>\\nAnswer: <L>\\n\\n``, then the question ending "Answer:".
    """
    if item.kind != "letter":
        raise UserError(f"item {item.item_id}: only letter items (MMLU-style) can be asked through chat")
    header, text = split_header(item.prompt)
    messages: list[dict[str, str]] = []
    pos = 0
    for m in _EXEMPLAR.finditer(text):
        if m.start() != pos:
            break  # exemplars are contiguous; anything else belongs to the test question
        messages.append({"role": "user", "content": m.group(1)})
        messages.append({"role": "assistant", "content": m.group(2)})
        pos = m.end()
    messages.append({"role": "user", "content": text[pos:]})
    messages[0]["content"] = header + messages[0]["content"]
    return messages


def option_logprobs_from_chat(top: list[tuple[str, float]], continuations: list[str]) -> tuple[list[float], int]:
    """Each option's logprob from a chat top-k: logsumexp over its letter with and without a leading
    space; (logprobs, options censored at the smallest top-k logprob)."""
    if not top:
        raise ValueError("empty top-k")
    lookup: dict[str, list[float]] = {}
    for tok, lp in top:
        lookup.setdefault(tok, []).append(lp)
    floor = min(lp for _, lp in top)
    out: list[float] = []
    censored = 0
    for cont in continuations:
        letter = cont.strip()
        found = [lp for spelling in (letter, " " + letter) for lp in lookup.get(spelling, [])]
        if found:
            out.append(logsumexp(found))
        else:
            out.append(floor)
            censored += 1
    return out, censored


def mass_on_letters(top: list[tuple[str, float]], continuations: list[str]) -> float:
    """The probability the top-k puts on the options' letters (either spelling); for diagnostics."""
    letters = {c.strip() for c in continuations}
    return sum(math.exp(lp) for tok, lp in top if tok.strip() in letters and tok.lstrip() == tok.strip())
