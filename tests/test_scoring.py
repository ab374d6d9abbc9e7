"""Parsing of vLLM-style logprobs into option scores, from the decoded JSON the client returns;
on responses recorded from the embedded vLLM pair it reads exactly what the openai SDK's objects
held (servecmp read those before issue 8)."""

from __future__ import annotations

import copy
import json
import math
import pickle
from pathlib import Path
from typing import Any

import pytest

from servecmp.endpoints import JsonObject, parse_json
from servecmp.mcq.scoring import EchoScore, argmax, continuation_logprob, parse_topk, parse_usage

FIXTURES = Path(__file__).parent / "fixtures"
#: POST /v1/completions to vLLM 0.32 (smollm2-135m-instruct, bf16): the 2-shot astronomy MMLU prompt
#: of tests/test_serve_e2e.py, max_tokens=1, logprobs=20, temperature 0.
VLLM_TOP20 = (FIXTURES / "vllm_completion_top20.json").read_bytes()
VLLM_TOP20_HEAD = [(" C", -0.8841592073440552), (" A", -1.1341592073440552), (" B", -1.5091592073440552)]
VLLM_TOP20_USAGE = (74, 1)
#: The same server: prompt [CONTEXT + " Paris", CONTEXT + " the city of Lyon"], echo=True,
#: max_tokens=1, logprobs=1 (the request continuation tasks make).
VLLM_ECHO = (FIXTURES / "vllm_completion_echo.json").read_bytes()
VLLM_ECHO_CONTEXT_LEN = len("Question: What is the capital of France?\nAnswer:")
VLLM_ECHO_TEXT_LENS = [VLLM_ECHO_CONTEXT_LEN + len(" Paris"), VLLM_ECHO_CONTEXT_LEN + len(" the city of Lyon")]
VLLM_ECHO_SCORES = [EchoScore(-4.566418647766113, 1), EchoScore(-23.328591644763947, 4)]


def test_continuation_logprob_sums_tokens_after_context() -> None:
    # "Question: x\nAnswer:" + " a rock" + one generated token.
    ctx = "Question: x\nAnswer:"
    text = ctx + " a rock"
    lp = {
        "text_offset": [0, 9, 11, 19, 21, 26],
        "tokens": ["Question:", " x\n", "Answer:", " a", " rock", "!"],
        "token_logprobs": [None, -1.0, -2.0, -0.25, -0.5, -3.0],
    }
    s = continuation_logprob(lp, len(ctx), len(text))
    assert (s.logprob, s.n_tokens) == (-0.75, 2)


def test_continuation_merged_into_context_is_minus_inf() -> None:
    lp = {"text_offset": [0, 5], "token_logprobs": [None, -1.0]}
    s = continuation_logprob(lp, 7, 8)
    assert s.logprob == -math.inf and s.n_tokens == 0


def test_argmax_ties_go_to_lowest_index() -> None:
    assert argmax([-1.0, -0.5, -0.5]) == 1
    assert argmax([-math.inf, -math.inf]) == 0


# -- reading responses as decoded JSON (no SDK objects) ------------------------------------------------

def test_json_object_is_a_plain_dict_that_reads_as_attributes() -> None:
    obj = parse_json(b'{"a": {"b": [{"c": 1}]}, "items": 2}')
    assert type(obj) is JsonObject and issubclass(JsonObject, dict)
    assert obj.a.b[0].c == 1 and obj.missing is None  # absent reads as None, like an unset SDK field
    assert obj.items() and obj["items"] == 2  # dict methods win over keys of the same name
    assert json.loads(json.dumps(obj)) == obj
    assert copy.deepcopy(obj) == obj and pickle.loads(pickle.dumps(obj)) == obj
    with pytest.raises(AttributeError):
        obj._private  # noqa: B018


def _sdk_completion(raw: bytes) -> Any:
    """The openai SDK's Completion object for a response body, built as the SDK builds it from a
    response (`construct`, no validation: vLLM's echoed first token has a null logprob)."""
    from openai.types import Completion

    return Completion.construct(**json.loads(raw))


def _sdk_topk(raw: bytes) -> list[tuple[str, float]]:
    """What servecmp read before issue 8: the openai SDK's Completion object."""
    choice = _sdk_completion(raw).choices[0]
    assert choice.logprobs is not None and choice.logprobs.top_logprobs
    top = choice.logprobs.top_logprobs[0]
    return sorted(((str(t), float(lp)) for t, lp in top.items()), key=lambda kv: -kv[1])


def test_top20_parse_of_a_recorded_vllm_response_matches_the_sdk() -> None:
    resp = parse_json(VLLM_TOP20)
    topk = parse_topk(resp)
    assert topk == _sdk_topk(VLLM_TOP20)
    assert len(topk) == 20
    assert topk[:3] == VLLM_TOP20_HEAD
    assert parse_usage(resp) == VLLM_TOP20_USAGE
    assert [lp for _, lp in topk] == sorted((lp for _, lp in topk), reverse=True)


def test_echo_parse_of_a_recorded_vllm_response_matches_the_sdk() -> None:
    resp = parse_json(VLLM_ECHO)
    sdk = _sdk_completion(VLLM_ECHO)
    assert parse_usage(resp) == (sdk.usage.prompt_tokens, sdk.usage.completion_tokens) == (29, 2)
    for i, (choice, sdk_choice) in enumerate(zip(resp["choices"], sdk.choices, strict=True)):
        lp = sdk_choice.logprobs
        assert lp is not None
        ours = continuation_logprob(choice["logprobs"], VLLM_ECHO_CONTEXT_LEN, VLLM_ECHO_TEXT_LENS[i])
        theirs = continuation_logprob(
            {"text_offset": lp.text_offset, "token_logprobs": lp.token_logprobs},
            VLLM_ECHO_CONTEXT_LEN, VLLM_ECHO_TEXT_LENS[i],
        )
        assert ours == theirs
    assert [
        continuation_logprob(c["logprobs"], VLLM_ECHO_CONTEXT_LEN, VLLM_ECHO_TEXT_LENS[i])
        for i, c in enumerate(resp["choices"])
    ] == VLLM_ECHO_SCORES


def test_missing_logprobs_and_usage_read_as_empty() -> None:
    resp = parse_json(b'{"choices": [{"index": 0, "text": " A", "logprobs": null}]}')
    assert parse_topk(resp) == [] and parse_usage(resp) == (0, 0)
