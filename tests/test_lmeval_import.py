"""Importing lm-eval `--log_samples` logs. The fixtures in tests/fixtures/tasks/lmeval/ were
written by lm-eval 0.4.13's own evaluator and EvaluationTracker (make_lmeval_samples.py), so
the layout is the real one; the expected values below are read off those files by hand."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from servecmp.errors import UserError
from servecmp.tasks.lmeval_import import load_lmeval_pair

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "tasks" / "lmeval"
MMLU_NAME = "samples_mmlu_tiny_2025-01-01T00-00-00.000000.jsonl"
WINO_NAME = "samples_winogrande_2025-01-01T00-00-00.000000.jsonl"


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_lines(path: Path, rows: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def test_mmlu_style_pair() -> None:
    base, cand, task = load_lmeval_pair(FIXTURES / "baseline" / MMLU_NAME, FIXTURES / "candidate" / MMLU_NAME)
    assert task == "mmlu_tiny"
    assert [r.item_id for r in base] == [r.item_id for r in cand] == ["0", "1", "2", "3"]
    assert [r.gold for r in base] == [r.gold for r in cand] == [1, 2, 1, 2]
    assert [r.option_logprobs for r in base] == [
        [-3.02, -1.58, -3.99, -4.9],
        [-4.359999999999999, -2.98, -2.83, -2.96],
        [-2.83, -0.26, -4.16, -3.56],
        [-4.88, -1.28, -4.1, -4.07],
    ]
    assert [r.option_logprobs for r in cand] == [
        [-0.52, -1.58, -3.99, -4.9],
        [-1.8599999999999994, -2.98, -0.33000000000000007, -2.96],
        [-2.83, -0.26, -1.6600000000000001, -3.56],
        [-2.38, -0.05, -4.1, -4.07],
    ]
    assert [r.chosen for r in base] == [1, 2, 1, 1]
    assert [r.chosen for r in cand] == [0, 2, 1, 1]
    for r in (*base, *cand):
        assert (r.task, r.subject, r.category) == ("mmlu_tiny", "elementary_mathematics", "STEM")
        assert (r.option_lengths, r.n_requests, r.topk) == ([1, 1, 1, 1], 4, [])
    assert {r.endpoint for r in base} == {"baseline"} and {r.endpoint for r in cand} == {"candidate"}


def test_winogrande_pair_takes_gold_from_the_doc_and_lengths_from_the_contexts() -> None:
    base, cand, task = load_lmeval_pair(FIXTURES / "baseline" / WINO_NAME, FIXTURES / "candidate" / WINO_NAME)
    assert task == "winogrande"
    assert [r.gold for r in base] == [0, 1, 0]
    assert [r.chosen for r in base] == [1, 0, 1]
    assert [r.option_logprobs for r in cand][1] == [-0.05, -3.14]
    assert base[0].option_lengths == [
        len("The trophy didn't fit in the suitcase because the trophy"),
        len("The trophy didn't fit in the suitcase because the suitcase"),
    ]
    assert (base[0].subject, base[0].category) == (None, None)


def test_in_memory_argument_lists_and_textual_targets(tmp_path: Path) -> None:
    row = {
        "doc_id": 7,
        "doc": {"q": 1},
        "target": "B",
        "arguments": [["Q:", " A"], ["Q:", " B"]],
        "filtered_resps": [["-2.5", "False"], ["-0.5", "True"]],
        "acc": 1.0,
    }
    path = write_lines(tmp_path / "samples_custom_2025-02-03T04-05-06.123456.jsonl", [row])
    base, cand, task = load_lmeval_pair(path, path)
    assert task == "custom"
    assert (base[0].item_id, base[0].gold, base[0].chosen, base[0].option_lengths) == ("7", 1, 1, [1, 1])


# --- mismatches and malformed logs ------------------------------------------------------------------


def test_different_tasks() -> None:
    with pytest.raises(UserError, match=r"is task mmlu_tiny but .* is task winogrande$"):
        load_lmeval_pair(FIXTURES / "baseline" / MMLU_NAME, FIXTURES / "candidate" / WINO_NAME)


def test_different_doc_ids(tmp_path: Path) -> None:
    cand = write_lines(tmp_path / "c" / MMLU_NAME, read_lines(FIXTURES / "candidate" / MMLU_NAME)[:3])
    with pytest.raises(
        UserError,
        match=r"cover different documents \(1 doc_ids only in the baseline, e.g. \[3\]; "
        r"0 only in the candidate, e.g. \[\]\)$",
    ):
        load_lmeval_pair(FIXTURES / "baseline" / MMLU_NAME, cand)


def test_different_document_behind_a_doc_id(tmp_path: Path) -> None:
    rows = read_lines(FIXTURES / "candidate" / MMLU_NAME)
    rows[2]["doc"]["question"] = "What is 10 / 5?"
    cand = write_lines(tmp_path / "c" / MMLU_NAME, rows)
    with pytest.raises(UserError, match=r"^doc_id 2 is a different document in "):
        load_lmeval_pair(FIXTURES / "baseline" / MMLU_NAME, cand)


def test_different_prompt(tmp_path: Path) -> None:
    rows = read_lines(FIXTURES / "candidate" / MMLU_NAME)
    rows[1]["arguments"]["gen_args_3"]["arg_0"] += " "
    cand = write_lines(tmp_path / "c" / MMLU_NAME, rows)
    with pytest.raises(
        UserError, match=r"^doc_id 1 was prompted differently in .* \(different few-shot setting"
    ):
        load_lmeval_pair(FIXTURES / "baseline" / MMLU_NAME, cand)


def mutated(field: str, value: Any) -> dict[str, Any]:
    row = read_lines(FIXTURES / "baseline" / MMLU_NAME)[0]
    if value is None:
        del row[field]
    else:
        row[field] = value
    return row


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ('{"doc_id": 1,', r"not valid JSON \(Expecting property name enclosed in double quotes at column 14\)"),
        ("[1]", r"expected a JSON object, got list"),
        (
            mutated("filtered_resps", None),
            r"missing `filtered_resps`; is this an lm-eval samples_\*.jsonl log\?",
        ),
        (mutated("doc_id", "0"), r"`doc_id` must be an integer"),
        (
            mutated("filtered_resps", [["-1.0", "False"]] * 3),
            r"`filtered_resps` must hold one response per argument \(4\)",
        ),
        (
            mutated("filtered_resps", [["abc", "False"]] * 4),
            r"`filtered_resps` entries must be \[loglikelihood, is_greedy\], got \['abc', 'False'\]",
        ),
        (mutated("filtered_resps", [["nan", "False"]] * 4), r"log-likelihood 'nan' is not a number"),
        (
            mutated("arguments", {"gen_args_0": {"arg_0": "Q:", "arg_1": {"until": ["\n"]}}}),
            r"each argument must be a \(context, continuation\) pair of strings; only multiple-choice logs",
        ),
        (
            mutated("arguments", {"gen_args_1": {"arg_0": "Q:", "arg_1": " A"}}),
            r"`arguments` has no gen_args_0",
        ),
        (mutated("target", "E"), r"target 'E' is neither an index nor one of the choices"),
        (mutated("target", "4"), r"target 4 is out of range for 4 options"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, bad: Any, message: str) -> None:
    good = read_lines(FIXTURES / "baseline" / MMLU_NAME)[1]
    path = write_lines(tmp_path / MMLU_NAME, [good, bad])
    with pytest.raises(UserError, match=rf"^{re.escape(str(path))}:2: {message}"):
        load_lmeval_pair(path, path)


def test_acc_that_disagrees_with_the_logprobs(tmp_path: Path) -> None:
    row = read_lines(FIXTURES / "baseline" / MMLU_NAME)[3]  # chose B (1), gold C (2): acc 0
    row["acc"] = 1.0
    path = write_lines(tmp_path / MMLU_NAME, [row])
    with pytest.raises(UserError, match=r":1: logged acc=1 disagrees with option 1 chosen vs gold 2; "):
        load_lmeval_pair(path, path)


def test_duplicate_doc_id(tmp_path: Path) -> None:
    row = read_lines(FIXTURES / "baseline" / MMLU_NAME)[0]
    path = write_lines(tmp_path / MMLU_NAME, [row, "", row])
    with pytest.raises(
        UserError, match=r":3: doc_id 0 already on .*:1 \(one filter per file is supported\)$"
    ):
        load_lmeval_pair(path, path)


def test_partial_evaluation_other_than_winogrande(tmp_path: Path) -> None:
    row = read_lines(FIXTURES / "baseline" / WINO_NAME)[0]
    del row["doc"]["answer"]
    path = write_lines(tmp_path / WINO_NAME, [row])
    with pytest.raises(UserError, match=r":1: cannot tell the gold option of a partial-evaluation task"):
        load_lmeval_pair(path, path)


def test_empty_and_missing_files(tmp_path: Path) -> None:
    empty = write_lines(tmp_path / MMLU_NAME, [""])
    with pytest.raises(UserError, match=r"holds no samples$"):
        load_lmeval_pair(empty, empty)
    with pytest.raises(UserError, match=r"absent.jsonl not found$"):
        load_lmeval_pair(tmp_path / "absent.jsonl", empty)
