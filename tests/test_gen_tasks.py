"""Generation tasks: GSM8K in lm-eval's layout (exact prompt text, ids, gold, sources: a data
directory, a local copy of the hub dataset, the vendored sample) and `jsonl:PATH` tasks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from servecmp.errors import UserError
from servecmp.gen.run import grade
from servecmp.tasks.gen_registry import load_gen_task

TRAIN = [{"question": "A has 2 apples and buys 3. How many?", "answer": "2+3=<<2+3=5>>5\n#### 5"},
         {"question": "B has 10 pens, loses 4. How many?", "answer": "10-4=<<10-4=6>>6\n#### 6"}]
TEST = [{"question": "C earns $1,200 a week. How much in 2 weeks?", "answer": "1200*2=2400\n#### 2,400"},
        {"question": "D?", "answer": "x\n#### -3"}]


def _write(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", TRAIN), ("test", TEST)):
        (d / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def test_gsm8k_prompt_is_lmeval_layout(tmp_path: Path) -> None:
    task = load_gen_task("gsm8k", data_dir=_write(tmp_path / "g"), fewshot=2)
    first = task.items[0]
    assert first.item_id == "gsm8k/0" and task.items[1].item_id == "gsm8k/1"
    # lm-eval: "Question: {q}\nAnswer:" + " " + answer per exemplar, "\n\n" between, the question last.
    assert first.prompt == (
        "Question: A has 2 apples and buys 3. How many?\nAnswer: 2+3=<<2+3=5>>5\n#### 5\n\n"
        "Question: B has 10 pens, loses 4. How many?\nAnswer: 10-4=<<10-4=6>>6\n#### 6\n\n"
        "Question: C earns $1,200 a week. How much in 2 weeks?\nAnswer:")
    assert first.stop == ["Question:", "</s>", "<|im_end|>"]
    assert first.gold == "2,400" and task.items[1].gold == "-3"
    assert first.messages == [
        {"role": "user", "content": "Question: A has 2 apples and buys 3. How many?\nAnswer:"},
        {"role": "assistant", "content": "2+3=<<2+3=5>>5\n#### 5"},
        {"role": "user", "content": "Question: B has 10 pens, loses 4. How many?\nAnswer:"},
        {"role": "assistant", "content": "10-4=<<10-4=6>>6\n#### 6"},
        {"role": "user", "content": "Question: C earns $1,200 a week. How much in 2 weeks?\nAnswer:"}]
    zero = load_gen_task("gsm8k", data_dir=tmp_path / "g", fewshot=0)
    assert zero.items[1].prompt == "Question: D?\nAnswer:"


def test_gsm8k_grading_both_extractions(tmp_path: Path) -> None:
    item = load_gen_task("gsm8k", data_dir=_write(tmp_path / "g"), fewshot=0).items[0]
    # strict: the number after "#### "; flexible: the last number-like run; both normalised (",", "$").
    g = grade(item, " He earns 1200*2 = $2400.\n#### 2400")
    assert (g.answer, g.correct, g.answer_flexible, g.correct_flexible) == ("2400", True, "2400", True)
    g = grade(item, " So $2,400 in total. Then 3 more.")
    assert (g.answer, g.correct, g.answer_flexible, g.correct_flexible) == (None, False, "3", False)
    g = grade(item, " It is $2,400.")
    assert (g.answer, g.correct, g.answer_flexible, g.correct_flexible) == (None, False, "$2,400.", True)


def test_gsm8k_from_a_local_copy_of_the_hub_dataset(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    d = tmp_path / "openai-gsm8k" / "main"
    d.mkdir(parents=True)
    for name, rows in (("train", TRAIN), ("test", TEST)):
        pq.write_table(pa.Table.from_pylist(rows), d / f"{name}-00000-of-00001.parquet")
    from_hub_layout = load_gen_task("gsm8k", data_dir=tmp_path / "openai-gsm8k", fewshot=2)
    from_jsonl = load_gen_task("gsm8k", data_dir=_write(tmp_path / "g"), fewshot=2)
    assert from_hub_layout.items == from_jsonl.items


def test_vendored_sample_matches_the_full_set() -> None:
    sample = load_gen_task("gsm8k")
    full_dir = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gsm8k"
    assert len(sample.items) == 100 and sample.fewshot == 5
    assert sample.items[0].gold == "18"
    if full_dir.is_dir():
        full = load_gen_task("gsm8k", data_dir=full_dir)
        assert full.items[:100] == sample.items


def test_jsonl_task_rows(tmp_path: Path) -> None:
    p = tmp_path / "t.jsonl"
    p.write_text(json.dumps({"id": 7, "prompt": "6*7?", "reference": 42}) + "\n"
                 + json.dumps({"messages": [{"role": "user", "content": "Pick"}], "answer": "B", "grader": "choice",
                               "stop": ["\n"]}) + "\n")
    items = load_gen_task(f"jsonl:{p}").items
    assert [i.item_id for i in items] == ["7", "1"]
    assert items[0].grader == "number" and items[0].gold == "42" and items[0].messages == [
        {"role": "user", "content": "6*7?"}]
    assert items[1].prompt is None and items[1].grader == "choice" and items[1].stop == ["\n"]


@pytest.mark.parametrize(("line", "problem"), [
    ('{"prompt": "x"}', "t.jsonl:1: needs a reference"),
    ('{"prompt": "x", "messages": [], "reference": "1"}', "t.jsonl:1: needs exactly one of prompt or messages"),
    ('{"prompt": "x", "reference": "1", "grader": "fuzzy"}', "t.jsonl:1: unknown grader 'fuzzy'"),
    ('{"prompt": "x", "reference": "12", "grader": "choice"}', "t.jsonl:1: grader 'choice': reference '12'"),
    ('{"prompt": "x", "reference": "1", "color": "red"}', "t.jsonl:1: unknown key 'color'"),
    ('[1, 2]', "t.jsonl:1: expected a JSON object, got list"),
    # The first item's id is 7; the second's default is its place among the items, "1", then "7" again.
    ('{"id": 7, "prompt": "x", "reference": "1"}\n{"prompt": "y", "reference": "2"}\n{"id": "7", "prompt": "z", '
     '"reference": "3"}', "t.jsonl:3: duplicate id '7' (first on line 1)"),
])
def test_jsonl_task_bad_lines(tmp_path: Path, line: str, problem: str) -> None:
    p = tmp_path / "t.jsonl"
    p.write_text(line + "\n")
    with pytest.raises(UserError) as exc:
        load_gen_task(f"jsonl:{p}")
    assert problem in str(exc.value) and "\n" not in str(exc.value)


def test_unknown_task_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown gen task 'mmlu'"):
        load_gen_task("mmlu")
    with pytest.raises(UserError, match="not found"):
        load_gen_task(f"jsonl:{tmp_path / 'none.jsonl'}")


@pytest.mark.parametrize("rel", ["servecmp/tasks/gen_task.py", "servecmp/tasks/gsm8k.py",
                                 "servecmp/tasks/gen_jsonl.py"])
def test_gen_tasks_import_no_feature_package(rel: str) -> None:
    from tests.test_gen_layers import FEATURES, REPO, imported_modules

    bad = sorted(m for m in imported_modules(REPO / rel) if m.startswith("servecmp.") and m.split(".")[1] in FEATURES)
    assert bad == [], f"{rel} imports feature packages: {bad}"
