"""Task loaders: datasets → rendered `McqItem`s, plus the import of lm-eval sample logs.

The entry point is `load_task(name, ...)`; see `servecmp.tasks.registry` for the task names.
"""

from servecmp.tasks.continuation_tasks import choice_lengths
from servecmp.tasks.registry import KNOWN_TASKS, TaskData, load_task

__all__ = ["KNOWN_TASKS", "TaskData", "choice_lengths", "load_task"]
