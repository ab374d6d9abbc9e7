"""The capability probe (servecmp.capabilities) against a stub missing each capability in turn, the
API choice it leads to, and what a run records and says about it."""

from __future__ import annotations

import asyncio
import html
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from servecmp.capabilities import (
    PATH_GAP_WARN_NATS,
    PROBE_USER,
    EndpointCapabilities,
    choose_api,
    probe_capabilities,
)
from servecmp.endpoints import EndpointClient, EndpointSpec
from servecmp.errors import UserError
from tests.stub_capabilities import CapsState, CapsStub
from tests.stub_openai import LETTERS, next_token_logprobs
from tests.test_mcq_cli import only_run_dir, records, servecmp, write_items

PROMPT = "Question: what is 2 + 2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:"


def probe(state: CapsState, k: int = 20) -> EndpointCapabilities:
    async def go() -> EndpointCapabilities:
        with CapsStub(state) as stub:
            async with EndpointClient(EndpointSpec(base_url=stub.url, model=state.model, max_retries=0)) as c:
                return await probe_capabilities(c, k, prompt=PROMPT, continuations=LETTERS)

    return asyncio.run(go())


def letters_in_top(k: int) -> int:
    """How many option tokens the stub's top-k holds at PROMPT's answer position (independently)."""
    return sum(1 for t in next_token_logprobs(PROMPT, "caps-model", k) if t in LETTERS)


def test_a_full_endpoint_supports_everything_and_its_paths_agree() -> None:
    caps = probe(CapsState())
    assert (caps.completions, caps.chat, caps.chat_logprobs, caps.echo, caps.tokenize) == (True,) * 5
    assert caps.top_k == 20 and caps.notes == []
    # The stub's echo is computed from the same distribution as its top-k: the gap is exactly 0.
    assert caps.path_gap_nats == 0.0 and caps.paths_agree is True
    assert caps.path_gap_options == letters_in_top(20)
    assert caps.letter_apis == ["completions", "chat"]
    assert caps.describe() == ("completions, chat logprobs, top-k 20, echo, tokenize, top-k vs echo agree "
                               f"(max gap 0 nats over {letters_in_top(20)} options)")


@pytest.mark.parametrize(("state", "expected", "note"), [
    (CapsState(completions=False), dict(completions=False, echo=False, top_k=20), "completions: HTTP 404"),
    (CapsState(completions_logprobs=False), dict(completions=False, echo=False, top_k=20),
     "completions answered without logprobs"),
    (CapsState(chat=False), dict(chat=False, chat_logprobs=False), "chat: HTTP 404"),
    (CapsState(chat_logprobs=False), dict(chat_logprobs=False), "chat answered without top_logprobs"),
    (CapsState(echo=False), dict(echo=False, path_gap_nats=None), "echo: HTTP 400: "),
    (CapsState(tokenize=False), dict(tokenize=False), None),
    (CapsState(max_top_k=12), dict(top_k=12, top_k_max=12), "top-k capped at 12 (asked 20)"),
])
def test_each_missing_capability_is_recorded(state: CapsState, expected: dict[str, Any], note: str | None) -> None:
    caps = probe(state)
    full = EndpointCapabilities(completions=True, chat=True, chat_logprobs=True, top_k=20, echo=True, tokenize=True,
                                path_gap_nats=0.0, path_gap_options=letters_in_top(20)).model_dump()
    got = caps.model_dump()
    want = {**full, **expected}
    if not want["completions"] or not want["echo"]:
        want.update(path_gap_nats=None, path_gap_options=0)
    if want["top_k"] == 12:
        assert letters_in_top(12) == 1  # one option in the capped top-k: the gap is still measured
        want["path_gap_options"] = 1
    assert {k: v for k, v in got.items() if k != "notes"} == {k: v for k, v in want.items() if k != "notes"}
    if note is None:
        assert caps.notes == []
    else:
        assert any(n.startswith(note) for n in caps.notes), caps.notes


def test_every_probe_request_is_marked() -> None:
    state = CapsState()
    probe(state)
    sent = [(r["path"], r["body"].get("user")) for r in state.requests]
    # top-k, chat, one echo per option (llama-cpp-python takes no prompt lists), top-k on the prompt, tokenize.
    assert sent == [("/v1/completions", PROBE_USER), ("/v1/chat/completions", PROBE_USER),
                    *[("/v1/completions", PROBE_USER)] * len(LETTERS), ("/v1/completions", PROBE_USER),
                    ("/tokenize", PROBE_USER)]


@pytest.mark.parametrize(("shift", "agree"), [(0.5, False), (PATH_GAP_WARN_NATS / 2, True)])
def test_disagreeing_logprob_paths_are_measured(shift: float, agree: bool) -> None:
    caps = probe(CapsState(echo_shift=shift))
    assert caps.path_gap_nats == pytest.approx(shift, abs=1e-12)
    assert caps.paths_agree is agree
    assert ("DISAGREE" in caps.describe()) is (not agree)


def _caps(**kw: Any) -> EndpointCapabilities:
    base: dict[str, Any] = dict(completions=True, chat=True, chat_logprobs=True, echo=True, top_k=20)
    return EndpointCapabilities(**{**base, **kw})


def test_choose_api_takes_the_cheapest_shape_both_support() -> None:
    full, chat_only = _caps(), _caps(completions=False, echo=False, notes=["completions: HTTP 404: Not Found"])
    assert choose_api({"b": full, "c": full}, "auto", letter=True) == {"b": "completions", "c": "completions"}
    assert choose_api({"b": chat_only, "c": chat_only}, "auto", letter=True) == {"b": "chat", "c": "chat"}
    # The same kind for both whenever one exists, even if it is not the cheaper one for the baseline.
    assert choose_api({"b": full, "c": chat_only}, "auto", letter=True) == {"b": "chat", "c": "chat"}
    # Nothing common: each its own, and the run says so (capability_lines).
    completions_only = _caps(chat=False, chat_logprobs=False)
    assert choose_api({"b": completions_only, "c": chat_only}, "auto", letter=True) == {"b": "completions",
                                                                                       "c": "chat"}
    assert choose_api({"b": full, "c": chat_only}, "chat", letter=True) == {"b": "chat", "c": "chat"}
    with pytest.raises(UserError, match=r"^--api completions: the candidate endpoint has no /v1/completions with "
                                        r"top-k logprobs \(completions: HTTP 404: Not Found\)$"):
        choose_api({"b": full, "c": chat_only}, "completions", letter=True, labels={"c": "candidate"})
    with pytest.raises(UserError, match="use --api completions"):
        choose_api({"b": full, "c": full}, "chat", letter=False)
    with pytest.raises(UserError, match="^c endpoint cannot score a continuation task"):
        choose_api({"b": full, "c": chat_only}, "auto", letter=False)
    with pytest.raises(UserError, match="returns no logprobs through"):
        choose_api({"b": full, "c": _caps(completions=False, chat_logprobs=False)}, "auto", letter=True)


def test_a_run_records_capabilities_and_says_the_apis_differ(tmp_path: Path) -> None:
    """A chat-only candidate against a completions-only baseline under --api auto: each is asked
    through what it has, the manifest and the records say which, and the run warns that the kinds differ."""
    data = tmp_path / "items.jsonl"
    write_items(data, 6)
    runs = tmp_path / "runs"
    with (CapsStub(CapsState(model="base", chat=False)) as b,
          CapsStub(CapsState(model="cand", completions=False)) as c):
        proc = servecmp("mcq", "--baseline", b.url, "--candidate", c.url, "--task", f"jsonl:{data}",
                        "--runs-dir", str(runs), "--json")
    assert proc.returncode == 0, proc.stderr
    err = " ".join(proc.stderr.split())
    assert "baseline: asked through completions; supports completions, no chat, top-k 20, echo, tokenize" in err
    assert "candidate: asked through chat; supports no completions, chat logprobs, top-k 20, no echo, tokenize" in err
    assert "warning: the endpoints are NOT asked through the same API (baseline completions, candidate chat)" in err
    run_dir = only_run_dir(runs)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["api"] == "auto"
    assert manifest["endpoint_apis"] == {"baseline": "completions", "candidate": "chat"}
    assert manifest["capabilities"]["candidate"]["completions"] is False
    assert manifest["capabilities"]["baseline"]["path_gap_nats"] == 0.0
    assert Counter((r["endpoint"], r["api"]) for r in records(run_dir)) == {("baseline", "completions"): 6,
                                                                           ("candidate", "chat"): 6}
    # The report says so too: the summary, the terminal report of the stored run and its HTML page.
    summary = json.loads(proc.stdout)
    assert summary["run"]["apis"] == {"baseline": ["completions"], "candidate": ["chat"]}
    mismatch = ("the endpoints were asked through different APIs (baseline completions, candidate chat): a chat "
                "template changes the prompt, so this comparison mixes the API with the model")
    page = tmp_path / "report.html"
    report = servecmp("report", str(run_dir), "--html", str(page))
    assert report.returncode == 0, report.stderr
    assert f"warning: {mismatch}" in " ".join(report.stdout.split())
    assert html.escape(mismatch) in page.read_text()


def test_disagreeing_paths_are_never_mixed(tmp_path: Path) -> None:
    """An endpoint whose echo disagrees with its top-k: options outside the top-k are bounded by the
    smallest top-k logprob and counted, and no item is scored through echo."""
    data = tmp_path / "items.jsonl"
    write_items(data, 6)
    runs = tmp_path / "runs"
    with CapsStub(CapsState(model="base", echo_shift=0.3)) as b, CapsStub(CapsState(model="cand")) as c:
        proc = servecmp("mcq", "--baseline", b.url, "--candidate", c.url, "--task", f"jsonl:{data}",
                        "--runs-dir", str(runs), "--top-k", "2", "--json")
        item_echoes = [r for r in b.state.requests if r["body"].get("echo") and "user" not in r["body"]]
        cand_echoes = [r for r in c.state.requests if r["body"].get("echo") and "user" not in r["body"]]
    assert proc.returncode == 0, proc.stderr
    assert "warning: baseline's top-k and echoed prompt logprobs differ by up to 0.3 nats" in " ".join(
        proc.stderr.split())
    assert item_echoes == []
    recs = records(only_run_dir(runs))
    base = [r for r in recs if r["endpoint"] == "baseline"]
    cand = [r for r in recs if r["endpoint"] == "candidate"]
    for r in base:
        top = dict(r["topk"])
        smallest = min(top.values())
        assert r["option_logprobs"] == [top.get(t, smallest) for t in LETTERS]
        assert r["censored_options"] == sum(1 for t in LETTERS if t not in top) > 0
        assert r["echo_options"] == 0
    # The candidate agrees with itself: it keeps the echo fallback, and says how many options used it.
    assert sum(r["echo_options"] for r in cand) == sum(4 - sum(1 for t, _ in r["topk"] if t in LETTERS)
                                                       for r in cand) > 0
    assert len(cand_echoes) == sum(1 for r in cand if r["echo_options"])
    assert all(r["censored_options"] == 0 and math.isfinite(sum(r["option_logprobs"])) for r in cand)


def test_continuation_tasks_refuse_chat_in_one_line(tmp_path: Path) -> None:
    from tests.test_mcq_cli import assert_one_line_error
    from tests.test_tasks_continuation import ARC_DOCS, write_parquet

    write_parquet(tmp_path / "arc" / "ARC-Easy" / "test-00000-of-00001.parquet", ARC_DOCS)
    with CapsStub(CapsState(model="base")) as b:
        proc = servecmp("mcq", "--baseline", b.url, "--candidate", b.url, "--task", "arc_easy", "--api", "chat",
                        "--data-dir", str(tmp_path / "arc"), "--runs-dir", str(tmp_path / "runs"))
    assert_one_line_error(proc, "continuation tasks (arc, hellaswag, piqa, winogrande) score each choice's echoed "
                                "prompt logprobs, which /v1/chat/completions cannot return: use --api completions")


def test_unmeasured_paths_turn_the_echo_fallback_off() -> None:
    """Echo works but no option was in the probe's top-k (llama.cpp may end the text at once): the
    paths were not compared, so echo is not trusted to fill in options."""
    caps = _caps(echo=True, path_gap_nats=None)
    assert caps.paths_agree is None
    assert caps.describe().endswith("top-k vs echo not compared (no option in the probe's top-k): echo fallback off")
