"""Parsing of vLLM-style logprobs into option scores."""

from __future__ import annotations

import math
from types import SimpleNamespace

from servecmp.mcq.scoring import argmax, continuation_logprob


def test_continuation_logprob_sums_tokens_after_context() -> None:
    # "Question: x\nAnswer:" + " a rock" + one generated token.
    ctx = "Question: x\nAnswer:"
    text = ctx + " a rock"
    lp = SimpleNamespace(
        text_offset=[0, 9, 11, 19, 21, 26],
        tokens=["Question:", " x\n", "Answer:", " a", " rock", "!"],
        token_logprobs=[None, -1.0, -2.0, -0.25, -0.5, -3.0],
    )
    s = continuation_logprob(lp, len(ctx), len(text))
    assert (s.logprob, s.n_tokens) == (-0.75, 2)


def test_continuation_merged_into_context_is_minus_inf() -> None:
    lp = SimpleNamespace(text_offset=[0, 5], token_logprobs=[None, -1.0])
    s = continuation_logprob(lp, 7, 8)
    assert s.logprob == -math.inf and s.n_tokens == 0


def test_argmax_ties_go_to_lowest_index() -> None:
    assert argmax([-1.0, -0.5, -0.5]) == 1
    assert argmax([-math.inf, -math.inf]) == 0
