"""MMLU loaders: exact 5-shot prompts from the CSV layout and from cais/mmlu-shaped local files,
the subject → category table, the vendored sample, and every bad input as a UserError."""

from __future__ import annotations

import csv
import importlib.util
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from servecmp.errors import UserError
from servecmp.tasks import hf_source, mmlu
from servecmp.tasks.mmlu_subjects import CATEGORIES, SUBJECT_TO_CATEGORY, SUBJECTS

ROOT = Path(__file__).resolve().parents[1]
SHARED_MMLU = ROOT.parent / "shared" / "data" / "mmlu"

DEV = [
    ["What is the SI unit of force?", "Joule", "Newton", "Watt", "Pascal", "B"],
    ["Which quantity is a vector?", "Mass", "Speed", "Velocity", "Energy", "C"],
    [
        "  What is the speed of light in vacuum, approximately?  ",
        "3e8 m/s",
        "3e6 m/s",
        "3e5 m/s",
        "3e10 m/s",
        "A",
    ],
    ["A ball is dropped. Its acceleration is", "0", "g", "2g", "g/2", "B"],
    ["Ohm's law relates", "V, I, R", "P, V, T", "F, m, a", "E, m, c", "A"],
    ["A sixth dev row is never an exemplar", "w", "x", "y", "z", "D"],
]
TEST = [
    ["Which is\na scalar?", "Force", "Displacement", "Work", "Momentum", "C"],
    ["What does a voltmeter measure?", "Current", "Resistance", "Charge", "Potential difference", "D"],
]

EXPECTED_SHOTS = (
    "The following are multiple choice questions (with answers) about high school physics.\n\n"
    "What is the SI unit of force?\nA. Joule\nB. Newton\nC. Watt\nD. Pascal\nAnswer: B\n\n"
    "Which quantity is a vector?\nA. Mass\nB. Speed\nC. Velocity\nD. Energy\nAnswer: C\n\n"
    "What is the speed of light in vacuum, approximately?\nA. 3e8 m/s\nB. 3e6 m/s\nC. 3e5 m/s\nD. 3e10 m/s\n"
    "Answer: A\n\n"
    "A ball is dropped. Its acceleration is\nA. 0\nB. g\nC. 2g\nD. g/2\nAnswer: B\n\n"
    "Ohm's law relates\nA. V, I, R\nB. P, V, T\nC. F, m, a\nD. E, m, c\nAnswer: A\n\n"
)
EXPECTED_PROMPTS = [
    EXPECTED_SHOTS + "Which is\na scalar?\nA. Force\nB. Displacement\nC. Work\nD. Momentum\nAnswer:",
    EXPECTED_SHOTS + "What does a voltmeter measure?\nA. Current\nB. Resistance\nC. Charge\n"
    "D. Potential difference\nAnswer:",
]


def write_csv(path: Path, rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as fh:
        csv.writer(fh).writerows(rows)


@pytest.fixture
def mmlu_dir(tmp_path: Path) -> Path:
    root = tmp_path / "mmlu"
    write_csv(root / "dev" / "high_school_physics_dev.csv", DEV)
    write_csv(root / "test" / "high_school_physics_test.csv", TEST)
    return root


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep `datasets`' cache of the local test files out of the user's home."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def test_csv_prompts_are_exactly_the_5_shot_layout(mmlu_dir: Path) -> None:
    items = mmlu.load_csv_dir(mmlu_dir, task="mmlu")
    assert [it.prompt for it in items] == EXPECTED_PROMPTS
    assert [it.item_id for it in items] == ["high_school_physics/0", "high_school_physics/1"]
    assert [it.gold for it in items] == [2, 3]
    for it in items:
        assert it.continuations == [" A", " B", " C", " D"]
        assert (it.kind, it.task, it.subject, it.category) == (
            "letter",
            "mmlu",
            "high_school_physics",
            "STEM",
        )


def test_hf_layout_from_local_parquet_gives_the_same_items(
    tmp_path: Path, mmlu_dir: Path, hf_cache: None
) -> None:
    import datasets

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

    snapshot = tmp_path / "cais_mmlu"
    (snapshot / "high_school_physics").mkdir(parents=True)
    for split, rows in (("dev", DEV), ("test", TEST)):
        path = snapshot / "high_school_physics" / f"{split}-00000-of-00001.parquet"
        datasets.Dataset.from_list(hf_rows(rows)).to_parquet(str(path))
    (snapshot / "all").mkdir()  # the hub's aggregate config is not a subject
    (snapshot / ".cache" / "huggingface").mkdir(parents=True)  # left by huggingface-cli download

    items = mmlu.load_hf(task="mmlu", local_dir=snapshot)
    assert [it.prompt for it in items] == EXPECTED_PROMPTS
    assert items == mmlu.load_csv_dir(mmlu_dir, task="mmlu")


def test_hf_hub_path_asks_for_each_subject_config(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str | None, str]] = []

    def fake_load_split(
        dataset: str, config: str | None, split: str, *, local_dir: Path | None = None
    ) -> list:
        assert local_dir is None
        calls.append((dataset, config, split))
        row = {"question": f"{config} q", "subject": config, "choices": ["a", "b", "c", "d"], "answer": 0}
        return [row] * (5 if split == "dev" else 1)

    monkeypatch.setattr(hf_source, "load_split", fake_load_split)
    items = mmlu.load_hf(task="mmlu")
    assert len(items) == 57
    assert calls[:2] == [("cais/mmlu", "abstract_algebra", "dev"), ("cais/mmlu", "abstract_algebra", "test")]
    assert {c[1] for c in calls} == set(SUBJECTS)


def test_hf_row_with_bad_answer_names_the_row(tmp_path: Path, hf_cache: None) -> None:
    snapshot = tmp_path / "cais_mmlu" / "astronomy"
    snapshot.mkdir(parents=True)
    good = '{"question": "q", "subject": "astronomy", "choices": ["a", "b", "c", "d"], "answer": 1}\n'
    (snapshot / "dev.jsonl").write_text(good * 5)
    (snapshot / "test.jsonl").write_text(good + good.replace('"answer": 1', '"answer": 4'))
    with pytest.raises(
        UserError,
        match=r"cais/mmlu \(astronomy\) test split from local copy .*, row 1: "
        r"`answer` must be an index into `choices`, got 4",
    ):
        mmlu.load_hf(task="mmlu", local_dir=tmp_path / "cais_mmlu")


def test_category_table_has_57_subjects_in_the_4_categories() -> None:
    assert len(SUBJECTS) == 57
    assert set(SUBJECT_TO_CATEGORY) == set(SUBJECTS)
    assert CATEGORIES == ("STEM", "humanities", "social sciences", "other (business, health, misc.)")
    assert Counter(SUBJECT_TO_CATEGORY.values()) == {
        "STEM": 18,
        "humanities": 13,
        "social sciences": 12,
        "other (business, health, misc.)": 14,
    }
    assert SUBJECT_TO_CATEGORY["anatomy"] == "other (business, health, misc.)"
    assert SUBJECT_TO_CATEGORY["high_school_government_and_politics"] == "social sciences"
    assert SUBJECT_TO_CATEGORY["formal_logic"] == "humanities"


def test_category_table_agrees_with_lm_eval_except_anatomy() -> None:
    """lm-eval 0.4.13 derived its table from the same source; it files anatomy under STEM."""
    from lm_eval.tasks.mmlu._generate_configs import SUBJECTS as lm_eval_subjects

    names = {
        "stem": "STEM",
        "humanities": "humanities",
        "social_sciences": "social sciences",
        "other": "other (business, health, misc.)",
    }
    theirs = {subject: names[cat] for subject, cat in lm_eval_subjects.items()}
    assert set(theirs) == set(SUBJECTS)
    assert {s for s in SUBJECTS if theirs[s] != SUBJECT_TO_CATEGORY[s]} == {"anatomy"}


def test_shared_data_holds_exactly_the_57_subjects() -> None:
    assert sorted(p.name.removesuffix("_test.csv") for p in (SHARED_MMLU / "test").glob("*.csv")) == list(
        SUBJECTS
    )


def test_vendored_sample_has_4_items_per_subject_with_full_data_ids() -> None:
    sample = mmlu.load_sample(task="mmlu")
    assert len(sample) == 228
    assert Counter(it.subject for it in sample) == dict.fromkeys(SUBJECTS, 4)
    full = {it.item_id: it for it in mmlu.load_csv_dir(SHARED_MMLU, task="mmlu")}
    for item in sample:
        assert item == full[item.item_id]


def test_vendored_sample_is_reproduced_by_its_script(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location(
        "make_mmlu_sample", ROOT / "scripts" / "make_mmlu_sample.py"
    )
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.make_sample(SHARED_MMLU, tmp_path, per_subject=4, seed=0) == 228
    vendored = mmlu.sample_dir()
    files = sorted(p.relative_to(vendored) for p in vendored.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    for rel in files:
        assert (tmp_path / rel).read_bytes() == (vendored / rel).read_bytes(), rel


# --- bad inputs -----------------------------------------------------------------------------------


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"^MMLU data directory .*nowhere not found$"):
        mmlu.load_csv_dir(tmp_path / "nowhere", task="mmlu")


def test_directory_without_test_folder(mmlu_dir: Path) -> None:
    (mmlu_dir / "test" / "high_school_physics_test.csv").unlink()
    (mmlu_dir / "test").rmdir()
    with pytest.raises(UserError, match=r"has no test/ directory \(expected dev/<subject>_dev.csv and test/"):
        mmlu.load_csv_dir(mmlu_dir, task="mmlu")


def test_empty_test_folder(mmlu_dir: Path) -> None:
    (mmlu_dir / "test" / "high_school_physics_test.csv").unlink()
    with pytest.raises(UserError, match=r"^no <subject>_test.csv files in .*test$"):
        mmlu.load_csv_dir(mmlu_dir, task="mmlu")


def test_missing_dev_file(mmlu_dir: Path) -> None:
    (mmlu_dir / "dev" / "high_school_physics_dev.csv").unlink()
    with pytest.raises(UserError, match=r"high_school_physics_dev.csv not found: the 5-shot prompt"):
        mmlu.load_csv_dir(mmlu_dir, task="mmlu")


def test_too_few_dev_rows(mmlu_dir: Path) -> None:
    write_csv(mmlu_dir / "dev" / "high_school_physics_dev.csv", DEV[:4])
    with pytest.raises(
        UserError, match=r"high_school_physics_dev.csv has 4 rows; the 5-shot prompt needs 5$"
    ):
        mmlu.load_csv_dir(mmlu_dir, task="mmlu")


def test_short_row_reports_the_line_it_starts_on(mmlu_dir: Path) -> None:
    path = mmlu_dir / "test" / "high_school_physics_test.csv"
    # Row 1 spans lines 1-2 (a quoted newline), so the short row starts on line 3.
    path.write_text('"Two\nlines",a,b,c,d,A\nshort,a,b,c,A\n', encoding="utf-8")
    with pytest.raises(
        UserError,
        match=r"high_school_physics_test.csv:3: expected 6 columns "
        r"\(question, A, B, C, D, answer\), got 5$",
    ):
        mmlu.load_csv_dir(mmlu_dir, task="mmlu")


def test_bad_answer_letter(mmlu_dir: Path) -> None:
    path = mmlu_dir / "test" / "high_school_physics_test.csv"
    path.write_text("q1,a,b,c,d,A\nq2,a,b,c,d,E\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"_test.csv:2: answer must be one of A, B, C, D, got 'E'$"):
        mmlu.load_csv_dir(mmlu_dir, task="mmlu")


def test_empty_question(mmlu_dir: Path) -> None:
    (mmlu_dir / "test" / "high_school_physics_test.csv").write_text("  ,a,b,c,d,A\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"_test.csv:1: empty question$"):
        mmlu.load_csv_dir(mmlu_dir, task="mmlu")


def test_not_utf8(mmlu_dir: Path) -> None:
    (mmlu_dir / "test" / "high_school_physics_test.csv").write_bytes(b"caf\xe9,a,b,c,d,A\n")
    with pytest.raises(UserError, match=r"_test.csv is not UTF-8 text"):
        mmlu.load_csv_dir(mmlu_dir, task="mmlu")


def test_indexed_csv_needs_a_row_index(mmlu_dir: Path) -> None:
    (mmlu_dir / "test" / "high_school_physics_test.csv").write_text("x,q,a,b,c,d,A\n", encoding="utf-8")
    with pytest.raises(
        UserError, match=r"_test.csv:1: first column must be the original row index, got 'x'$"
    ):
        mmlu.load_csv_dir(mmlu_dir, task="mmlu", indexed=True)


def test_indexed_csv_keeps_the_original_index(mmlu_dir: Path) -> None:
    (mmlu_dir / "test" / "high_school_physics_test.csv").write_text("17,q,a,b,c,d,B\n", encoding="utf-8")
    [item] = mmlu.load_csv_dir(mmlu_dir, task="mmlu", indexed=True)
    assert (item.item_id, item.gold) == ("high_school_physics/17", 1)
    assert item.prompt == EXPECTED_SHOTS + "q\nA. a\nB. b\nC. c\nD. d\nAnswer:"
