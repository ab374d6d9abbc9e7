"""`jsonl:PATH` generation tasks: a user's own verifiable tasks, one JSON object a line.

Each line::

    {"id": "q1", "prompt": "What is 6*7? Answer with a number.", "reference": "42", "grader": "number"}
    {"id": "q2", "messages": [{"role": "user", "content": "Capital of France?"}],
     "reference": "Paris", "grader": "regex:(Paris|Lyon)", "stop": ["\\n"]}

- ``prompt`` (a string, sent as is to /v1/completions and as one user turn to chat) or
  ``messages`` (chat turns; such an item can only be asked through chat: --api chat or auto);
- ``reference`` (also accepted: ``answer``): a string or a number;
- ``grader``: ``number`` (last number, compared numerically), ``exact`` (the whole answer),
  ``regex:PATTERN`` (first match, or its first group) or ``choice`` (a letter A-Z); default ``number``;
- optional ``id`` (default: the 0-based line number among the items) and ``stop`` (a list of strings).

Every line is checked before any request: a malformed line or a grader that does not parse is one
line naming PATH and the line number (UserError, exit 2).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from servecmp.errors import UserError
from servecmp.runstore import line_error, read_jsonl_rows
from servecmp.tasks.extract import parse_grader
from servecmp.tasks.gen_task import GenItem

DEFAULT_GRADER = "number"
_KEYS = {"id", "prompt", "messages", "reference", "answer", "grader", "stop"}


def _messages(value: Any, path: Path, line: int) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise line_error(path, line, "messages must be a non-empty list of {role, content} objects")
    out = []
    for m in value:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise line_error(path, line, "messages must be a non-empty list of {role, content} objects")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _item(obj: dict[str, Any], index: int, path: Path, line: int) -> GenItem:
    unknown = sorted(set(obj) - _KEYS)
    if unknown:
        raise line_error(path, line, f"unknown key {unknown[0]!r} (keys: {', '.join(sorted(_KEYS))})")
    prompt = obj.get("prompt")
    if ("prompt" in obj) == ("messages" in obj):
        raise line_error(path, line, "needs exactly one of prompt or messages")
    if "prompt" in obj and (not isinstance(prompt, str) or not prompt):
        raise line_error(path, line, "prompt must be a non-empty string")
    messages = _messages(obj["messages"], path, line) if "messages" in obj else [
        {"role": "user", "content": str(prompt)}]
    ref = obj.get("reference", obj.get("answer"))
    if isinstance(ref, bool) or not isinstance(ref, str | int | float):
        raise line_error(path, line, "needs a reference (a string or a number)")
    spec = obj.get("grader", DEFAULT_GRADER)
    try:
        grader = parse_grader(spec)
        grader.check_reference(str(ref))
    except UserError as exc:
        raise line_error(path, line, str(exc)) from None
    stop = obj.get("stop", [])
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise line_error(path, line, "stop must be a list of non-empty strings")
    item_id = obj.get("id", str(index))
    if not isinstance(item_id, str | int) or isinstance(item_id, bool) or str(item_id) == "":
        raise line_error(path, line, "id must be a non-empty string or a number")
    return GenItem(item_id=str(item_id), question=prompt if isinstance(prompt, str) else messages[-1]["content"],
                   gold=str(ref), prompt=prompt if isinstance(prompt, str) else None, messages=messages,
                   stop=stop, grader=grader.spec)


def load_gen_jsonl(path: Path) -> list[GenItem]:
    index = itertools.count()  # an item's default id: its 0-based place among the items
    items = read_jsonl_rows(path, lambda n, obj: _item(obj, next(index), path, n), lambda item: item.item_id, "id")
    if not items:
        raise UserError(f"task file {path} has no items")
    return items
