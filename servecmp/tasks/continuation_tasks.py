"""ARC, HellaSwag, PIQA and Winogrande as lm-eval 0.4.13 renders and scores them (zero-shot).

Each option is a continuation scored by its summed logprob (acc), or that sum divided by the
option's length in characters (acc_norm, see `servecmp.tasks.choice_lengths`). The strings below
match lm-eval's task configs: arc/arc_easy.yaml, hellaswag/utils.py, piqa/piqa.yaml and
winogrande/preprocess_winogrande.py; every continuation starts with lm-eval's target delimiter,
a single space.

Splits are the ones lm-eval evaluates: the test split when the config has one (ARC), else the
validation split. `item_id` is the row index in that split, which is lm-eval's `doc_id`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from servecmp.errors import UserError
from servecmp.tasks import hf_source
from servecmp.tasks.items import McqItem

#: lm-eval's default `target_delimiter`, prepended to every continuation.
TARGET_DELIMITER = " "

Doc = dict[str, Any]


def arc_item(task: str, index: int, doc: Doc) -> McqItem:
    labels, texts = doc["choices"]["label"], doc["choices"]["text"]
    if doc["answerKey"] not in labels:
        raise ValueError(f"answerKey {doc['answerKey']!r} is not one of the labels {labels}")
    return McqItem(
        item_id=str(index),
        task=task,
        kind="continuation",
        prompt=f"Question: {doc['question']}\nAnswer:",
        continuations=[TARGET_DELIMITER + text for text in texts],
        gold=labels.index(doc["answerKey"]),
        question=doc["question"],
        options=list(texts),
    )


def hellaswag_clean(text: str) -> str:
    """lm-eval's hellaswag `preprocess`: WikiHow's bracketed artifacts out, double spaces halved."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def hellaswag_item(task: str, index: int, doc: Doc) -> McqItem:
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    return McqItem(
        item_id=str(index),
        task=task,
        kind="continuation",
        prompt=hellaswag_clean(doc["activity_label"] + ": " + ctx),
        continuations=[TARGET_DELIMITER + hellaswag_clean(ending) for ending in doc["endings"]],
        gold=int(doc["label"]),
        question=hellaswag_clean(doc["activity_label"] + ": " + ctx),
        options=[hellaswag_clean(ending) for ending in doc["endings"]],
    )


def piqa_item(task: str, index: int, doc: Doc) -> McqItem:
    return McqItem(
        item_id=str(index),
        task=task,
        kind="continuation",
        prompt=f"Question: {doc['goal']}\nAnswer:",
        continuations=[TARGET_DELIMITER + doc["sol1"], TARGET_DELIMITER + doc["sol2"]],
        gold=int(doc["label"]),
        question=doc["goal"],
        options=[doc["sol1"], doc["sol2"]],
    )


_WINOGRANDE_ANSWER = {"1": 0, "2": 1}


def winogrande_item(task: str, index: int, doc: Doc) -> McqItem:
    """Partial evaluation: the options differ in the context (the sentence up to the blank with
    the option filled in); all share the rest of the sentence as continuation."""
    sentence: str = doc["sentence"]
    if "_" not in sentence:
        raise ValueError("sentence has no '_' blank")
    blank = sentence.index("_")
    if str(doc["answer"]) not in _WINOGRANDE_ANSWER:
        raise ValueError(f"answer must be '1' or '2', got {doc['answer']!r}")
    continuation = TARGET_DELIMITER + sentence[blank + 1 :].strip()
    return McqItem(
        item_id=str(index),
        task=task,
        kind="continuation",
        prompt=sentence,
        contexts=[sentence[:blank] + doc["option1"], sentence[:blank] + doc["option2"]],
        continuations=[continuation, continuation],
        gold=_WINOGRANDE_ANSWER[str(doc["answer"])],
        question=sentence,
        options=[doc["option1"], doc["option2"]],
    )


@dataclass(frozen=True)
class HubTask:
    name: str
    dataset: str
    config: str | None
    split: str
    to_item: Callable[[str, int, Doc], McqItem]
    #: Fields every row needs (`datasets` fills a field missing from a row with None).
    fields: tuple[str, ...]
    #: The rendering, as text: hashed into run manifests (bump the version when it changes).
    prompt_format: str


def _arc_task(name: str, config: str) -> HubTask:
    """An ARC set (Easy or Challenge): same dataset, split, fields and rendering, another config."""
    return HubTask(
        name=name,
        dataset="allenai/ai2_arc",
        config=config,
        split="test",
        to_item=arc_item,
        fields=("question", "choices", "answerKey"),
        prompt_format="lm-eval-0.4.13-arc-v1|Question: {question}\\nAnswer:| {choice}",
    )


CONTINUATION_TASKS: dict[str, HubTask] = {
    task.name: task
    for task in (
        _arc_task("arc_easy", "ARC-Easy"),
        _arc_task("arc_challenge", "ARC-Challenge"),
        HubTask(
            name="hellaswag",
            dataset="Rowan/hellaswag",
            config=None,
            split="validation",
            to_item=hellaswag_item,
            fields=("activity_label", "ctx_a", "ctx_b", "endings", "label"),
            prompt_format="lm-eval-0.4.13-hellaswag-v1"
            "|preprocess({activity_label}: {ctx_a} {ctx_b.capitalize()})| preprocess({ending})",
        ),
        HubTask(
            name="piqa",
            dataset="baber/piqa",
            config=None,
            split="validation",
            to_item=piqa_item,
            fields=("goal", "sol1", "sol2", "label"),
            prompt_format="lm-eval-0.4.13-piqa-v1|Question: {goal}\\nAnswer:| {sol}",
        ),
        HubTask(
            name="winogrande",
            dataset="allenai/winogrande",
            config="winogrande_xl",
            split="validation",
            to_item=winogrande_item,
            fields=("sentence", "option1", "option2", "answer"),
            prompt_format="lm-eval-0.4.13-winogrande-v1"
            "|partial: {sentence up to _}{option}| {sentence after _}.strip()",
        ),
    )
}


def load_continuation_task(task: HubTask, *, local_dir: Path | None = None) -> list[McqItem]:
    rows = hf_source.load_split(task.dataset, task.config, task.split, local_dir=local_dir)
    where = hf_source.describe(task.dataset, task.config, task.split, local_dir)
    items = []
    for index, doc in enumerate(rows):
        missing = [f for f in task.fields if doc.get(f) is None]
        if missing:
            raise UserError(f"{where}, row {index}: missing field {', '.join(map(repr, missing))}")
        try:
            items.append(task.to_item(task.name, index, doc))
        except KeyError as exc:
            raise UserError(f"{where}, row {index}: missing field {exc}") from exc
        except (TypeError, ValueError, AttributeError) as exc:
            raise UserError(f"{where}, row {index}: {exc}") from exc
    return items


def choice_lengths(continuations: list[str], contexts: list[str] | None = None) -> list[int]:
    """Per-option lengths in characters, as lm-eval's acc_norm divides by them: the choice text
    without the target delimiter; for partial evaluation (Winogrande) the choices are the
    per-option contexts."""
    if contexts:
        return [len(ctx) for ctx in contexts]
    return [len(cont.removeprefix(TARGET_DELIMITER)) for cont in continuations]
