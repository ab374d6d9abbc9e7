"""Reading a rating or a verdict out of a judge's free text, exactly as MT-Bench (FastChat) does.

FastChat's rules (fastchat/llm_judge/common.py): a single-answer rating is the first `[[x]]`
(`one_score_pattern`), else the first `[x]` (`one_score_pattern_backup`); a pairwise verdict is
`[[A]]`, else `[[B]]`, else `[[C]]` (a tie), checked in that order. We add one rule FastChat lacks:
a rating outside MT-Bench's 1-10 scale is not a score. Anything we cannot read is reported as such
(status + the raw text), never turned into a number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

# The same patterns as FastChat's, written as raw strings.
ONE_SCORE_PATTERN = re.compile(r"\[\[(\d+\.?\d*)\]\]")
ONE_SCORE_PATTERN_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")

RATING_MIN = 1.0
RATING_MAX = 10.0

RatingStatus = Literal["ok", "unparseable", "out_of_range"]
Verdict = Literal["A", "B", "tie"]


@dataclass(frozen=True)
class Rating:
    """A parsed single-answer judgment: `score` is set only when `status == "ok"`."""

    score: float | None
    status: RatingStatus
    #: The number as the judge wrote it (also kept when it is out of range).
    raw: str | None = None


def parse_rating(judgment: str) -> Rating:
    match = ONE_SCORE_PATTERN.search(judgment) or ONE_SCORE_PATTERN_BACKUP.search(judgment)
    if match is None:
        return Rating(score=None, status="unparseable")
    raw = match.group(1)
    value = float(raw)
    if not RATING_MIN <= value <= RATING_MAX:
        return Rating(score=None, status="out_of_range", raw=raw)
    return Rating(score=value, status="ok", raw=raw)


def parse_verdict(judgment: str) -> Verdict | None:
    """ "A", "B" or "tie"; None when the judgment names none of them."""
    if "[[A]]" in judgment:
        return "A"
    if "[[B]]" in judgment:
        return "B"
    if "[[C]]" in judgment:
        return "tie"
    return None


#: Regexes a vLLM judge can be forced to follow (structured outputs), so a small open model always
#: produces a parseable answer: a short explanation on one line, then the rating or verdict.
FORCED_RATING_REGEX = r"[^\[\]\n]{0,160}\n\nRating: \[\[([1-9]|10)\]\]"
FORCED_VERDICT_REGEX = r"[^\[\]\n]{0,160}\n\n\[\[[ABC]\]\]"
#: Upper bound on the tokens the forced formats need (every character may be its own token).
FORCED_MAX_TOKENS = 200
