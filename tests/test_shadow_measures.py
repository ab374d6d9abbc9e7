"""Pure divergence measures of `servecmp.shadow.measures`, against hand-computed values."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servecmp.shadow.measures import (
    first_difference,
    levenshtein,
    regex_tokens,
    teacher_forced_stats,
    text_divergence,
)

L = math.log


def _reference_levenshtein(a: list[str], b: list[str]) -> int:
    # The textbook O(n*m) table, cell by cell: an independent implementation to check against.
    d = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) + 1):
        d[i][0] = i
    for j in range(len(b) + 1):
        d[0][j] = j
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
    return d[len(a)][len(b)]


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (list("kitten"), list("sitting"), 3),  # k→s, e→i, +g
        (["a", "b", "c"], ["a", "c"], 1),
        ([], ["x", "y", "z"], 3),
        (["x"], [], 1),
        ([], [], 0),
        (["same", "tokens"], ["same", "tokens"], 0),
        (["a", "b"], ["b", "a"], 2),
    ],
)
def test_levenshtein_hand_values(a: list[str], b: list[str], expected: int) -> None:
    assert levenshtein(a, b) == expected
    assert levenshtein(b, a) == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from("abcd"), max_size=12), st.lists(st.sampled_from("abcd"), max_size=12))
def test_levenshtein_matches_textbook_table(a: list[str], b: list[str]) -> None:
    assert levenshtein(a, b) == _reference_levenshtein(a, b)


def test_first_difference() -> None:
    assert first_difference(["a", "b", "c"], ["a", "x", "c"]) == 1
    assert first_difference(["a", "b"], ["a", "b", "c"]) == 2  # a prefix: first position one lacks
    assert first_difference(["a"], ["a"]) is None
    assert first_difference([], ["a"]) == 0


def test_regex_tokens_split_words_and_punctuation() -> None:
    assert regex_tokens("Hello, world!\n  It's 42.") == ["Hello", ",", "world", "!", "It", "'", "s", "42", "."]


def test_text_divergence_regex_tokens() -> None:
    d = text_divergence("the cat sat", "the dog sat down")
    assert d.exact_match is False
    assert d.tokenisation == "regex"
    assert d.first_diff == 1
    assert d.edit_distance == pytest.approx(2 / 4)  # cat→dog, +down; longer list has 4 tokens
    assert d.length_ratio == pytest.approx(4 / 3)
    assert (d.n_tokens_primary, d.n_tokens_other) == (3, 4)


def test_text_divergence_uses_logprobs_tokens_only_when_both_have_them() -> None:
    d = text_divergence("ab", "ac", ["a", "b"], ["a", "c"])
    assert d.tokenisation == "logprobs"
    assert (d.first_diff, d.edit_distance) == (1, 0.5)
    # One side without logprobs tokens: both sides fall back to the regex tokens ("ab" vs "ac").
    d2 = text_divergence("ab", "ac", ["a", "b"], None)
    assert d2.tokenisation == "regex"
    assert (d2.first_diff, d2.edit_distance, d2.n_tokens_primary) == (0, 1.0, 1)


def test_text_divergence_spacing_only_difference() -> None:
    d = text_divergence("a  b", "a b")
    assert d.exact_match is False  # exact match is on the text
    assert (d.first_diff, d.edit_distance) == (None, 0.0)  # regex tokens ignore whitespace


def test_text_divergence_empty_answers() -> None:
    d = text_divergence("", "")
    assert (d.exact_match, d.edit_distance, d.length_ratio, d.first_diff) == (True, 0.0, None, None)


def test_teacher_forced_kl_hand_value_partial_overlap() -> None:
    p = {"a": L(0.5), "b": L(0.3)}
    q = {"a": L(0.4), "c": L(0.4)}
    s = teacher_forced_stats([p], [q], ["a"])
    assert s is not None
    # S = {a}; rest buckets 1 - 0.5 and 1 - 0.4.
    expected = 0.5 * L(0.5 / 0.4) + 0.5 * L(0.5 / 0.6)
    assert s.kl_mean == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(0.020410997, abs=1e-9)
    assert s.top1_agree == 1.0  # P's top is a; Q ties a and c at 0.4: the tied set contains a
    assert s.dp_mean == pytest.approx(0.4 - 0.5)


def test_teacher_forced_kl_identical_and_disjoint() -> None:
    p = {"a": L(0.6), "b": L(0.3)}
    same = teacher_forced_stats([p], [dict(p)], ["a"])
    assert same is not None and (same.kl_mean, same.top1_agree, same.dp_mean) == (0.0, 1.0, 0.0)
    # Only the chosen token is shared: {a} + one rest bucket.
    s = teacher_forced_stats([{"a": L(0.9)}], [{"a": L(0.9), "b": L(0.05)}], ["a"])
    assert s is not None and s.kl_mean == pytest.approx(0.0, abs=1e-12)


def test_teacher_forced_stats_hand_values() -> None:
    primary = [{"x": L(0.6), "y": L(0.3)}, {"y": L(0.7), "x": L(0.2)}]
    other = [{"x": L(0.5), "y": L(0.4)}, {"x": L(0.6), "y": L(0.3)}]
    chosen = ["x", "y"]
    s = teacher_forced_stats(primary, other, chosen)
    assert s is not None
    # Both positions share {x, y}; both rest buckets hold 0.1 on each side, so they add nothing.
    kl1 = 0.6 * L(0.6 / 0.5) + 0.3 * L(0.3 / 0.4)
    kl2 = 0.7 * L(0.7 / 0.3) + 0.2 * L(0.2 / 0.6)
    assert s.n_positions == 2
    assert s.kl_mean == pytest.approx((kl1 + kl2) / 2)
    assert s.kl_max == pytest.approx(kl2)
    assert s.top1_agree == 0.5  # x/x agree, y/x do not
    assert s.dp_mean == pytest.approx(((0.5 - 0.6) + (0.3 - 0.7)) / 2)  # -0.25
    assert s.dp_max_abs == pytest.approx(0.4)
    assert s.dp_rms == pytest.approx(math.sqrt((0.01 + 0.16) / 2))


def test_teacher_forced_stats_edge_cases() -> None:
    assert teacher_forced_stats([], [], []) is None
    with pytest.raises(ValueError, match="position counts"):
        teacher_forced_stats([{"a": 0.0}], [], ["a"])
    with pytest.raises(ValueError, match="missing"):
        teacher_forced_stats([{"a": 0.0}], [{"b": 0.0}], ["a"])
