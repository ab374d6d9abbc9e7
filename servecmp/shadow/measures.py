"""Divergence of one request pair: the answer texts (exact match, first differing token, edit
distance, length ratio) and, teacher-forced, the next-token distributions along the primary's answer
(KL from top-k, top-token agreement, Δp of the chosen token, as llama.cpp's KL-divergence report).

Pure functions only. KL from top-k lists is `servecmp.metrics.kl.topk_kl_item` (the project's one
estimator: shared tokens + one rest bucket, a lower bound of the true KL). Token lists for the text
measures come from the answers' logprobs tokens when both answers carry them (the tokenizer's own
pieces), else from `regex_tokens` (words and single punctuation marks); `TextDivergence.tokenisation`
records which.
"""

from __future__ import annotations

import math
import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from servecmp.metrics.kl import topk_kl_item

#: Words (letters, digits, underscore) and single non-space symbols; whitespace is dropped, so two
#: answers that differ only in spacing or line breaks have equal token lists (but no exact match).
TOKEN_RE = re.compile(r"\w+|[^\w\s]")

TOKENISATION_LOGPROBS = "logprobs"
TOKENISATION_REGEX = "regex"


def regex_tokens(text: str) -> list[str]:
    return TOKEN_RE.findall(text)


def levenshtein(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """Edit distance (insertions, deletions, substitutions, each cost 1) between two token lists.

    Row-by-row dynamic programme with numpy: the substitution/deletion step is vectorised, and the
    insertion step (a running dependency along the row) becomes a cumulative minimum of
    ``row[j] - j``, so a 1000 x 1000 comparison costs ~1000 numpy calls instead of 10^6 Python steps.
    """
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return len(a)
    ids: dict[Hashable, int] = {}
    va = np.fromiter((ids.setdefault(t, len(ids)) for t in a), dtype=np.int64, count=len(a))
    vb = np.fromiter((ids.setdefault(t, len(ids)) for t in b), dtype=np.int64, count=len(b))
    cols = np.arange(len(vb) + 1, dtype=np.int64)
    prev = cols.copy()
    for i, tok in enumerate(va, start=1):
        cur = np.empty_like(prev)
        cur[0] = i
        # Best of deletion (prev[j] + 1) and substitution/match (prev[j-1] + cost).
        cur[1:] = np.minimum(prev[1:] + 1, prev[:-1] + (vb != tok))
        # Insertion: cur[j] = min_{i<=j} cur[i] + (j - i)  ==  j + cummin(cur - j).
        cur = np.minimum.accumulate(cur - cols) + cols
        prev = cur
    return int(prev[-1])


def first_difference(a: Sequence[Hashable], b: Sequence[Hashable]) -> int | None:
    """Index of the first position where the token lists differ; ``None`` if they are equal.

    When one list is a prefix of the other, the answer is the shorter length (the first position
    one of them has and the other lacks).
    """
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


@dataclass(frozen=True)
class TextDivergence:
    exact_match: bool
    #: First differing token index (see `first_difference`); ``None`` when the token lists agree.
    first_diff: int | None
    #: Levenshtein distance over tokens divided by the longer length; 0 when both are empty.
    edit_distance: float
    #: Tokens of the other answer / tokens of the primary's; ``None`` when the primary's is empty.
    length_ratio: float | None
    n_tokens_primary: int
    n_tokens_other: int
    tokenisation: str


def text_divergence(
    primary: str,
    other: str,
    primary_tokens: Sequence[str] | None = None,
    other_tokens: Sequence[str] | None = None,
) -> TextDivergence:
    """Compare two answers. Logprobs tokens are used only when both sides have them, so both lists
    always come from the same tokenisation."""
    if primary_tokens is not None and other_tokens is not None:
        ta, tb, how = list(primary_tokens), list(other_tokens), TOKENISATION_LOGPROBS
    else:
        ta, tb, how = regex_tokens(primary), regex_tokens(other), TOKENISATION_REGEX
    longest = max(len(ta), len(tb))
    return TextDivergence(
        exact_match=primary == other,
        first_diff=first_difference(ta, tb),
        edit_distance=levenshtein(ta, tb) / longest if longest else 0.0,
        length_ratio=ratio(len(tb), len(ta)),
        n_tokens_primary=len(ta),
        n_tokens_other=len(tb),
        tokenisation=how,
    )


def _argmax_keys(lps: Mapping[Any, float]) -> set[Any]:
    best = max(lps.values())
    return {t for t, v in lps.items() if v == best}


@dataclass(frozen=True)
class TeacherForcedStats:
    """Per-request summary over the answer positions of the primary's answer."""

    n_positions: int
    kl_mean: float
    kl_max: float
    #: Share of positions where both distributions put the same token on top (ties count as
    #: agreement when the tied sets intersect).
    top1_agree: float
    #: Mean of q(chosen) - p(chosen): negative when the other endpoint finds the answer less likely.
    dp_mean: float
    dp_max_abs: float
    dp_rms: float


def teacher_forced_stats(
    primary: Sequence[Mapping[str, float]],
    other: Sequence[Mapping[str, float]],
    chosen: Sequence[str],
) -> TeacherForcedStats | None:
    """Summarise the primary's (P) and the other endpoint's (Q) top-k logprobs at each position of
    the primary's answer, whose token at each position is ``chosen[i]`` (present in both maps).
    Tokens are keys of any kind that identify them on both sides (token text, or token id as text).
    KL per position is `servecmp.metrics.kl.topk_kl_item`'s coarse-grained top-k lower bound.

    Returns ``None`` for an empty answer. ValueError when the lengths differ or a chosen token
    is missing from a map, because then the positions do not describe the same answer.
    """
    n = len(chosen)
    if len(primary) != n or len(other) != n:
        raise ValueError(f"position counts differ: primary {len(primary)}, other {len(other)}, answer {n}")
    if n == 0:
        return None
    kls: list[float] = []
    agree = 0
    dps: list[float] = []
    for p, q, tok in zip(primary, other, chosen, strict=True):
        if tok not in p or tok not in q:
            # No token text in the message: it is answer text, which must not reach logs.
            raise ValueError(f"chosen token at position {len(kls)} missing from a distribution")
        kls.append(topk_kl_item(p, q).kl_hat)
        agree += bool(_argmax_keys(p) & _argmax_keys(q))
        dps.append(math.exp(q[tok]) - math.exp(p[tok]))
    dp = np.asarray(dps)
    return TeacherForcedStats(
        n_positions=n,
        kl_mean=float(np.mean(kls)),
        kl_max=float(np.max(kls)),
        top1_agree=agree / n,
        dp_mean=float(np.mean(dp)),
        dp_max_abs=float(np.max(np.abs(dp))),
        dp_rms=float(np.sqrt(np.mean(dp * dp))),
    )
