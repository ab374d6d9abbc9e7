"""`servecmp mcq` end to end against stub endpoints: records, resume after kill -9, Ctrl-C, an
endpoint dying mid-run, and every bad input giving one line and a non-zero exit.

The real-vLLM end-to-end run is in test_mcq_vllm.py; these use the stub because the failures
here cannot be produced on demand by a real server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.stub_openai import LETTERS, StubServer, StubState, free_port, next_token_logprobs
from tests.test_serve_cli import default_sigint

ROOT = Path(__file__).resolve().parents[1]


def write_items(path: Path, n: int) -> list[dict[str, object]]:
    rows = [{"id": f"q{i}", "question": f"What is {i} + {i}?", "choices": [str(2 * i), "7", "9", "11"],
             "answer": i % 4, "subject": "arith" if i % 2 else "logic"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def servecmp(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "servecmp", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, "COLUMNS": "200"})


def assert_one_line_error(proc: subprocess.CompletedProcess[str], pattern: str, code: int = 2) -> None:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert pattern in lines[0], lines[0]


def records(run_dir: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in (run_dir / "records.jsonl").read_text().splitlines() if x.strip()]


def only_run_dir(runs: Path) -> Path:
    (d,) = list(runs.iterdir())
    return d


def test_full_run_matches_independent_computation(tmp_path: Path) -> None:
    data = tmp_path / "items.jsonl"
    rows = write_items(data, 12)
    runs = tmp_path / "runs"
    with StubServer(StubState(model="base")) as b, StubServer(StubState(model="cand")) as c:
        proc = servecmp("mcq", "--baseline", b.url, "--candidate", c.url, "--task", f"jsonl:{data}",
                        "--runs-dir", str(runs), "--top-k", "5", "--json")
        assert proc.returncode == 0, proc.stderr
        summary = json.loads(proc.stdout)
        prompts = [r["body"]["prompt"] for r in b.state.requests if r["path"] == "/v1/completions"
                   and not r["body"].get("echo") and "user" not in r["body"]]  # "user": the capability probe
    assert len(prompts) == 12
    run_dir = only_run_dir(runs)
    recs = records(run_dir)
    assert Counter(r["endpoint"] for r in recs) == {"baseline": 12, "candidate": 12}
    # Recompute chosen options from the stub's distribution over the four letters, independently.
    by_prompt = {}
    for p in prompts:
        qnum = int(p.rsplit("What is ", 1)[1].split(" ")[0])
        by_prompt[qnum] = p
    flips = 0
    changes = 0
    for i in range(12):
        p = by_prompt[i]
        chosen = {}
        for model in ("base", "cand"):
            full = next_token_logprobs(p, model, 100)
            chosen[model] = max(range(4), key=lambda j, full=full: full[LETTERS[j]])  # type: ignore[misc]
        gold = int(rows[i]["answer"])  # type: ignore[call-overload]
        flips += (chosen["base"] == gold) != (chosen["cand"] == gold)
        changes += chosen["base"] != chosen["cand"]
    assert summary["flips"]["n"] == 12
    assert summary["flips"]["flips"] == flips
    assert summary["answer_changes"]["count"] == changes
    # `servecmp report` recomputes the same numbers from the records alone.
    again = servecmp("report", str(run_dir), "--json")
    assert again.returncode == 0, again.stderr
    rep = json.loads(again.stdout)
    assert rep["flips"] == summary["flips"]
    assert rep["accuracy"] == summary["accuracy"]


def _start_stub_process(model: str, delay: float) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "stub_openai.py"), str(port), model, str(delay)],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    import httpx
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1)
            return proc, f"http://127.0.0.1:{port}/v1"
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("stub did not start")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_interrupted_run_resumes_without_redoing_items(tmp_path: Path, sig: signal.Signals) -> None:
    data = tmp_path / "items.jsonl"
    write_items(data, 16)
    runs = tmp_path / "runs"
    b, burl = _start_stub_process("base", 0.15)
    c, curl = _start_stub_process("cand", 0.15)
    try:
        run = subprocess.Popen([sys.executable, "-m", "servecmp", "mcq", "--baseline", burl, "--candidate", curl,
                                "--task", f"jsonl:{data}", "--runs-dir", str(runs), "--concurrency", "1",
                                "--top-k", "5"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, preexec_fn=default_sigint)
        deadline = time.time() + 60
        while time.time() < deadline:
            if runs.exists() and any(runs.iterdir()):
                rec = only_run_dir(runs) / "records.jsonl"
                if rec.exists() and len(rec.read_text().splitlines()) >= 6:
                    break
            time.sleep(0.05)
        run.send_signal(sig)
        _, err = run.communicate(timeout=30)
        run_dir = only_run_dir(runs)
        before = records(run_dir)
        assert 6 <= len(before) < 32
        if sig == signal.SIGINT:
            assert run.returncode == 130
            assert "Traceback" not in err and f"--resume {run_dir}" in err
        proc = servecmp("mcq", "--resume", str(run_dir), "--json")
        assert proc.returncode == 0, proc.stderr
        after = records(run_dir)
        keys = Counter((r["item_id"], r["endpoint"]) for r in after)
        assert len(keys) == 32 and max(keys.values()) == 1
        # Finished work was kept verbatim, not redone.
        assert after[: len(before)] == before
        assert json.loads(proc.stdout)["flips"]["n"] == 16
    finally:
        for p in (b, c):
            p.kill()
            p.wait()


def test_endpoint_dying_mid_run_leaves_resumable_run(tmp_path: Path) -> None:
    data = tmp_path / "items.jsonl"
    write_items(data, 10)
    runs = tmp_path / "runs"
    # /v1/models and the capability probe take 8 requests (servecmp.capabilities), then 5 go through.
    cand_state = StubState(model="cand", fail_after=8 + 5)
    with StubServer(StubState(model="base")) as b, StubServer(cand_state) as c:
        proc = servecmp("mcq", "--baseline", b.url, "--candidate", c.url, "--task", f"jsonl:{data}",
                        "--runs-dir", str(runs), "--top-k", "5", "--retries", "1", "--concurrency", "1")
        assert proc.returncode == 3
        assert "candidate endpoint failed" in proc.stderr and "--resume" in proc.stderr
        assert "Traceback" not in proc.stderr
        run_dir = only_run_dir(runs)
        got = Counter(r["endpoint"] for r in records(run_dir))
        assert got["baseline"] == 10 and 0 < got["candidate"] < 10
        cand_state.fail_after = None
        again = servecmp("mcq", "--resume", str(run_dir))
        assert again.returncode == 0, again.stderr
    assert Counter(r["endpoint"] for r in records(run_dir)) == {"baseline": 10, "candidate": 10}


def test_bad_inputs_give_one_line_and_nonzero_exit(tmp_path: Path) -> None:
    data = tmp_path / "items.jsonl"
    write_items(data, 3)
    runs = str(tmp_path / "runs")
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with StubServer(StubState(model="base")) as b, StubServer(StubState(model="cand", no_logprobs=True)) as nolp:
        common = ["--task", f"jsonl:{data}", "--runs-dir", runs, "--retries", "0"]
        assert_one_line_error(servecmp("mcq", "--baseline", dead, "--candidate", b.url, *common),
                              "baseline endpoint unreachable")
        assert_one_line_error(servecmp("mcq", "--baseline", b.url, "--baseline-model", "llama-70b",
                                       "--candidate", b.url, *common), "does not serve model 'llama-70b'")
        assert_one_line_error(servecmp("mcq", "--baseline", b.url, "--candidate", nolp.url, *common),
                              "answered without logprobs")
        assert_one_line_error(servecmp("mcq", "--baseline", b.url, "--candidate", b.url, "--task", "nosuchtask",
                                       "--runs-dir", runs), "unknown task")
        empty = tmp_path / "empty.jsonl"
        empty.write_text("")
        assert_one_line_error(servecmp("mcq", "--baseline", b.url, "--candidate", b.url, "--task",
                                       f"jsonl:{empty}", "--runs-dir", runs), "no items")
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"question": "q", "choices": ["a", "b"], "answer": 0}\n{"question": "q2", "choices": "ab"}\n')
        assert_one_line_error(servecmp("mcq", "--baseline", b.url, "--candidate", b.url, "--task",
                                       f"jsonl:{bad}", "--runs-dir", runs), f"{bad}:2")
        assert_one_line_error(servecmp("mcq", "--candidate", b.url, *common), "no baseline endpoint")
        # A resumed run takes its task from the manifest: --task with --resume is refused.
        ok = servecmp("mcq", "--baseline", b.url, "--candidate", b.url, *common, "--top-k", "5")
        assert ok.returncode == 0, ok.stderr
        run_dir = next(p for p in Path(runs).iterdir() if (p / "manifest.json").exists())
        assert_one_line_error(servecmp("mcq", "--resume", str(run_dir), "--task", "mmlu"),
                              f"cannot resume {run_dir} with --task:")
        assert_one_line_error(servecmp("mcq", "--resume", str(tmp_path)), "not a servecmp run directory")
        assert_one_line_error(servecmp("report", str(tmp_path)), "not a servecmp run directory")


def test_an_item_the_endpoint_refuses_is_counted_not_fatal(tmp_path: Path) -> None:
    data = tmp_path / "items.jsonl"
    write_items(data, 5)
    runs = tmp_path / "runs"
    # Requests: /v1/models, the capability probe (7 requests: completions, chat, one echo per option,
    # top-k on an item), then items one at a time: the second item gets a 400, as vLLM answers a
    # prompt longer than --max-model-len.
    with StubServer(StubState(model="base")) as b, \
            StubServer(StubState(model="cand", script=[None] * 9 + [400])) as c:
        proc = servecmp("mcq", "--baseline", b.url, "--candidate", c.url, "--task", f"jsonl:{data}",
                        "--runs-dir", str(runs), "--top-k", "5", "--concurrency", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["n_items"] == 4
    assert summary["run"]["item_errors"]["candidate"]["count"] == 1
    assert "HTTP 400" in summary["run"]["item_errors"]["candidate"]["example"]
    assert summary["pairing"]["unpaired_baseline"] == 1


def test_continuation_task_scores_each_choice_from_one_echo_request(tmp_path: Path) -> None:
    """ARC-Easy from a local copy: one request per item carrying every choice, each choice scored by
    the summed echo logprobs of its own tokens (the stub's, recomputed here independently)."""
    from tests.stub_openai import echo_tokens
    from tests.test_tasks_continuation import ARC_DOCS, write_parquet

    write_parquet(tmp_path / "arc" / "ARC-Easy" / "test-00000-of-00001.parquet", ARC_DOCS)
    runs = tmp_path / "runs"
    with StubServer(StubState(model="base")) as b, StubServer(StubState(model="cand")) as c:
        proc = servecmp("mcq", "--baseline", b.url, "--candidate", c.url, "--task", "arc_easy",
                        "--data-dir", str(tmp_path / "arc"), "--runs-dir", str(runs), "--json")
        assert proc.returncode == 0, proc.stderr
        item_requests = [r["body"] for r in b.state.requests
                         if r["path"] == "/v1/completions" and isinstance(r["body"]["prompt"], list)]
    assert [len(body["prompt"]) for body in item_requests] == [3, 4]  # one request per item, all choices
    recs = {r["item_id"]: r for r in records(only_run_dir(runs)) if r["endpoint"] == "baseline"}
    first = recs["0"]  # item ids are row indices, as lm-eval's doc_id
    ctx = "Question: Which of these is a gas at room temperature?\nAnswer:"
    for choice, got in zip(["iron", "oxygen", "salt"], first["option_logprobs"], strict=True):
        # Tokens of the continuation " <choice>" start at or after len(ctx); the stub tokenises on spaces.
        toks = echo_tokens(ctx + " " + choice, "base")
        pos, want = 0, 0.0
        for tok, lp in toks:
            if pos >= len(ctx) and lp is not None:
                want += lp
            pos += len(tok)
        assert got == pytest.approx(want, abs=1e-12)
    assert first["option_lengths"] == [4, 6, 4]
    assert json.loads(proc.stdout)["acc_norm"] is not None


def _scored_ids(run_dir: Path) -> list[str]:
    return [str(r["item_id"]) for r in records(run_dir) if r["endpoint"] == "baseline"]


def test_sample_is_the_seeded_sample_and_limit_the_first_n(tmp_path: Path) -> None:
    """--sample N keeps what --limit N meant before (a seeded sample, chosen by hash of seed and id);
    --limit N is now the first N items, as it is in every command; [mcq] sample = N is --sample N."""
    import hashlib

    data = tmp_path / "items.jsonl"
    write_items(data, 20)
    ids = [f"q{i}" for i in range(20)]
    # The rule, worked out here independently: the N ids with the smallest sha256("<seed>:<id>").
    seeded = sorted(ids, key=lambda i: hashlib.sha256(f"3:{i}".encode()).digest())[:5]
    config = tmp_path / "servecmp.toml"
    with StubServer(StubState(model="base")) as b, StubServer(StubState(model="cand")) as c:
        config.write_text(f'[baseline]\nurl = "{b.url}"\n[candidate]\nurl = "{c.url}"\n'
                          f'[mcq]\ntask = "jsonl:{data}"\nsample = 5\nseed = 3\ntop_k = 5\n')
        common = ["--baseline", b.url, "--candidate", c.url, "--task", f"jsonl:{data}", "--top-k", "5"]
        runs = {name: tmp_path / name for name in ("sample", "limit", "config", "limit_over_config")}
        assert servecmp("mcq", *common, "--sample", "5", "--seed", "3", "--runs-dir", str(runs["sample"])
                        ).returncode == 0
        assert servecmp("mcq", *common, "--limit", "4", "--runs-dir", str(runs["limit"])).returncode == 0
        assert servecmp("mcq", "-c", str(config), "--runs-dir", str(runs["config"])).returncode == 0
        # A --limit flag replaces the config file's sample: the two are alternatives.
        assert servecmp("mcq", "-c", str(config), "--limit", "2", "--runs-dir", str(runs["limit_over_config"])
                        ).returncode == 0
        assert_one_line_error(servecmp("mcq", *common, "--limit", "4", "--sample", "5", "--runs-dir",
                                       str(tmp_path / "x")),
                              "--limit (the first N items) and --sample (a seeded sample of N) are alternatives")
    assert sorted(_scored_ids(only_run_dir(runs["sample"]))) == sorted(seeded)
    assert sorted(_scored_ids(only_run_dir(runs["config"]))) == sorted(seeded)
    assert sorted(_scored_ids(only_run_dir(runs["limit"]))) == ["q0", "q1", "q2", "q3"]
    assert sorted(_scored_ids(only_run_dir(runs["limit_over_config"]))) == ["q0", "q1"]
    m = json.loads((only_run_dir(runs["sample"]) / "manifest.json").read_text())
    assert (m["sample"], m["limit"], m["seed"], m["n_items"]) == (5, None, 3, 5)
    m = json.loads((only_run_dir(runs["limit"]) / "manifest.json").read_text())
    assert (m["sample"], m["limit"], m["n_items"]) == (None, 4, 4)


def test_renamed_and_inapplicable_settings_are_one_line(tmp_path: Path) -> None:
    old = tmp_path / "old.toml"
    old.write_text('[mcq]\nlimit = 50\n')
    assert_one_line_error(servecmp("mcq", "-c", str(old)),
                          f"{old}: mcq: `limit` is now `sample` (a seeded sample of N items); rename the key")
    logs = ROOT / "tests" / "fixtures" / "lmeval_real"
    base = next(logs.rglob("samples_*.jsonl"))
    assert_one_line_error(servecmp("mcq", "--from-lm-eval", str(base), str(base), "--baseline", "http://h:1",
                                   "--sample", "3"),
                          "--from-lm-eval reads two sample logs and calls no endpoint; --baseline, --sample do not "
                          "apply to it (only --seed, --json, --show, --gate, --summary-md do)")
    assert_one_line_error(servecmp("mcq", "--task", "piqa", "--fewshot", "2", "--baseline", "http://h:1",
                                   "--candidate", "http://h:2"),
                          "task piqa is scored zero-shot, as lm-eval scores it")


def test_cli_modules_load_nothing_heavy_for_help() -> None:
    """`servecmp --help` imports every command module: those must not pull in numpy, the OpenAI
    client, pydantic models, rich tables or servecmp's services."""
    code = ("import sys, servecmp._cli.mcq, servecmp._cli.report, servecmp._cli.demo; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'scipy', 'openai', 'pydantic', "
            "'httpx', 'datasets') or m in ('rich.table', 'rich.console', 'rich.progress') "
            "or (m.startswith('servecmp.') and not m.startswith(('servecmp._cli', 'servecmp.errors')))))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_demo_ports_match_the_serving_defaults() -> None:
    from servecmp._cli import demo
    from servecmp.serving.modelpair import DEFAULT_PORTS

    ports = {"baseline": demo.BASELINE_PORT, "candidate": demo.CANDIDATE_PORT}
    assert ports == DEFAULT_PORTS
