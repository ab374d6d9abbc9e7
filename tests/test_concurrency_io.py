"""The client keeps up: the MCQ records file is written in batches of whole lines, fsync runs off the
event loop, and nothing appended is lost on close."""

from __future__ import annotations

import json
from pathlib import Path

from servecmp.runstore import JsonlAppender, iter_jsonl


def test_batched_appender_writes_whole_lines_and_everything_on_close(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    app = JsonlAppender(path, sync_every=10**6, flush_seconds=3600, background_sync=True)
    for i in range(50):
        app.append({"i": i, "pad": "x" * 500})  # 25 KB: more than the file object's own buffer
    assert path.read_bytes() == b""  # no partial line reached the file: they wait for the flush
    app.flush()
    assert len(path.read_bytes().splitlines()) == 50
    app.append({"i": 50})
    app.close()
    assert [r["i"] for r in iter_jsonl(path)] == list(range(51))


def test_background_sync_flushes_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    app = JsonlAppender(path, sync_every=1, sync_seconds=0.0, flush_seconds=3600, background_sync=True)
    app.append({"i": 0})
    assert path.read_bytes().endswith(b"\n")
    app.close()


def test_unbatched_appender_is_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    with JsonlAppender(path) as app:
        app.append({"a": 1})
        assert json.loads(path.read_text()) == {"a": 1}
