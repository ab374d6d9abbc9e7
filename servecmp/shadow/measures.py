"""Divergence of one request pair: the answer texts (exact match, first differing token, edit
distance, length ratio) and, teacher-forced, the next-token distributions along the primary's answer
(KL from top-k, top-token agreement, Δp of the chosen token, as llama.cpp's KL-divergence report).

Pure functions only. Per position two top-k KL figures are kept: `servecmp.metrics.kl.topk_kl_item`'s
lower bound (shared tokens + one rest bucket; the per-request ``kl_mean``/``kl_max``) and
`servecmp.metrics.kl.topk_kl_tight_item`'s estimate, both ways and JS (the per-request
``kl_tight_mean``/``kl_cb_mean``/``js_mean``, and the per-token values `TokenStats` keeps for
llama.cpp's block, `servecmp.metrics.kl_report`). Token lists for the text
measures come from the answers' logprobs tokens when both answers carry them (the tokenizer's own
pieces), else from `regex_tokens` (words and single punctuation marks); `TextDivergence.tokenisation`
records which.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from servecmp.metrics.kl import topk_kl_item, topk_kl_tight_item
from servecmp.metrics.stats import FloatArray

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


#: Layout of `TokenStats.pack`'s bytes (the store's ``tf_token_stats`` column); see `TokenStats.pack`.
TOKEN_STATS_LAYOUT = 1
_LAYOUT_HEADER = struct.Struct("<I")
#: Bytes per position in layout 1: three float32 and one uint8.
_BYTES_PER_POSITION = 13


@dataclass(frozen=True)
class TokenStats:
    """Per teacher-forced position, the inputs of llama.cpp's KL-divergence block (`kl_report`):
    KL(primary ‖ other) (the tight top-k estimate, nats), the probability each side gives the
    primary's answer token, and whether their most likely tokens agree (the `top1_agree` rule)."""

    kl: FloatArray
    p_primary: FloatArray
    p_other: FloatArray
    same_top: npt.NDArray[np.bool_]

    def pack(self) -> bytes:
        """Layout 1: a little-endian uint32 ``1``; then, for n positions, n float32 KL, n float32
        ``p_primary``, n float32 Δp = ``p_other − p_primary``, n uint8 same-top (0/1); all
        little-endian. Δp is stored rather than ``p_other`` so a small Δp keeps float32's relative
        precision (``p_other − p_primary`` in float32 would lose it near p = 1). 13 bytes a token."""
        dp = self.p_other - self.p_primary
        return b"".join((_LAYOUT_HEADER.pack(TOKEN_STATS_LAYOUT), self.kl.astype("<f4").tobytes(),
                         self.p_primary.astype("<f4").tobytes(), dp.astype("<f4").tobytes(),
                         self.same_top.astype(np.uint8).tobytes()))

    @classmethod
    def unpack(cls, blob: bytes) -> TokenStats:
        """The inverse of `pack` (float32 values widened to float64; ``p_other`` rebuilt as
        ``p_primary + Δp``). ValueError for bytes of another layout or length."""
        data = bytes(blob)  # PostgreSQL drivers may hand back a memoryview
        if len(data) < _LAYOUT_HEADER.size or _LAYOUT_HEADER.unpack_from(data)[0] != TOKEN_STATS_LAYOUT:
            raise ValueError("per-token statistics of an unknown layout")
        n, extra = divmod(len(data) - _LAYOUT_HEADER.size, _BYTES_PER_POSITION)
        if extra:
            raise ValueError(f"per-token statistics of {len(data)} bytes: not a whole number of positions")
        off = _LAYOUT_HEADER.size

        def f32(i: int) -> FloatArray:
            return np.frombuffer(data, dtype="<f4", count=n, offset=off + 4 * n * i).astype(np.float64)

        kl, p_primary, dp = f32(0), f32(1), f32(2)
        same = np.frombuffer(data, dtype=np.uint8, count=n, offset=off + 12 * n).astype(bool)
        return cls(kl=kl, p_primary=p_primary, p_other=p_primary + dp, same_top=same)


@dataclass(frozen=True)
class TeacherForcedStats:
    """Per-request summary over the answer positions of the primary's answer."""

    n_positions: int
    #: Mean and largest per-position KL(primary ‖ other), `topk_kl_item`'s lower bound.
    kl_mean: float
    kl_max: float
    #: Share of positions where both distributions put the same token on top (ties count as
    #: agreement when the tied sets intersect).
    top1_agree: float
    #: Mean of q(chosen) - p(chosen): negative when the other endpoint finds the answer less likely.
    dp_mean: float
    dp_max_abs: float
    dp_rms: float
    #: Means over the positions of `topk_kl_tight_item`'s estimates: KL(primary ‖ other),
    #: KL(other ‖ primary) and Jensen-Shannon, nats.
    kl_tight_mean: float
    kl_cb_mean: float
    js_mean: float
    #: The per-position values llama.cpp's block pools across requests.
    tokens: TokenStats


def teacher_forced_stats(
    primary: Sequence[Mapping[str, float]],
    other: Sequence[Mapping[str, float]],
    chosen: Sequence[str],
) -> TeacherForcedStats | None:
    """Summarise the primary's (P) and the other endpoint's (Q) top-k logprobs at each position of
    the primary's answer, whose token at each position is ``chosen[i]`` (present in both maps).
    Tokens are keys of any kind that identify them on both sides (token text, or token id as text).
    KL per position: `servecmp.metrics.kl.topk_kl_item`'s coarse-grained top-k lower bound, and
    `topk_kl_tight_item`'s estimate (both directions and JS). Both probabilities of the chosen
    token are read from the lists, not imputed: teacher forcing lists the actual token on both sides.

    Returns ``None`` for an empty answer. ValueError when the lengths differ or a chosen token
    is missing from a map, because then the positions do not describe the same answer.
    """
    n = len(chosen)
    if len(primary) != n or len(other) != n:
        raise ValueError(f"position counts differ: primary {len(primary)}, other {len(other)}, answer {n}")
    if n == 0:
        return None
    kls = np.empty(n)
    tight = np.empty((3, n))  # KL(P ‖ Q), KL(Q ‖ P), JS
    p_tok, q_tok = np.empty(n), np.empty(n)
    same = np.empty(n, dtype=bool)
    for i, (p, q, tok) in enumerate(zip(primary, other, chosen, strict=True)):
        if tok not in p or tok not in q:
            # No token text in the message: it is answer text, which must not reach logs.
            raise ValueError(f"chosen token at position {i} missing from a distribution")
        kls[i] = topk_kl_item(p, q).kl_hat
        t = topk_kl_tight_item(p, q)
        tight[0, i], tight[1, i], tight[2, i] = t.kl_bc, t.kl_cb, t.js
        same[i] = bool(_argmax_keys(p) & _argmax_keys(q))
        p_tok[i], q_tok[i] = math.exp(p[tok]), math.exp(q[tok])
    dp = q_tok - p_tok
    return TeacherForcedStats(
        n_positions=n,
        kl_mean=float(np.mean(kls)),
        kl_max=float(np.max(kls)),
        top1_agree=int(np.count_nonzero(same)) / n,
        dp_mean=float(np.mean(dp)),
        dp_max_abs=float(np.max(np.abs(dp))),
        dp_rms=float(np.sqrt(np.mean(dp * dp))),
        kl_tight_mean=float(np.mean(tight[0])),
        kl_cb_mean=float(np.mean(tight[1])),
        js_mean=float(np.mean(tight[2])),
        tokens=TokenStats(kl=tight[0].copy(), p_primary=p_tok, p_other=q_tok, same_top=same),
    )
