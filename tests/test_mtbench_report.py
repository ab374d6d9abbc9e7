"""The MT-Bench report's numbers against values worked out by hand."""

from __future__ import annotations

import pytest

from servecmp.mtbench.questions import MtQuestion
from servecmp.mtbench.records import AnswerChoice, AnswerMeta, AnswerRecord, PairJudgment, SingleJudgment
from servecmp.mtbench.report import MtBenchSummary, build_summary

CATS = {1: "writing", 2: "writing", 3: "math", 4: "math", 5: "coding"}
# (turn 1, turn 2) ratings. Per-question means: baseline 7, 9, 6, 9, 6; candidate 6, 7, 3, 5, 1,
# so the per-question differences are -1, -2, -3, -4, -5.
BASE = {1: (8, 6), 2: (9, 9), 3: (7, 5), 4: (10, 8), 5: (6, 6)}
CAND = {1: (7, 5), 2: (8, 6), 3: (4, 2), 4: (6, 4), 5: (1, 1)}
STEMS = {"baseline": "b", "candidate": "c"}


def _q(qid: int) -> MtQuestion:
    return MtQuestion(question_id=qid, category=CATS.get(qid, "writing"), turns=[f"q{qid} t1", f"q{qid} t2"])


def _answer(qid: int, role: str) -> AnswerRecord:
    return AnswerRecord(
        question_id=qid, answer_id="x", model_id=role, tstamp=0.0,
        choices=[AnswerChoice(turns=[f"{role} {qid} a1", f"{role} {qid} a2"])],
        servecmp=AnswerMeta(endpoint=role, temperature=0.0, max_tokens=8),  # type: ignore[arg-type]
    )  # fmt: skip


def _judgment(qid: int, role: str, turn: int, score: float | None, status: str = "ok") -> SingleJudgment:
    return SingleJudgment.model_validate(
        {"question_id": qid, "model": STEMS[role], "judge": ("j", "single-v1"), "user_prompt": "",
         "judgment": "text", "score": score, "turn": turn, "tstamp": 0.0, "status": status, "endpoint": role,
         "category": CATS.get(qid, "writing")}
    )  # fmt: skip


def _pair(qid: int, turn: int, g1: str, g2: str, g2_status: str = "ok") -> PairJudgment:
    return PairJudgment.model_validate(
        {"question_id": qid, "model_1": "b", "model_2": "c", "g1_winner": g1, "g2_winner": g2,
         "judge": ("j", "pair-v2"), "g1_user_prompt": "", "g1_judgment": "", "g2_user_prompt": "",
         "g2_judgment": "unreadable" if g2_status != "ok" else "", "turn": turn, "tstamp": 0.0,
         "g1_status": "ok", "g2_status": g2_status, "category": "writing"}
    )  # fmt: skip


def _summary(
    qids: list[int], single: list[SingleJudgment], pairs: list[PairJudgment], mode: str = "both"
) -> MtBenchSummary:
    questions = [_q(q) for q in qids]
    answers = {role: {q: _answer(q, role) for q in qids} for role in ("baseline", "candidate")}
    return build_summary(
        questions=questions, answers=answers, stems=STEMS,  # type: ignore[arg-type]
        models={"baseline": "base-model", "candidate": "cand-model"},
        single={(j.question_id, j.model, j.turn): j for j in single},
        pairs={(p.question_id, p.turn): p for p in pairs},
        mode=mode, judge_model="j", judge_url="http://judge/v1", show=3,
    )  # fmt: skip


def _five() -> list[SingleJudgment]:
    out = []
    for role, table in (("baseline", BASE), ("candidate", CAND)):
        for qid, (t1, t2) in table.items():
            out += [_judgment(qid, role, 1, t1), _judgment(qid, role, 2, t2)]
    return out


def test_scores_per_endpoint_turn_and_category() -> None:
    s = _summary([1, 2, 3, 4, 5], _five(), [])
    b, c = s.endpoints["baseline"], s.endpoints["candidate"]
    assert (b.score.mean, b.score.n) == (pytest.approx(7.4), 10)  # 74 / 10
    assert (c.score.mean, c.score.n) == (pytest.approx(4.4), 10)  # 44 / 10
    assert b.turns["1"].mean == pytest.approx(8.0) and b.turns["2"].mean == pytest.approx(6.8)
    assert c.turns["1"].mean == pytest.approx(5.2) and c.turns["2"].mean == pytest.approx(3.6)
    assert {k: v.mean for k, v in b.categories.items()} == {"writing": 8.0, "math": 7.5, "coding": 6.0}
    assert {k: v.mean for k, v in c.categories.items()} == {"writing": 6.5, "math": 4.0, "coding": 1.0}
    assert list(b.categories) == ["writing", "math", "coding"]  # MT-Bench's category order


def test_paired_difference_interval_and_wilcoxon() -> None:
    s = _summary([1, 2, 3, 4, 5], _five(), [])
    assert s.delta.point == pytest.approx(-3.0) and s.delta.n == 5
    assert s.delta.low is not None and s.delta.high is not None
    assert -5.0 <= s.delta.low < -3.0 < s.delta.high <= -1.0
    assert s.delta_by_turn["1"].point == pytest.approx(-2.8)  # -1, -1, -3, -4, -5
    assert s.delta_by_turn["2"].point == pytest.approx(-3.2)  # -1, -3, -3, -4, -5
    # All five differences negative and distinct: exact two-sided p = 2 / 2**5.
    assert s.wilcoxon.statistic == 0.0
    assert s.wilcoxon.pvalue == pytest.approx(0.0625)
    assert (s.wilcoxon.n, s.wilcoxon.n_nonzero) == (5, 5)
    assert [d.question_id for d in s.largest_drops] == [5, 4, 3]
    assert s.largest_drops[0].diff == -5.0
    assert s.largest_drops[0].candidate_answers == ["candidate 5 a1", "candidate 5 a2"]
    assert s.complete is False  # pairwise judgments missing in mode "both"
    assert s.pair_judgments is not None and s.pair_judgments.missing == 20


def test_unreadable_judgment_counts_but_never_scores() -> None:
    single = _five() + [
        _judgment(6, "baseline", 1, 5),
        _judgment(6, "baseline", 2, 7),
        _judgment(6, "candidate", 1, 9),
        _judgment(6, "candidate", 2, None, status="unparseable"),
    ]
    s = _summary([1, 2, 3, 4, 5, 6], single, [], mode="single")
    # q6's valid ratings count in the means; the question is left out of the pairing.
    assert s.endpoints["baseline"].score.mean == pytest.approx((74 + 12) / 12)
    assert s.endpoints["candidate"].score.mean == pytest.approx((44 + 9) / 11)
    assert s.delta.n == 5 and s.delta.point == pytest.approx(-3.0)
    counts = s.single_judgments
    assert (counts.expected, counts.ok, counts.unparseable, counts.errors, counts.missing) == (
        24,
        23,
        1,
        0,
        0,
    )
    assert s.complete is True
    assert s.unparseable_examples == ["text"]


def test_pairwise_tally_with_left_out_pairs() -> None:
    pairs = [
        _pair(1, 1, "model_2", "model_2"),  # candidate wins in both orders
        _pair(1, 2, "model_1", "model_1"),  # baseline wins
        _pair(2, 1, "model_1", "model_2"),  # order-dependent: tie, inconsistent
        _pair(2, 2, "tie", "tie"),  # consistent tie
        _pair(3, 1, "model_1", "error", g2_status="unparseable"),  # left out
    ]
    s = _summary([1, 2, 3], [], pairs, mode="pairwise")
    p = s.pairwise
    assert p is not None
    assert (p.n, p.wins, p.ties, p.losses, p.inconsistent, p.excluded) == (4, 1, 2, 1, 1, 1)
    assert p.inconsistency_rate == pytest.approx(0.25)
    assert p.win_rate_adjusted == pytest.approx((1 + 0.5 * 2) / 4)
    assert s.pairwise_by_turn["1"].n == 2 and s.pairwise_by_turn["2"].n == 2
    pc = s.pair_judgments
    assert pc is not None
    assert (pc.expected, pc.ok, pc.unparseable, pc.missing) == (12, 9, 1, 2)  # 6 pairs x 2 games
    assert s.single_judgments.expected == 0
    assert s.delta.point is None and s.delta.n == 0


def test_no_drop_when_the_candidate_is_never_worse() -> None:
    single = [_judgment(1, r, t, 8) for r in ("baseline", "candidate") for t in (1, 2)]
    s = _summary([1], single, [], mode="single")
    assert s.largest_drops == []
    assert s.delta.point == 0.0 and (s.delta.low, s.delta.high) == (0.0, 0.0)
    assert s.wilcoxon.pvalue is None and s.wilcoxon.n_nonzero == 0
