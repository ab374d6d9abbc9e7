"""Pairwise judging in both orders and MT-Bench's rule for combining the two verdicts.

Game 1 shows model_1 (the baseline) as assistant A; game 2 swaps the positions. A verdict that
changes with the order is a tie (FastChat's show_result: `g1_winner == "tie" or g1 != g2` → tie),
and is counted as position-inconsistent.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from servecmp.judges.parsing import Verdict

Winner = Literal["model_1", "model_2", "tie"]
Game = Literal[1, 2]


def winner_of(verdict: Verdict, game: Game) -> Winner:
    """Map a positional verdict to a model: in game 1 A is model_1, in game 2 A is model_2."""
    if verdict == "tie":
        return "tie"
    a_is_model_1 = game == 1
    if verdict == "A":
        return "model_1" if a_is_model_1 else "model_2"
    return "model_2" if a_is_model_1 else "model_1"


@dataclass(frozen=True)
class PairOutcome:
    winner: Winner
    #: Both games named the same winner (or both a tie).
    consistent: bool


def combine_games(g1: Winner, g2: Winner) -> PairOutcome:
    consistent = g1 == g2
    return PairOutcome(winner=g1 if consistent else "tie", consistent=consistent)


@dataclass(frozen=True)
class PairTally:
    """Win/tie/loss counted for model_2 (the candidate) against model_1 (the baseline)."""

    n: int
    wins: int
    ties: int
    losses: int
    inconsistent: int
    #: Pairs with no readable verdict in a game: left out of ``n`` and the rates.
    excluded: int = 0

    @property
    def inconsistency_rate(self) -> float | None:
        return self.inconsistent / self.n if self.n else None

    @property
    def win_rate_adjusted(self) -> float | None:
        """FastChat's `win_rate_adjusted`: each tie counts as half a win."""
        return (self.wins + 0.5 * self.ties) / self.n if self.n else None


def tally(outcomes: Iterable[PairOutcome | None]) -> PairTally:
    """The counts over ``outcomes``; None stands for a pair without a readable verdict."""
    wins = ties = losses = inconsistent = n = excluded = 0
    for o in outcomes:
        if o is None:
            excluded += 1
            continue
        n += 1
        wins += o.winner == "model_2"
        losses += o.winner == "model_1"
        ties += o.winner == "tie"
        inconsistent += not o.consistent
    return PairTally(n=n, wins=wins, ties=ties, losses=losses, inconsistent=inconsistent, excluded=excluded)
