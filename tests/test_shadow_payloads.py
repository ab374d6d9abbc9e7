"""Reading OpenAI bodies and streams after the fact; teacher-forcing helpers (pure parts)."""

from __future__ import annotations

import gzip
import json
import math
import zlib

import pytest

from servecmp.shadow.mirror import decode_body
from servecmp.shadow.payloads import (
    Answer,
    PayloadError,
    is_event_stream,
    parse_answer,
    parse_request,
    prompt_of,
)
from servecmp.shadow.teacher_forcing import Position, TfError, by_text, parse_prompt_logprobs, response_topk


def _sse(*events: object) -> bytes:
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def test_chat_json_with_logprobs() -> None:
    body = {
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": "Hi there"},
            "logprobs": {"content": [
                {"token": "Hi", "logprob": -0.1, "top_logprobs": [{"token": "Hi", "logprob": -0.1},
                                                                   {"token": "Hello", "logprob": -2.5}]},
                {"token": " there", "logprob": -0.3, "top_logprobs": [{"token": " there", "logprob": -0.3}]},
            ]},
            "finish_reason": "stop",
        }]
    }
    a = parse_answer("chat", json.dumps(body).encode(), stream=False)
    assert a.text == "Hi there"
    assert a.tokens == ["Hi", " there"]
    assert a.token_logprobs == [-0.1, -0.3]
    assert a.top_logprobs == [{"Hi": -0.1, "Hello": -2.5}, {" there": -0.3}]
    assert a.finish_reason == "stop"


def test_chat_stream_reassembled() -> None:
    raw = _sse(
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {"choices": [{"index": 0, "delta": {"content": "Hel"}}]},
        {"choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "length"}]},
        {"choices": [], "usage": {"completion_tokens": 2}},
    )
    a = parse_answer("chat", raw, stream=True)
    assert (a.text, a.tokens, a.finish_reason) == ("Hello", None, "length")


def test_completion_stream_with_logprobs() -> None:
    raw = _sse(
        {"choices": [{"index": 0, "text": " a", "logprobs": {"tokens": [" a"], "token_logprobs": [-1.0],
                                                              "top_logprobs": [{" a": -1.0, " b": -1.5}]}}]},
        {"choices": [{"index": 0, "text": " b", "logprobs": {"tokens": [" b"], "token_logprobs": [-0.5],
                                                              "top_logprobs": [{" b": -0.5}]}}]},
    )
    a = parse_answer("completions", raw, stream=True)
    assert a.text == " a b"
    assert a.tokens == [" a", " b"]
    assert a.top_logprobs == [{" a": -1.0, " b": -1.5}, {" b": -0.5}]


def test_completion_without_top_logprobs_keeps_tokens_only() -> None:
    body = {"choices": [{"index": 0, "text": "x", "logprobs": {"tokens": ["x"], "token_logprobs": [-0.2],
                                                               "top_logprobs": None}}]}
    a = parse_answer("completions", json.dumps(body).encode(), stream=False)
    assert (a.tokens, a.top_logprobs) == (["x"], None)


@pytest.mark.parametrize(
    ("raw", "stream"),
    [
        (b"<html>oops", False),
        (b"[1, 2]", False),
        (b'{"error": {"message": "overloaded"}}', False),
        (b'{"choices": "nope"}', False),
        (b"data: {not json}\n\n", True),
        (b"nothing that looks like events", True),
        (b'{"choices": [{"index": 0, "message": {"content": 5}}]}', False),
    ],
)
def test_garbage_raises_payload_error(raw: bytes, stream: bool) -> None:
    with pytest.raises(PayloadError):
        parse_answer("chat", raw, stream=stream)


def test_request_helpers() -> None:
    assert parse_request(b"not json") is None
    assert parse_request(b"[1]") is None
    req = parse_request(b'{"messages": [{"role": "user", "content": "q"}]}')
    assert req is not None
    assert prompt_of("chat", req) == '[{"content":"q","role":"user"}]'
    assert prompt_of("completions", {"prompt": "plain"}) == "plain"
    assert is_event_stream("text/event-stream; charset=utf-8")
    assert not is_event_stream("application/json")
    assert not is_event_stream(None)


def test_decode_body() -> None:
    data = b'{"x": 1}'
    assert decode_body(data, None, 100) == data
    assert decode_body(gzip.compress(data), "gzip", 100) == data
    assert decode_body(zlib.compress(data), "deflate", 100) == data
    raw_deflate = zlib.compressobj(wbits=-15)
    assert decode_body(raw_deflate.compress(data) + raw_deflate.flush(), "deflate", 100) == data
    with pytest.raises(PayloadError):
        decode_body(gzip.compress(b"x" * 1000), "gzip", 100)  # decompression limit
    with pytest.raises(PayloadError):
        decode_body(data, "br", 100)


def test_parse_prompt_logprobs_takes_the_answer_tail() -> None:
    data = {"choices": [{"prompt_logprobs": [
        None,
        {"5": {"logprob": -1.0, "rank": 1, "decoded_token": "p"}},
        {"7": {"logprob": -0.2, "rank": 1, "decoded_token": " a"}, "8": {"logprob": -2.0, "rank": 2,
                                                                          "decoded_token": " b"}},
    ]}]}
    (pos,) = parse_prompt_logprobs(data, 2, 1)
    assert pos.logprobs == {7: -0.2, 8: -2.0}
    assert pos.decoded == {7: " a", 8: " b"}
    with pytest.raises(TfError, match="short"):
        parse_prompt_logprobs(data, 2, 2)
    with pytest.raises(TfError, match="garbage"):
        parse_prompt_logprobs({"choices": []}, 0, 1)


def test_by_text_merges_ids_with_the_same_text() -> None:
    pos = Position({1: math.log(0.2), 2: math.log(0.3), 3: math.log(0.1)}, {1: "a", 2: "a", 3: "b"})
    merged = by_text(pos)
    assert merged["a"] == pytest.approx(math.log(0.5))
    assert merged["b"] == pytest.approx(math.log(0.1))


def test_response_topk_alignment() -> None:
    a = Answer(text="Hi there", tokens=["Hi", " there", "<eos>"], token_logprobs=[-0.1, -0.3, -0.01],
               top_logprobs=[{"Hello": -2.0}, {" there": -0.3}, {"<eos>": -0.01}])
    got = response_topk(a, ["Hi", " there"])  # the end-of-sequence entry beyond the answer is ignored
    assert got == [{"Hello": -2.0, "Hi": -0.1}, {" there": -0.3}]  # chosen token added when missing
    assert response_topk(a, ["Hi", " here"]) is None  # tokens do not line up
    assert response_topk(Answer(text="Hi"), ["Hi"]) is None  # no logprobs
