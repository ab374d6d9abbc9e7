"""GSM8K in lm-eval's `gsm8k` layout (lm_eval/tasks/gsm8k/gsm8k.yaml, version 3.0).

Prompt (completions): `num_fewshot` exemplars ``Question: <q>\\nAnswer: <worked solution>`` joined by
a blank line (lm-eval's fewshot_delimiter "\\n\\n", target_delimiter " "), a blank line, then
``Question: <q>\\nAnswer:``. Generation stops at "Question:", "</s>" or "<|im_end|>" (its `until`),
greedy. Chat layout (chat-only endpoints): each exemplar is a user turn ``Question: <q>\\nAnswer:``
and an assistant turn with its worked solution; the item's question is the last user turn.

Exemplars: the first `fewshot` rows of the train split. lm-eval draws them at random per document
(its default sampler, seeded 1234), so its prompts differ from item to item; one fixed set keeps
every prompt's long prefix identical (the server's prefix cache serves it) and the run reproducible
from the items file alone. Compare servecmp's accuracy with lm-eval's on these grounds.

Item ids: ``gsm8k/<row>``, the 0-based row of the test split (the vendored sample keeps the full
split's first rows, so ids agree). Gold: the number after the last "#### " of the answer.

Data: `data_dir` with train.jsonl and test.jsonl (../shared/data/gsm8k, or a local copy of the hub
repository: main/train-*.parquet), else the vendored sample (prompts/gsm8k_sample); source "hf"
without a data_dir loads openai/gsm8k (config main) from the hub.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Any

from servecmp.errors import UserError
from servecmp.runstore import line_error, read_jsonl_objects
from servecmp.tasks.gen_task import GSM8K_GRADER, GenItem, GenTask

HUB_DATASET = "openai/gsm8k"
HUB_CONFIG = "main"
SAMPLE_PACKAGE = "servecmp.prompts"
SAMPLE_DIR = "gsm8k_sample"
STOP = ["Question:", "</s>", "<|im_end|>"]
SOURCES = ("sample", "dir", "hf")


def gold_of(answer: str) -> str:
    """The final answer of a GSM8K solution: what follows its last "#### "."""
    return answer.rsplit("#### ", 1)[-1].strip()


def solution_of(answer: str) -> str:
    return answer.rsplit("#### ", 1)[0].rstrip() if "#### " in answer else answer


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for n, obj in read_jsonl_objects(path):
        if not isinstance(obj.get("question"), str) or not isinstance(obj.get("answer"), str):
            raise line_error(path, n, "not a GSM8K row (needs string fields question and answer)")
        rows.append(obj)
    return rows


def _rows_from_dir(data_dir: Path, split: str) -> list[dict[str, Any]]:
    plain = data_dir / f"{split}.jsonl"
    if plain.is_file():
        return _read_jsonl(plain)
    # A local copy of the hub repository (main/<split>-*.parquet): the hub loader reads it.
    from servecmp.tasks.hf_source import load_split

    return load_split(HUB_DATASET, HUB_CONFIG, split, local_dir=data_dir)


def _sample_rows(split: str) -> list[dict[str, Any]]:
    root = importlib.resources.files(SAMPLE_PACKAGE).joinpath(SAMPLE_DIR)
    with importlib.resources.as_file(root.joinpath(f"{split}.jsonl")) as path:
        return _read_jsonl(Path(path))


def render_prompt(exemplars: list[dict[str, Any]], question: str) -> str:
    shots = [f"Question: {e['question']}\nAnswer: {e['answer']}" for e in exemplars]
    return "\n\n".join([*shots, f"Question: {question}\nAnswer:"])


def render_messages(exemplars: list[dict[str, Any]], question: str) -> list[dict[str, str]]:
    messages: list[dict[str, str]] = []
    for e in exemplars:
        messages.append({"role": "user", "content": f"Question: {e['question']}\nAnswer:"})
        messages.append({"role": "assistant", "content": e["answer"]})
    messages.append({"role": "user", "content": f"Question: {question}\nAnswer:"})
    return messages


def items_from_rows(train: list[dict[str, Any]], test: list[dict[str, Any]], fewshot: int) -> list[GenItem]:
    if fewshot > len(train):
        raise UserError(f"--fewshot {fewshot}: the train split has only {len(train)} rows here")
    exemplars = train[:fewshot]
    return [
        GenItem(item_id=f"gsm8k/{i}", question=row["question"], gold=gold_of(row["answer"]),
                solution=row["answer"], prompt=render_prompt(exemplars, row["question"]),
                messages=render_messages(exemplars, row["question"]), stop=list(STOP), grader=GSM8K_GRADER)
        for i, row in enumerate(test)
    ]


def load_gsm8k(*, data_dir: Path | None = None, source: str | None = None, fewshot: int = 5) -> GenTask:
    if source is not None and source not in SOURCES:
        raise UserError(f"--source {source!r}: gsm8k reads {', '.join(SOURCES)}")
    if data_dir is not None:
        if not data_dir.is_dir():
            raise UserError(f"--data-dir {data_dir} is not a directory")
        train, test = _rows_from_dir(data_dir, "train"), _rows_from_dir(data_dir, "test")
        where = str(data_dir)
    elif source == "hf":
        from servecmp.tasks.hf_source import load_split

        train = load_split(HUB_DATASET, HUB_CONFIG, "train")
        test = load_split(HUB_DATASET, HUB_CONFIG, "test")
        where = f"{HUB_DATASET} (hub)"
    elif source == "dir":
        raise UserError("--source dir needs --data-dir")
    else:
        train, test = _sample_rows("train"), _sample_rows("test")
        where = f"vendored sample ({len(test)} test rows)"
    items = items_from_rows(train, test, fewshot)
    return GenTask(name="gsm8k", items=items, source=where, fewshot=fewshot, n_available=len(items))
