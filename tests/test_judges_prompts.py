"""Choosing and rendering MT-Bench judge prompts as FastChat's gen_judgment.py does."""

from __future__ import annotations

from pathlib import Path

import pytest

from servecmp.errors import UserError
from servecmp.judges.prompts import load_judge_prompts, render_pair, render_single

PROMPTS = load_judge_prompts()


@pytest.mark.parametrize(
    ("kind", "guided", "multi", "name"),
    [
        ("single", False, False, "single-v1"),
        ("single", True, False, "single-math-v1"),
        ("single", False, True, "single-v1-multi-turn"),
        ("single", True, True, "single-math-v1-multi-turn"),
        ("pairwise", False, False, "pair-v2"),
        ("pairwise", True, False, "pair-math-v1"),
        ("pairwise", False, True, "pair-v2-multi-turn"),
        ("pairwise", True, True, "pair-math-v1-multi-turn"),
    ],
)
def test_choose(kind: str, guided: bool, multi: bool, name: str) -> None:
    assert PROMPTS.choose(kind, reference_guided=guided, multi_turn=multi).name == name  # type: ignore[arg-type]


def test_single_turn_one_message_layout() -> None:
    messages = render_single(PROMPTS.by_name["single-v1"], ["What is AI?"], ["A field."], turn=1)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"] == "You are a helpful assistant."
    user = messages[1]["content"]
    assert user.endswith("[Question]\nWhat is AI?\n\n[The Start of Assistant's Answer]\nA field.\n"
                         "[The End of Assistant's Answer]")  # fmt: skip
    assert user.startswith("[Instruction]\nPlease act as an impartial judge")


def test_reference_guided_second_turn_shows_both_references_and_answers() -> None:
    prompt = PROMPTS.by_name["single-math-v1-multi-turn"]
    user = render_single(prompt, ["2+2?", "3+3?"], ["4", "7"], turn=2, reference=["4", "6"])[1]["content"]
    assert (
        "### User:\n2+2?\n\n### Reference answer:\n4\n\n### User:\n3+3?\n\n### Reference answer:\n6" in user
    )
    assert "### Assistant A:\n4\n\n### User:\n3+3?\n\n### Assistant A:\n7" in user


def test_pair_first_turn_puts_a_before_b() -> None:
    user = render_pair(PROMPTS.by_name["pair-v2"], ["Q"], ["answer one"], ["answer two"], turn=1)[1][
        "content"
    ]
    assert user.index("answer one") < user.index("answer two")
    assert "[The Start of Assistant A's Answer]\nanswer one\n[The End of Assistant A's Answer]" in user


def test_pair_math_second_turn_has_missing_second_reference_as_empty() -> None:
    prompt = PROMPTS.by_name["pair-math-v1-multi-turn"]
    user = render_pair(prompt, ["q1", "q2"], ["a1", "a2"], ["b1", "b2"], turn=2, reference=["r1"])[1][
        "content"
    ]
    assert "### Reference answer:\nr1\n\n### User:\nq2\n\n### Reference answer:\n\n" in user
    assert "### Assistant B:\nb2" in user


def test_fingerprint_is_the_file_hash() -> None:
    import hashlib

    from servecmp.judges.prompts import vendored_judge_prompts

    assert PROMPTS.fingerprint == hashlib.sha256(vendored_judge_prompts().read_bytes()).hexdigest()


def test_incomplete_prompt_file_is_a_user_error(tmp_path: Path) -> None:
    bad = tmp_path / "p.jsonl"
    bad.write_text(
        '{"name": "single-v1", "type": "single", "category": "general", "system_prompt": "s", '
        '"prompt_template": "t", "output_format": "[[rating]]"}\n'
    )
    with pytest.raises(UserError, match="missing judge prompts pair-math-v1"):
        load_judge_prompts(bad)
    bad.write_text("not json\n")
    with pytest.raises(UserError, match=r"p.jsonl:1: not valid JSON \(Expecting value at column 1\)"):
        load_judge_prompts(bad)
