"""Reading ratings and verdicts out of judge text, as MT-Bench does, plus the 1-10 range check."""

from __future__ import annotations

import re

import pytest

from servecmp.judges.parsing import (
    FORCED_RATING_REGEX,
    FORCED_VERDICT_REGEX,
    Rating,
    parse_rating,
    parse_verdict,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Good answer. Rating: [[8]]", Rating(8.0, "ok", "8")),
        ("Rating: [[10]]", Rating(10.0, "ok", "10")),
        ("Rating: [[1]]", Rating(1.0, "ok", "1")),
        ("Rating: [[7.5]]", Rating(7.5, "ok", "7.5")),
        ("Rating: [[6.]]", Rating(6.0, "ok", "6.")),
        # the single-bracket fallback (FastChat's one_score_pattern_backup)
        ("Rating: [8]", Rating(8.0, "ok", "8")),
        # [[x]] wins over an earlier [y]
        ("See [3] for details. Rating: [[9]]", Rating(9.0, "ok", "9")),
        # without [[x]], the first [y] is taken, as FastChat does
        ("See [3] for details. Rating: [9]", Rating(3.0, "ok", "3")),
        # the first [[x]] counts
        ("Rating: [[4]] ... corrected: [[6]]", Rating(4.0, "ok", "4")),
        # out of MT-Bench's scale: kept as text, no score
        ("Rating: [[11]]", Rating(None, "out_of_range", "11")),
        ("Rating: [[0]]", Rating(None, "out_of_range", "0")),
        ("Rating: [[85]]", Rating(None, "out_of_range", "85")),
        ("Rating: [0.5]", Rating(None, "out_of_range", "0.5")),
        # nothing to read
        ("I would rate this an 8 out of 10.", Rating(None, "unparseable")),
        ("Rating: [[rating]]", Rating(None, "unparseable")),
        ("Rating: [[-3]]", Rating(None, "unparseable")),
        ("Rating: [[ 8 ]]", Rating(None, "unparseable")),
        ("", Rating(None, "unparseable")),
    ],
)
def test_parse_rating(text: str, expected: Rating) -> None:
    assert parse_rating(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Assistant A is better. [[A]]", "A"),
        ("[[B]]", "B"),
        ("It's a tie: [[C]]", "tie"),
        # FastChat checks [[A]] first, then [[B]], then [[C]]
        ("Not [[B]] but [[A]]", "A"),
        ("[[C]] or rather [[B]]", "B"),
        ("Assistant A is better.", None),
        ("[A]", None),
        ("[[D]]", None),
        ("", None),
    ],
)
def test_parse_verdict(text: str, expected: str | None) -> None:
    assert parse_verdict(text) == expected


@pytest.mark.parametrize("rating", range(1, 11))
def test_forced_rating_format_always_parses(rating: int) -> None:
    text = f"Short and relevant.\n\nRating: [[{rating}]]"
    assert re.fullmatch(FORCED_RATING_REGEX, text)
    assert parse_rating(text) == Rating(float(rating), "ok", str(rating))


def test_forced_formats_reject_what_would_not_parse() -> None:
    assert not re.fullmatch(FORCED_RATING_REGEX, "ok\n\nRating: [[11]]")
    assert not re.fullmatch(FORCED_RATING_REGEX, "see [3]\n\nRating: [[5]]")
    assert re.fullmatch(FORCED_VERDICT_REGEX, "A is better.\n\n[[A]]")
    assert not re.fullmatch(FORCED_VERDICT_REGEX, "\n\n[[D]]")
