"""Compatibility with FastChat's own MT-Bench code (fschat 0.2.36): its answer-file loader reads our
answer files, and our temperatures, patterns and reference categories are its own.

`fastchat.llm_judge.common` imports torch and transformers through fastchat.model (about 10 s);
all FastChat imports are in this one file so the suite pays that once.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from fastchat.llm_judge.common import (
    NEED_REF_CATS,
    load_judge_prompts,
    load_model_answers,
    load_questions,
    one_score_pattern,
    one_score_pattern_backup,
    temperature_config,
)

from servecmp.endpoints import EndpointClient, EndpointSpec
from servecmp.judges import parsing
from servecmp.judges.prompts import NEED_REF_CATEGORIES
from servecmp.judges.prompts import load_judge_prompts as our_judge_prompts
from servecmp.mtbench.answers import generate_answers
from servecmp.mtbench.questions import (
    CATEGORIES,
    TEMPERATURE_BY_CATEGORY,
    MtQuestion,
    vendored,
)
from servecmp.mtbench.questions import (
    load_questions as our_questions,
)
from servecmp.runstore import JsonlAppender
from tests.test_mtbench_stub import ChatStub, ChatStubState


def test_fastchat_loader_reads_our_answer_files(tmp_path: Path) -> None:
    questions = [
        MtQuestion(question_id=81, category="writing", turns=["Write a haiku.", "Now a limerick."]),
        MtQuestion(question_id=101, category="reasoning", turns=["Who is second?"]),
    ]
    answer_dir = tmp_path / "model_answer"
    answer_dir.mkdir()
    with ChatStub(ChatStubState(model="org/model-v1", tag="[m]")) as stub:

        async def go() -> None:
            spec = EndpointSpec(base_url=stub.url, model="org/model-v1")
            async with EndpointClient(spec) as client:
                with JsonlAppender(answer_dir / "org_model-v1.jsonl") as out:
                    await generate_answers(client, questions, out, role="baseline", max_tokens=32)

        asyncio.run(go())

    loaded = load_model_answers(str(answer_dir))
    assert list(loaded) == ["org_model-v1"]
    answers = loaded["org_model-v1"]
    assert sorted(answers) == [81, 101]
    a = answers[81]
    assert a["model_id"] == "org/model-v1"
    assert a["choices"] == [
        {"index": 0, "turns": ["[m] turn 1: Write a haiku.", "[m] turn 2: Now a limerick."]}
    ]
    assert isinstance(a["answer_id"], str) and a["answer_id"]
    assert isinstance(a["tstamp"], float)
    assert answers[101]["choices"][0]["turns"] == ["[m] turn 1: Who is second?"]


def test_vendored_files_are_fastchats_and_load_with_its_loaders(tmp_path: Path) -> None:
    q_file = tmp_path / "question.jsonl"
    q_file.write_bytes(vendored("question.jsonl").read_bytes())
    theirs = load_questions(str(q_file), None, None)
    ours = our_questions()
    assert len(theirs) == len(ours) == 80
    assert [q["question_id"] for q in theirs] == [q.question_id for q in ours]
    assert [q["turns"] for q in theirs] == [q.turns for q in ours]
    assert {q.category for q in ours} == set(CATEGORIES)

    p_file = tmp_path / "judge_prompts.jsonl"
    p_file.write_bytes(vendored("judge_prompts.jsonl").read_bytes())
    their_prompts = load_judge_prompts(str(p_file))
    mine = our_judge_prompts().by_name
    assert set(their_prompts) == set(mine)
    for name, prompt in their_prompts.items():
        assert prompt["prompt_template"] == mine[name].prompt_template
        assert prompt["system_prompt"] == mine[name].system_prompt


def test_vendored_copies_match_shared_data() -> None:
    shared = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mt_bench"
    if not shared.is_dir():
        return  # CI clones shared/ beside the repo; elsewhere the vendored copy stands alone
    for name in ("question.jsonl", "judge_prompts.jsonl", "reference_answer/gpt-4.jsonl", "LICENSE"):
        assert vendored(name).read_bytes() == (shared / name).read_bytes(), name


def test_temperatures_patterns_and_reference_categories_are_fastchats() -> None:
    assert {k: v for k, v in temperature_config.items() if k in CATEGORIES} == TEMPERATURE_BY_CATEGORY
    assert set(CATEGORIES) <= set(temperature_config)
    assert parsing.ONE_SCORE_PATTERN.pattern == one_score_pattern.pattern
    assert parsing.ONE_SCORE_PATTERN_BACKUP.pattern == one_score_pattern_backup.pattern
    assert set(NEED_REF_CATS) & set(CATEGORIES) == NEED_REF_CATEGORIES


def test_vendored_license_and_notice_ship_with_the_data() -> None:
    assert "Apache License" in vendored("LICENSE").read_text(encoding="utf-8")
    notice = vendored("NOTICE").read_text(encoding="utf-8")
    assert "FastChat" in notice and "Apache" in notice
    refs = [json.loads(line) for line in vendored("reference_answer/gpt-4.jsonl").read_text().splitlines()]
    assert len(refs) == 30
