"""Import a pair of lm-eval `--log_samples` logs (baseline, candidate) as McqRecords.

lm-eval 0.4.13 writes `samples_<task>_<timestamp>.jsonl`, one line per document (see
lm_eval/evaluator.py and EvaluationTracker.save_results_samples):

    {"doc_id": 0, "doc": {...}, "target": "2",
     "arguments": {"gen_args_0": {"arg_0": <context>, "arg_1": " A"}, ...},   # one per option
     "resps": [[["-1.5", "False"]], ...], "filtered_resps": [["-1.5", "False"], ...],
     "filter": "none", "metrics": ["acc"], "doc_hash": ..., "prompt_hash": ..., "acc": 1.0}

Every value inside `resps`/`filtered_resps` is a string and `target` is `str(target)`: an
index ("2"), a choice's text, or for partial evaluation (Winogrande) the shared continuation.
Only multiple-choice (loglikelihood) logs can be imported.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from servecmp.errors import UserError
from servecmp.records import EndpointRole, McqRecord
from servecmp.runstore import read_jsonl_objects
from servecmp.tasks.continuation_tasks import TARGET_DELIMITER, choice_lengths
from servecmp.tasks.mmlu_subjects import category_of

#: lm-eval's file name; the timestamp is datetime.isoformat() with ":" replaced by "-".
_SAMPLES_NAME = re.compile(
    r"^samples_(?P<task>.+)_(?P<stamp>\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}(\.\d+)?)\.jsonl$"
)
_WINOGRANDE_ANSWER = {"1": 0, "2": 1}


@dataclass(frozen=True)
class LoggedDoc:
    """One document of a samples log, parsed and checked."""

    doc_id: int
    doc: dict[str, Any]
    target: str
    contexts: list[str]
    continuations: list[str]
    loglikelihoods: list[float]
    acc: float | None

    @property
    def partial(self) -> bool:
        """Options differ in their context, not their continuation (lm-eval's multiple_input)."""
        return len(set(self.contexts)) > 1 and len(set(self.continuations)) == 1


def task_name_from_path(path: Path) -> str | None:
    match = _SAMPLES_NAME.match(path.name)
    return match.group("task") if match else None


def _arguments(raw: Any, where: str) -> list[tuple[str, str]]:
    """(context, continuation) per option; the file holds {"gen_args_i": {"arg_0", "arg_1"}},
    the in-memory form (also accepted) a list of pairs."""
    if isinstance(raw, dict):
        pairs: list[Any] = []
        for i in range(len(raw)):
            entry = raw.get(f"gen_args_{i}")
            if not isinstance(entry, dict):
                raise UserError(f"{where}: `arguments` has no gen_args_{i}")
            pairs.append([entry.get("arg_0"), entry.get("arg_1")])
    elif isinstance(raw, list):
        pairs = raw
    else:
        raise UserError(f"{where}: `arguments` must be an object or a list")
    out: list[tuple[str, str]] = []
    for pair in pairs:
        if not (isinstance(pair, list | tuple) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise UserError(
                f"{where}: each argument must be a (context, continuation) pair of strings; "
                "only multiple-choice logs can be imported"
            )
        out.append((pair[0], pair[1]))
    return out


def _loglikelihood(resp: Any, where: str) -> float:
    value = resp[0] if isinstance(resp, list | tuple) and len(resp) == 2 else None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise UserError(
            f"{where}: `filtered_resps` entries must be [loglikelihood, is_greedy], got {resp!r}"
        ) from None
    if math.isnan(number):
        raise UserError(f"{where}: log-likelihood {value!r} is not a number")
    return number


def parse_doc(obj: dict[str, Any], where: str) -> LoggedDoc:
    for key in ("doc_id", "doc", "target", "arguments", "filtered_resps"):
        if key not in obj:
            raise UserError(f"{where}: missing `{key}`; is this an lm-eval samples_*.jsonl log?")
    doc_id, doc = obj["doc_id"], obj["doc"]
    if isinstance(doc_id, bool) or not isinstance(doc_id, int):
        raise UserError(f"{where}: `doc_id` must be an integer")
    if not isinstance(doc, dict):
        raise UserError(f"{where}: `doc` must be an object")
    args = _arguments(obj["arguments"], where)
    resps = obj["filtered_resps"]
    if not isinstance(resps, list) or len(resps) != len(args):
        raise UserError(f"{where}: `filtered_resps` must hold one response per argument ({len(args)})")
    if len(args) < 2:
        raise UserError(f"{where}: {len(args)} option(s); only multiple-choice logs can be imported")
    acc = obj.get("acc")
    return LoggedDoc(
        doc_id=doc_id,
        doc=doc,
        target=str(obj["target"]),
        contexts=[ctx for ctx, _ in args],
        continuations=[cont for _, cont in args],
        loglikelihoods=[_loglikelihood(r, where) for r in resps],
        acc=float(acc) if isinstance(acc, int | float) and not isinstance(acc, bool) else None,
    )


def gold_index(entry: LoggedDoc, where: str) -> int:
    """The gold option as lm-eval's process_results finds it."""
    n = len(entry.continuations)
    if entry.partial:
        # lm-eval takes the gold from doc_to_text for these tasks; Winogrande's is doc["answer"].
        answer = str(entry.doc.get("answer"))
        if n == 2 and answer in _WINOGRANDE_ANSWER:
            return _WINOGRANDE_ANSWER[answer]
        raise UserError(
            f"{where}: cannot tell the gold option of a partial-evaluation task other than Winogrande"
        )
    target = entry.target.strip()
    if target.isdigit():
        gold = int(target)
    else:
        # A textual target names a choice: lm-eval's choices are continuations minus the delimiter.
        choices = [c.removeprefix(TARGET_DELIMITER) for c in entry.continuations]
        if entry.target not in choices:
            raise UserError(f"{where}: target {entry.target!r} is neither an index nor one of the choices")
        gold = choices.index(entry.target)
    if not 0 <= gold < n:
        raise UserError(f"{where}: target {gold} is out of range for {n} options")
    return gold


def argmax(values: list[float]) -> int:
    """First index of the maximum, as numpy.argmax (and so lm-eval) breaks ties."""
    return max(range(len(values)), key=values.__getitem__)


def to_record(entry: LoggedDoc, role: EndpointRole, task: str, where: str) -> McqRecord:
    gold = gold_index(entry, where)
    chosen = argmax(entry.loglikelihoods)
    if entry.acc is not None and entry.acc != float(chosen == gold):
        raise UserError(
            f"{where}: logged acc={entry.acc:g} disagrees with option {chosen} chosen vs gold {gold}; "
            "is this a multiple-choice log with the default filter?"
        )
    subject = entry.doc.get("subject") if isinstance(entry.doc.get("subject"), str) else None
    return McqRecord(
        item_id=str(entry.doc_id),
        endpoint=role,
        task=task,
        subject=subject,
        category=category_of(subject),
        gold=gold,
        option_logprobs=entry.loglikelihoods,
        option_lengths=choice_lengths(entry.continuations, entry.contexts if entry.partial else None),
        chosen=chosen,
        n_requests=len(entry.continuations),
    )


def read_samples(path: Path) -> dict[int, tuple[LoggedDoc, str]]:
    """doc_id → (parsed doc, "file:line") for every line of a samples log."""
    docs: dict[int, tuple[LoggedDoc, str]] = {}
    for line_no, obj in read_jsonl_objects(path):
        where = f"{path}:{line_no}"
        entry = parse_doc(obj, where)
        if entry.doc_id in docs:
            raise UserError(
                f"{where}: doc_id {entry.doc_id} already on {docs[entry.doc_id][1]} (one filter per file is supported)"
            )
        docs[entry.doc_id] = (entry, where)
    if not docs:
        raise UserError(f"{path} holds no samples")
    return docs


def _check_same_docs(
    base: dict[int, tuple[LoggedDoc, str]],
    cand: dict[int, tuple[LoggedDoc, str]],
    base_path: Path,
    cand_path: Path,
) -> None:
    only_base, only_cand = sorted(base.keys() - cand.keys()), sorted(cand.keys() - base.keys())
    if only_base or only_cand:
        raise UserError(
            f"{base_path} and {cand_path} cover different documents "
            f"({len(only_base)} doc_ids only in the baseline, e.g. {only_base[:3]}; "
            f"{len(only_cand)} only in the candidate, e.g. {only_cand[:3]})"
        )
    for doc_id in sorted(base):
        b, c = base[doc_id][0], cand[doc_id][0]
        if b.doc != c.doc:
            raise UserError(f"doc_id {doc_id} is a different document in {base_path} and {cand_path}")
        if (b.contexts, b.continuations) != (c.contexts, c.continuations):
            raise UserError(
                f"doc_id {doc_id} was prompted differently in {base_path} and {cand_path} "
                "(different few-shot setting or task version?)"
            )


def item_texts(path: str | Path) -> dict[str, tuple[str, list[str]]]:
    """Per item id (the doc_id, as the records key it): the prompt and the option texts the log
    shows, for the report's item list. A partial-evaluation doc (Winogrande) has one context per
    option: its options are context + the shared continuation."""
    out: dict[str, tuple[str, list[str]]] = {}
    for doc_id, (entry, _) in read_samples(Path(path)).items():
        if entry.partial:
            out[str(doc_id)] = ("(the options complete different contexts)",
                                [c + t for c, t in zip(entry.contexts, entry.continuations, strict=True)])
        else:
            out[str(doc_id)] = (entry.contexts[0], list(entry.continuations))
    return out


def load_lmeval_pair(
    base_path: str | Path, cand_path: str | Path
) -> tuple[list[McqRecord], list[McqRecord], str]:
    """(baseline records, candidate records, task name), both in doc_id order."""
    base_path, cand_path = Path(base_path), Path(cand_path)
    base_task, cand_task = task_name_from_path(base_path), task_name_from_path(cand_path)
    if base_task and cand_task and base_task != cand_task:
        raise UserError(f"{base_path} is task {base_task} but {cand_path} is task {cand_task}")
    task = base_task or cand_task or base_path.stem.removeprefix("samples_")
    base, cand = read_samples(base_path), read_samples(cand_path)
    _check_same_docs(base, cand, base_path, cand_path)
    order = sorted(base)
    return (
        [to_record(base[i][0], "baseline", task, base[i][1]) for i in order],
        [to_record(cand[i][0], "candidate", task, cand[i][1]) for i in order],
        task,
    )
