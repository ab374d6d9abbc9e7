"""servecmp's renderings equal lm-eval 0.4.13's own: the installed lm-eval task YAMLs (with their
!function helpers) are pointed at the same local rows and lm-eval builds its loglikelihood
requests; each option's (context, continuation) and the gold must match ours exactly."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from servecmp.tasks import load_task
from tests.test_tasks_continuation import ARC_DOCS, HELLASWAG_DOCS, PIQA_DOCS, WINOGRANDE_DOCS

lm_eval_task = pytest.importorskip("lm_eval.api.task")
yaml_loader = pytest.importorskip("lm_eval.tasks._yaml_loader")
LM_EVAL_TASKS = Path(pytest.importorskip("lm_eval.tasks").__file__).parent


@pytest.fixture(autouse=True)
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def lm_eval_requests(
    yaml_path: Path, data_files: dict[str, Path], eval_split: str, **overrides: Any
) -> tuple[list[list[tuple[str, str]]], list[int]]:
    """Per document: lm-eval's (context, continuation) requests, and lm-eval's gold index."""
    config = yaml_loader.load_yaml(yaml_path)
    config.update(
        dataset_path="json",
        dataset_name=None,
        dataset_kwargs={"data_files": {split: str(path) for split, path in data_files.items()}},
        training_split=None,
        validation_split=None,
        test_split=None,
    )
    config[f"{eval_split}_split"] = eval_split
    config.update(overrides)
    task = lm_eval_task.ConfigurableTask(config=config)
    task.build_all_requests(rank=0, world_size=1, limit=None)
    by_doc: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for instance in sorted(task.instances, key=lambda inst: (inst.doc_id, inst.idx)):
        by_doc[instance.doc_id].append(tuple(instance.args))
    golds = [
        task.doc_to_text(doc) if task.multiple_input else task.doc_to_target(doc) for doc in task.eval_docs
    ]
    return [by_doc[i] for i in sorted(by_doc)], golds


def ours(name: str, data_dir: Path) -> tuple[list[list[tuple[str, str]]], list[int]]:
    items = load_task(name, data_dir=str(data_dir)).items
    pairs = [[(it.context_for(i), cont) for i, cont in enumerate(it.continuations)] for it in items]
    return pairs, [it.gold for it in items]


@pytest.mark.parametrize(
    ("name", "yaml_rel", "docs", "split", "config"),
    [
        ("arc_easy", "arc/arc_easy.yaml", ARC_DOCS, "test", "ARC-Easy"),
        ("arc_challenge", "arc/arc_challenge.yaml", ARC_DOCS, "test", "ARC-Challenge"),
        ("hellaswag", "hellaswag/hellaswag.yaml", HELLASWAG_DOCS, "validation", None),
        ("piqa", "piqa/piqa.yaml", PIQA_DOCS, "validation", None),
        ("winogrande", "winogrande/default.yaml", WINOGRANDE_DOCS, "validation", None),
    ],
)
def test_continuation_tasks_match_lm_eval(
    tmp_path: Path, name: str, yaml_rel: str, docs: list[dict[str, Any]], split: str, config: str | None
) -> None:
    data = write_jsonl(tmp_path / "copy" / (config or "") / f"{split}.jsonl", docs)
    assert ours(name, tmp_path / "copy") == lm_eval_requests(LM_EVAL_TASKS / yaml_rel, {split: data}, split)


def test_mmlu_matches_lm_evals_mmlu_5_shot(tmp_path: Path) -> None:
    from tests.test_tasks_mmlu import DEV, TEST

    def hf_rows(rows: list[list[str]]) -> list[dict[str, Any]]:
        return [
            {
                "question": q,
                "subject": "high_school_physics",
                "choices": [a, b, c, d],
                "answer": "ABCD".index(ans),
            }
            for q, a, b, c, d, ans in rows
        ]

    folder = tmp_path / "cais_mmlu" / "high_school_physics"
    dev, test = (
        write_jsonl(folder / "dev.jsonl", hf_rows(DEV)),
        write_jsonl(folder / "test.jsonl", hf_rows(TEST)),
    )
    theirs = lm_eval_requests(
        LM_EVAL_TASKS / "mmlu" / "default" / "mmlu_high_school_physics.yaml",
        {"test": test, "dev": dev},
        "test",
        fewshot_split="dev",
        num_fewshot=5,
    )
    items = load_task("mmlu", source="hf", data_dir=str(tmp_path / "cais_mmlu")).items
    mine = [[(it.prompt, cont) for cont in it.continuations] for it in items], [it.gold for it in items]
    assert mine == theirs
