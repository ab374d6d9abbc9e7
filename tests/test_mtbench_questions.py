"""Loading and selecting MT-Bench questions and references; bad files are one-line user errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from servecmp.config import parse_config
from servecmp.errors import UserError
from servecmp.mtbench import questions as qm
from servecmp.mtbench.settings import MtBenchOptions, new_settings


def _write(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_vendored_questions_by_category_and_temperature() -> None:
    qs = qm.load_questions()
    assert len(qs) == 80
    assert {c: sum(q.category == c for q in qs) for c in qm.CATEGORIES} == {c: 10 for c in qm.CATEGORIES}
    assert all(len(q.turns) == 2 for q in qs)
    by_id = {q.question_id: q for q in qs}
    assert (by_id[81].category, by_id[81].temperature) == ("writing", 0.7)
    assert (by_id[111].category, by_id[111].temperature) == ("math", 0.0)
    assert (by_id[141].category, by_id[141].temperature) == ("stem", 0.1)


def test_temperature_for_unknown_category_and_required_temperature() -> None:
    assert qm.MtQuestion(question_id=1, category="poetry", turns=["x"]).temperature == 0.7
    assert (
        qm.MtQuestion(question_id=1, category="math", turns=["x"], required_temperature=0.3).temperature
        == 0.3
    )


def test_vendored_settings_use_the_gpt4_references_for_math_reasoning_coding() -> None:
    s = new_settings(
        MtBenchOptions(baseline="http://b", candidate="http://c", categories=["coding"]), parse_config({})
    )
    assert [q.question_id for q in s.questions] == list(range(121, 131))
    refs = qm.load_reference_answers(qm.vendored("reference_answer/gpt-4.jsonl"))
    # 123 has no `reference` in question.jsonl; FastChat's reference file supplies it.
    assert all(q.reference == refs[q.question_id] for q in s.questions)
    assert s.reference_source.endswith("reference_answer/gpt-4.jsonl")


def test_user_question_file_uses_its_own_reference_field(tmp_path: Path) -> None:
    qfile = _write(tmp_path / "q.jsonl", [
        {"question_id": "a", "category": "math", "turns": ["1+1?", "2+2?"], "reference": ["2", "4"]},
        {"question_id": "b", "category": "coding", "turns": ["sort?"]},
    ])  # fmt: skip
    s = new_settings(
        MtBenchOptions(baseline="http://b", candidate="http://c", questions=qfile), parse_config({})
    )
    assert [(q.question_id, q.reference) for q in s.questions] == [("a", ["2", "4"]), ("b", None)]
    rfile = _write(
        tmp_path / "r.jsonl", [{"question_id": "b", "choices": [{"index": 0, "turns": ["sorted()"]}]}]
    )
    s = new_settings(
        MtBenchOptions(baseline="http://b", candidate="http://c", questions=qfile, references=rfile),
        parse_config({}),
    )
    assert [(q.question_id, q.reference) for q in s.questions] == [("a", ["2", "4"]), ("b", ["sorted()"])]


def test_select_categories_then_limit() -> None:
    qs = qm.load_questions()
    chosen = qm.select(qs, categories=["math", "writing"], limit=12)
    assert [q.question_id for q in chosen] == [*range(81, 91), 111, 112]
    assert [q.question_id for q in qm.select(qs, limit=2)] == [81, 82]
    with pytest.raises(UserError, match="unknown category poetry"):
        qm.select(qs, categories=["poetry"])
    with pytest.raises(UserError, match="--limit must be at least 1"):
        qm.select(qs, limit=0)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            '{"question_id": 1, "category": "x"}\n',
            r"q.jsonl:1: not an MT-Bench question \(turns: Field required\)",
        ),
        ('{"question_id": 1, "category": "x", "turns": []}\n', "q.jsonl:1: not an MT-Bench question"),
        ('{"question_id": 1, "category": "x", "turns": ["a", "b", "c"]}\n', "1 or 2 turns"),
        ("not json\n", r"q.jsonl:1: not valid JSON \(Expecting value at column 1\)"),
        ("[1, 2]\n", "q.jsonl:1: expected a JSON object, got list"),
        ("\n", "holds no questions"),
        (
            '{"question_id": 1, "category": "x", "turns": ["a"]}\n' * 2,
            r"q.jsonl:2: duplicate question_id 1 \(first on line 1\)$",
        ),
    ],
)
def test_bad_question_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        qm.load_questions(path)


def test_missing_question_file_and_bad_reference_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        qm.load_questions(tmp_path / "nope.jsonl")
    bad = _write(tmp_path / "r.jsonl", [{"question_id": 1, "turns": ["x"]}])
    with pytest.raises(UserError, match="not a FastChat answer line"):
        qm.load_reference_answers(bad)


def test_fingerprint_changes_with_content() -> None:
    a = [qm.MtQuestion(question_id=1, category="math", turns=["x"])]
    b = [qm.MtQuestion(question_id=1, category="math", turns=["y"])]
    assert qm.fingerprint(a) == qm.fingerprint(list(a)) != qm.fingerprint(b)


def test_settings_need_endpoints_and_a_valid_mode() -> None:
    with pytest.raises(UserError, match="no baseline endpoint"):
        new_settings(MtBenchOptions(candidate="http://c"), parse_config({}))
    with pytest.raises(UserError, match="--mode must be one of single, pairwise, both"):
        new_settings(MtBenchOptions(baseline="http://b", candidate="http://c", mode="all"), parse_config({}))


def test_judge_defaults() -> None:
    cfg = parse_config({})
    s = new_settings(MtBenchOptions(baseline="http://b", candidate="http://c"), cfg)
    assert (s.judge.model, s.judge.api_key_env, s.judge_paid, s.judge_force_format) == (
        "gpt-4", "OPENAI_API_KEY", True, False,
    )  # fmt: skip
    assert s.judge_max_tokens == 2048
    local = new_settings(
        MtBenchOptions(baseline="http://b", candidate="http://c", judge_url="http://j:8000"), cfg
    )
    assert (local.judge.model, local.judge.api_key_env, local.judge_paid) == (None, None, False)
    demo = new_settings(
        MtBenchOptions(baseline="http://b", baseline_model="m", candidate="http://c", judge_url="baseline"),
        cfg,
    )
    assert (demo.judge.base_url, demo.judge.model, demo.judge_is_baseline) == ("http://b/v1", "m", True)
    assert demo.judge_force_format is True and demo.judge_max_tokens == 200
