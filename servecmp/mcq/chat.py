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
from collections.abc import Sequence

from servecmp.capabilities import PROBE_CONTINUATIONS, PROBE_PROMPT
from servecmp.errors import UserError
from servecmp.mcq.records import McqItem


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


def probe_item(items: Sequence[McqItem]) -> tuple[str, tuple[str, ...]]:
    """The prompt and option tokens the path check uses: the run's first letter item with one
    exemplar (its header, first exemplar and question), else `PROBE_PROMPT`.

    One exemplar because echo is expensive on some servers: llama-cpp-python sorts the whole
    vocabulary in Python for every echoed prompt token, so one echo of a 5-shot MMLU prompt (~600
    tokens) took ~50 s on one core. Not zero-shot: asked a bare question, SmolLM2 under llama.cpp
    ends the text as its first token, and llama-cpp-python then returns no top-k at all."""
    for it in items:
        if it.kind == "letter":
            turns = chat_messages(it)
            header, _ = split_header(it.prompt)
            if len(turns) >= 3:  # first user turn (header included), its answer, ..., the question
                return f"{turns[0]['content']} {turns[1]['content']}\n\n{turns[-1]['content']}", tuple(it.continuations)
            return header + turns[-1]["content"], tuple(it.continuations)
    return PROBE_PROMPT, PROBE_CONTINUATIONS
