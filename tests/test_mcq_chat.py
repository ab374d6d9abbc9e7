"""MCQ through /v1/chat/completions (servecmp.mcq.chat): the message layout, option scoring from the
first token's top_logprobs, and a run against a stub whose values are computed independently."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from servecmp.mcq.chat import chat_messages, option_logprobs_from_chat
from servecmp.mcq.records import McqItem
from servecmp.tasks.letter_format import LetterQuestion, render_prompt, subject_header
from tests.stub_capabilities import CHAT_LETTER_MASS, CapsState, CapsStub, letter_probs
from tests.test_mcq_cli import only_run_dir, records, servecmp, write_items

EX1 = LetterQuestion("What is 1 + 1?", ("1", "2"), 1)
EX2 = LetterQuestion("  Pick A.\n\nReally.  ", ("yes", "no"), 0)
TEST = LetterQuestion("Which is largest?", ("3", "9", "5"), 1)


def item(prompt: str) -> McqItem:
    return McqItem(item_id="x/1", task="mmlu", kind="letter", prompt=prompt, continuations=[" A", " B", " C"],
                   gold=1)


def test_exemplars_become_prior_turns() -> None:
    prompt = render_prompt(subject_header("high_school_math"), [EX1, EX2], TEST)
    assert chat_messages(item(prompt)) == [
        {"role": "user", "content": "The following are multiple choice questions (with answers) about high school "
                                    "math.\n\nWhat is 1 + 1?\nA. 1\nB. 2\nAnswer:"},
        {"role": "assistant", "content": "B"},
        # A blank line inside a question stays inside its turn.
        {"role": "user", "content": "Pick A.\n\nReally.\nA. yes\nB. no\nAnswer:"},
        {"role": "assistant", "content": "A"},
        {"role": "user", "content": "Which is largest?\nA. 3\nB. 9\nC. 5\nAnswer:"},
    ]
    # Joined back, the turns hold exactly the completions prompt's text (no letter lost or added).
    turns = chat_messages(item(prompt))
    rebuilt = "".join(m["content"] + (" " if m["role"] == "user" and i + 1 < len(turns) else "") +
                      ("\n\n" if m["role"] == "assistant" else "") for i, m in enumerate(turns))
    assert rebuilt == prompt


def test_zero_shot_and_headerless_prompts_are_one_user_turn() -> None:
    assert chat_messages(item(render_prompt(subject_header("anatomy"), [], TEST))) == [
        {"role": "user", "content": "The following are multiple choice questions (with answers) about anatomy.\n\n"
                                    "Which is largest?\nA. 3\nB. 9\nC. 5\nAnswer:"}]
    assert chat_messages(item(render_prompt("", [EX1], TEST))) == [
        {"role": "user", "content": "What is 1 + 1?\nA. 1\nB. 2\nAnswer:"}, {"role": "assistant", "content": "B"},
        {"role": "user", "content": "Which is largest?\nA. 3\nB. 9\nC. 5\nAnswer:"}]


def test_options_sum_both_spellings_and_missing_ones_are_censored() -> None:
    top = [("A", math.log(0.5)), (" A", math.log(0.1)), ("B", math.log(0.2)), ("The", math.log(0.05)),
           (" C", math.log(0.04))]
    lps, censored = option_logprobs_from_chat(top, [" A", " B", " C", " D"])
    assert lps == pytest.approx([math.log(0.6), math.log(0.2), math.log(0.04), math.log(0.04)], abs=1e-12)
    assert censored == 1  # D: neither "D" nor " D" in the top-k; bounded by the smallest top-k logprob


def test_a_chat_run_reads_the_letters_the_stub_put_there(tmp_path: Path) -> None:
    data = tmp_path / "items.jsonl"
    rows = write_items(data, 8)
    runs = tmp_path / "runs"
    with CapsStub(CapsState(model="base")) as b, CapsStub(CapsState(model="cand")) as c:
        proc = servecmp("mcq", "--baseline", b.url, "--candidate", c.url, "--task", f"jsonl:{data}",
                        "--runs-dir", str(runs), "--api", "chat", "--json")
        sent = [r["body"] for r in b.state.requests if r["path"] == "/v1/chat/completions" and "user" not in r["body"]]
    assert proc.returncode == 0, proc.stderr
    assert len(sent) == len(rows) and all((s["max_tokens"], s["logprobs"], s["top_logprobs"]) == (1, True, 20)
                                          for s in sent)
    run_dir = only_run_dir(runs)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert (manifest["api"], manifest["endpoint_apis"]) == ("chat", {"baseline": "chat", "candidate": "chat"})
    recs = records(run_dir)
    assert all(r["api"] == "chat" and r["censored_options"] == 0 and r["n_requests"] == 1 for r in recs)
    # Independently: each option's logprob is log(CHAT_LETTER_MASS * p_L) for the stub's letter
    # distribution keyed by the last user turn (the bare and spaced letters summed back together).
    base = [r for r in recs if r["endpoint"] == "baseline"]
    for body in sent:
        p = letter_probs(body["messages"][-1]["content"], "base")
        want = [math.log(CHAT_LETTER_MASS * p[letter]) for letter in "ABCD"]
        (match,) = [r for r in base if r["option_logprobs"] == pytest.approx(want, abs=1e-9)]
        assert match["chosen"] == max(range(4), key=lambda i, want=want: want[i])


def test_a_bad_api_is_one_line(tmp_path: Path) -> None:
    from tests.test_mcq_cli import assert_one_line_error

    proc = servecmp("mcq", "--baseline", "http://127.0.0.1:9/v1", "--candidate", "http://127.0.0.1:9/v1",
                    "--api", "grpc", "--runs-dir", str(tmp_path))
    assert_one_line_error(proc, "--api grpc: expected auto, completions or chat")
