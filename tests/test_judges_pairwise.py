"""MT-Bench's order-swap rule: all nine combinations of the two games' verdicts, and the tally."""

from __future__ import annotations

import pytest

from servecmp.judges.pairwise import PairOutcome, combine_games, tally, winner_of
from servecmp.mtbench.judging import pair_record
from servecmp.mtbench.report import pair_outcome


@pytest.mark.parametrize(
    ("verdict", "game", "winner"),
    [
        ("A", 1, "model_1"),
        ("B", 1, "model_2"),
        ("tie", 1, "tie"),
        ("A", 2, "model_2"),
        ("B", 2, "model_1"),
        ("tie", 2, "tie"),
    ],
)
def test_positional_verdict_to_model(verdict: str, game: int, winner: str) -> None:
    assert winner_of(verdict, game) == winner  # type: ignore[arg-type]


# (game-1 verdict, game-2 verdict) as the judge wrote them (A/B positions) -> combined result.
# Game 1 shows the baseline (model_1) as A; game 2 shows the candidate (model_2) as A.
NINE = [
    ("A", "A", PairOutcome("tie", False)),  # pure position bias toward A
    ("A", "B", PairOutcome("model_1", True)),  # baseline both times
    ("A", "tie", PairOutcome("tie", False)),
    ("B", "A", PairOutcome("model_2", True)),  # candidate both times
    ("B", "B", PairOutcome("tie", False)),  # pure position bias toward B
    ("B", "tie", PairOutcome("tie", False)),
    ("tie", "A", PairOutcome("tie", False)),
    ("tie", "B", PairOutcome("tie", False)),
    ("tie", "tie", PairOutcome("tie", True)),
]


@pytest.mark.parametrize(("g1", "g2", "expected"), NINE)
def test_nine_combinations(g1: str, g2: str, expected: PairOutcome) -> None:
    assert combine_games(winner_of(g1, 1), winner_of(g2, 2)) == expected  # type: ignore[arg-type]


def test_tally_of_the_nine() -> None:
    t = tally(o for _, _, o in NINE)
    assert (t.n, t.wins, t.ties, t.losses, t.inconsistent) == (9, 1, 7, 1, 6)
    assert t.inconsistency_rate == pytest.approx(6 / 9)
    assert t.win_rate_adjusted == pytest.approx((1 + 0.5 * 7) / 9)


def test_empty_tally_has_no_rates() -> None:
    t = tally([])
    assert (t.n, t.inconsistency_rate, t.win_rate_adjusted) == (0, None, None)


def test_matches_fastchat_show_result_rule() -> None:
    """FastChat: tie if g1 == "tie" or g1 != g2, else g1's winner (show_result.py)."""
    names = ["model_1", "model_2", "tie"]
    for g1 in names:
        for g2 in names:
            fastchat = "tie" if g1 == "tie" or g1 != g2 else g1
            assert combine_games(g1, g2).winner == fastchat  # type: ignore[arg-type]


def test_a_pair_with_an_unreadable_game_is_left_out() -> None:
    from servecmp.judges.prompts import load_judge_prompts
    from servecmp.judges.runner import JudgeReply
    from servecmp.mtbench.judging import PairJob
    from servecmp.mtbench.questions import MtQuestion

    prompt = load_judge_prompts().by_name["pair-v2"]
    job = PairJob(MtQuestion(question_id=1, category="writing", turns=["q"]), 1, "b", "c", prompt,
                  [{"role": "user", "content": "g1"}], [{"role": "user", "content": "g2"}])  # fmt: skip
    record = pair_record(job, JudgeReply(text="[[A]]"), JudgeReply(text="no verdict"), "judge")
    assert (record.g1_winner, record.g2_winner) == ("model_1", "error")
    assert (record.g1_status, record.g2_status) == ("ok", "unparseable")
    assert record.g2_judgment == "no verdict"
    assert pair_outcome(record) is None
    failed = pair_record(job, JudgeReply(text=None, error="HTTP 500"), JudgeReply(text="[[B]]"), "judge")
    assert (failed.g1_status, failed.g2_winner, failed.error) == ("error", "model_1", "HTTP 500")


def test_pairs_without_a_verdict_are_counted_apart() -> None:
    t = tally([None, *(o for _, _, o in NINE), None])
    assert (t.n, t.wins, t.ties, t.losses, t.inconsistent, t.excluded) == (9, 1, 7, 1, 6, 2)
    assert t.win_rate_adjusted == pytest.approx((1 + 0.5 * 7) / 9)
