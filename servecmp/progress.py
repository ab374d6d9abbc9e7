"""The progress bar of a run that counts items (MCQ items, MT-Bench answers and judgments)."""

from __future__ import annotations

from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def counting_progress(*extra: ProgressColumn, description: str = "{task.description}", **options: Any) -> Progress:
    """Description, bar, done/total, the ``extra`` columns, elapsed time and ETA; ``options`` go to
    `rich.progress.Progress` (console, transient, disable, refresh_per_second)."""
    return Progress(
        TextColumn(description),
        BarColumn(),
        MofNCompleteColumn(),
        *extra,
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        **options,
    )
