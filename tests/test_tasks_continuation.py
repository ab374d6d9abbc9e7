"""ARC, HellaSwag, PIQA and Winogrande loaders on local copies laid out like the hub repositories
(the same code path as the hub), compared with contexts and continuations written out by hand."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from servecmp.errors import UserError
from servecmp.tasks import choice_lengths, hf_source, load_task
from servecmp.tasks.continuation_tasks import CONTINUATION_TASKS, load_continuation_task

ARC_DOCS = [
    {
        "id": "Mercury_1",
        "question": "Which of these is a gas at room temperature?",
        "choices": {"text": ["iron", "oxygen", "salt"], "label": ["A", "B", "C"]},
        "answerKey": "B",
    },
    {
        "id": "NYSEDREGENTS_2",
        "question": "What do plants need for photosynthesis?",
        "choices": {"text": ["sunlight", "sand", "noise", "plastic"], "label": ["1", "2", "3", "4"]},
        "answerKey": "1",
    },
]
HELLASWAG_DOCS = [
    {
        "ind": 24,
        "activity_label": "Roof shingle removal",
        "ctx_a": "A man is sitting on a roof.",
        "ctx_b": "he",
        "endings": [
            "is using wrap to wrap a pair of skis.",
            "is ripping level tiles off.",
            "is holding a rubik's cube.",
            "starts pulling up roofing on a roof.",
        ],
        "source_id": "activitynet~v_-JhWjGDPHMY",
        "split": "val",
        "split_type": "indomain",
        "label": "3",
    },
    {
        "ind": 25,
        "activity_label": "Health",
        "ctx_a": "[header] How to stay calm [title] Breathe deeply.",
        "ctx_b": "take A SLOW breath",
        "endings": [
            "[step] Hold it for  four seconds.",
            "Run  away [title] now.",
            "Count to ten.",
            "Smile [substeps] widely.",
        ],
        "source_id": "wikihow~1",
        "split": "val",
        "split_type": "zeroshot",
        "label": "0",
    },
]
PIQA_DOCS = [
    {
        "goal": "How do I keep bread fresh?",
        "sol1": "Store it in a sealed bag.",
        "sol2": "Store it in the sink.",
        "label": 0,
    },
    {
        "goal": "To open a jar easily,",
        "sol1": "freeze the lid.",
        "sol2": "run the lid under hot water.",
        "label": 1,
    },
]
WINOGRANDE_DOCS = [
    {
        "sentence": "Sarah was a much better surgeon than Maria so _ always got the harder cases.",
        "option1": "Sarah",
        "option2": "Maria",
        "answer": "1",
    },
    {
        "sentence": "The trophy doesn't fit into the brown suitcase because the _ is too large.",
        "option1": "trophy",
        "option2": "suitcase",
        "answer": "1",
    },
    {
        "sentence": "I poured water from the bottle into the cup until the _ was full.",
        "option1": "bottle",
        "option2": "cup",
        "answer": "2",
    },
]


@pytest.fixture(autouse=True)
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep `datasets`' cache of the local test files out of the user's home."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> None:
    import datasets

    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(rows).to_parquet(str(path))


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def rendered(items: list[Any]) -> list[tuple[list[str], list[str], int]]:
    """(per-option contexts, continuations, gold) of each item: exactly what gets scored."""
    return [
        ([it.context_for(i) for i in range(len(it.continuations))], it.continuations, it.gold) for it in items
    ]


def test_arc_easy_and_challenge_read_their_configs_test_split(tmp_path: Path) -> None:
    write_parquet(tmp_path / "ai2_arc" / "ARC-Easy" / "test-00000-of-00001.parquet", ARC_DOCS)
    write_parquet(tmp_path / "ai2_arc" / "ARC-Challenge" / "test-00000-of-00001.parquet", ARC_DOCS[1:])
    write_parquet(tmp_path / "ai2_arc" / "ARC-Easy" / "validation-00000-of-00001.parquet", ARC_DOCS[:1])
    easy = load_task("arc_easy", data_dir=str(tmp_path / "ai2_arc"))
    q1 = "Question: Which of these is a gas at room temperature?\nAnswer:"
    q2 = "Question: What do plants need for photosynthesis?\nAnswer:"
    assert rendered(easy.items) == [
        ([q1] * 3, [" iron", " oxygen", " salt"], 1),
        ([q2] * 4, [" sunlight", " sand", " noise", " plastic"], 0),
    ]
    assert [it.item_id for it in easy.items] == ["0", "1"]
    assert {(it.kind, it.task, it.subject) for it in easy.items} == {("continuation", "arc_easy", None)}
    assert easy.source == f"allenai/ai2_arc ARC-Easy test split from local copy {tmp_path / 'ai2_arc'}"
    challenge = load_task("arc_challenge", data_dir=str(tmp_path / "ai2_arc"))
    assert rendered(challenge.items) == [([q2] * 4, [" sunlight", " sand", " noise", " plastic"], 0)]


def test_hellaswag_applies_lm_evals_preprocessing(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "hellaswag" / "data" / "validation.jsonl", HELLASWAG_DOCS)
    items = load_task("hellaswag", data_dir=str(tmp_path / "hellaswag")).items
    assert rendered(items) == [
        (
            ["Roof shingle removal: A man is sitting on a roof. He"] * 4,
            [
                " is using wrap to wrap a pair of skis.",
                " is ripping level tiles off.",
                " is holding a rubik's cube.",
                " starts pulling up roofing on a roof.",
            ],
            3,
        ),
        (
            # capitalize() lowers the rest; " [title]" → ". "; brackets dropped; double spaces halved.
            ["Health: How to stay calm. Breathe deeply. Take a slow breath"] * 4,
            # The "[step]" removal happens after strip(), so lm-eval keeps that ending's leading space.
            ["  Hold it for four seconds.", " Run away. now.", " Count to ten.", " Smile widely."],
            0,
        ),
    ]


def test_piqa(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "piqa" / "validation.jsonl", PIQA_DOCS)
    items = load_task("piqa", data_dir=str(tmp_path / "piqa")).items
    assert rendered(items) == [
        (
            ["Question: How do I keep bread fresh?\nAnswer:"] * 2,
            [" Store it in a sealed bag.", " Store it in the sink."],
            0,
        ),
        (
            ["Question: To open a jar easily,\nAnswer:"] * 2,
            [" freeze the lid.", " run the lid under hot water."],
            1,
        ),
    ]


def test_winogrande_scores_a_shared_continuation_after_each_filled_in_context(tmp_path: Path) -> None:
    write_parquet(
        tmp_path / "winogrande" / "winogrande_xl" / "validation-00000-of-00001.parquet", WINOGRANDE_DOCS
    )
    items = load_task("winogrande", data_dir=str(tmp_path / "winogrande")).items
    assert rendered(items) == [
        (
            [
                "Sarah was a much better surgeon than Maria so Sarah",
                "Sarah was a much better surgeon than Maria so Maria",
            ],
            [" always got the harder cases."] * 2,
            0,
        ),
        (
            [
                "The trophy doesn't fit into the brown suitcase because the trophy",
                "The trophy doesn't fit into the brown suitcase because the suitcase",
            ],
            [" is too large."] * 2,
            0,
        ),
        (
            [
                "I poured water from the bottle into the cup until the bottle",
                "I poured water from the bottle into the cup until the cup",
            ],
            [" was full."] * 2,
            1,
        ),
    ]


def test_choice_lengths_are_lm_evals_acc_norm_lengths() -> None:
    assert choice_lengths([" iron", " oxygen", "  Hold it"]) == [4, 6, 8]
    assert choice_lengths([" was full."] * 2, ["until the bottle", "until the cup"]) == [16, 13]


def test_hub_path_asks_datasets_for_lm_evals_names_and_splits(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str | None, str]] = []
    docs = {
        "ai2_arc": ARC_DOCS,
        "hellaswag": HELLASWAG_DOCS,
        "piqa": PIQA_DOCS,
        "winogrande": WINOGRANDE_DOCS,
    }

    def load_dataset(path: str, name: str | None, *, split: str) -> SimpleNamespace:
        calls.append((path, name, split))
        return SimpleNamespace(to_list=lambda: docs[path.split("/")[1]])

    monkeypatch.setattr(hf_source, "_datasets", lambda: SimpleNamespace(load_dataset=load_dataset))
    sizes = {name: len(load_task(name).items) for name in CONTINUATION_TASKS}
    assert calls == [
        ("allenai/ai2_arc", "ARC-Easy", "test"),
        ("allenai/ai2_arc", "ARC-Challenge", "test"),
        ("Rowan/hellaswag", None, "validation"),
        ("baber/piqa", None, "validation"),
        ("allenai/winogrande", "winogrande_xl", "validation"),
    ]
    assert sizes == {"arc_easy": 2, "arc_challenge": 2, "hellaswag": 2, "piqa": 2, "winogrande": 3}


def test_hub_failure_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def load_dataset(path: str, name: str | None, *, split: str) -> None:
        raise ConnectionError("Couldn't reach 'allenai/ai2_arc' on the Hub")

    monkeypatch.setattr(hf_source, "_datasets", lambda: SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(
        UserError,
        match=r"^cannot load allenai/ai2_arc \(ARC-Easy\) test split from the Hugging Face "
        r"hub \(ConnectionError: Couldn't reach 'allenai/ai2_arc' on the Hub\); offline, pass "
        r"--data-dir with a local copy$",
    ):
        load_task("arc_easy")


# --- bad inputs -----------------------------------------------------------------------------------


def test_missing_local_copy(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"^dataset directory .*/absent not found$"):
        load_task("piqa", data_dir=str(tmp_path / "absent"))


def test_local_copy_without_the_split(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "piqa" / "train.jsonl", PIQA_DOCS)
    with pytest.raises(
        UserError,
        match=r"^no validation split in .*/piqa \(expected validation.jsonl, "
        r"validation.json or validation-\*.parquet there or in data/\)$",
    ):
        load_task("piqa", data_dir=str(tmp_path / "piqa"))


def test_mixed_file_formats(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "piqa" / "validation.jsonl", PIQA_DOCS)
    write_parquet(tmp_path / "piqa" / "validation-00000-of-00001.parquet", PIQA_DOCS)
    with pytest.raises(UserError, match=r"mixed file formats"):
        load_task("piqa", data_dir=str(tmp_path / "piqa"))


@pytest.mark.parametrize(
    ("task", "doc", "message"),
    [
        ("piqa", {"goal": "g", "sol1": "a", "label": 0}, r"missing field 'sol2'"),
        (
            "arc_easy",
            {**ARC_DOCS[0], "answerKey": "E"},
            r"answerKey 'E' is not one of the labels \['A', 'B', 'C'\]",
        ),
        ("winogrande", {**WINOGRANDE_DOCS[0], "sentence": "No blank here."}, r"sentence has no '_' blank"),
        ("winogrande", {**WINOGRANDE_DOCS[0], "answer": "3"}, r"answer must be '1' or '2', got '3'"),
        ("hellaswag", {**HELLASWAG_DOCS[0], "label": "x"}, r"invalid literal for int\(\) with base 10: 'x'"),
    ],
)
def test_malformed_row_names_the_row(tmp_path: Path, task: str, doc: dict[str, Any], message: str) -> None:
    spec = CONTINUATION_TASKS[task]
    docs: dict[str, list[dict[str, Any]]] = {
        "piqa": PIQA_DOCS,
        "arc_easy": ARC_DOCS,
        "winogrande": WINOGRANDE_DOCS,
        "hellaswag": HELLASWAG_DOCS,
    }
    good = docs[task]
    folder = tmp_path / task / (spec.config or "")
    write_jsonl(folder / f"{spec.split}.jsonl", [good[0], doc])
    with pytest.raises(
        UserError, match=rf"^{spec.dataset} .*{spec.split} split from local copy .*, row 1: {message}$"
    ):
        load_continuation_task(spec, local_dir=tmp_path / task)
