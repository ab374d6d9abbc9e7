"""On-disk cache of judgments keyed by (judge model, full request), so no judgment is paid twice.

The key is a sha256 of the judge model name, the exact messages and the sampling parameters that
shape the answer (temperature, max tokens, a forced output format). Entries live in JSONL files:
one in the run directory (so a run is self-contained and --resume never repeats a call) and
optionally a shared one in the user's cache directory (so a re-run in a new directory is free too).
Only answers the judge actually gave are cached; failed calls are retried next time.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from servecmp.runstore import JsonlAppender, iter_jsonl

CACHE_FILE = "judge_cache.jsonl"


def cache_key(model: str, messages: Sequence[dict[str, str]], params: dict[str, Any]) -> str:
    payload = json.dumps(
        {"model": model, "messages": list(messages), "params": params},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class JudgeCache:
    """Reads every given file at start; writes each new entry to all of them."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self._entries: dict[str, str] = {}
        self._writers: list[JsonlAppender] = []
        paths = list(dict.fromkeys(p.resolve() for p in paths))  # the same file twice would double-write
        for path in paths:
            for entry in iter_jsonl(path):
                key, text = entry.get("key"), entry.get("judgment")
                if isinstance(key, str) and isinstance(text, str):
                    self._entries[key] = text
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._writers.append(JsonlAppender(path))

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> str | None:
        return self._entries.get(key)

    def put(self, key: str, judge_model: str, judgment: str) -> None:
        if key in self._entries:
            return
        self._entries[key] = judgment
        entry = {"key": key, "judge_model": judge_model, "judgment": judgment, "tstamp": time.time()}
        for writer in self._writers:
            writer.append(entry)

    def close(self) -> None:
        for writer in self._writers:
            writer.close()

    def __enter__(self) -> JudgeCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
