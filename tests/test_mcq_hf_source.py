"""`servecmp mcq --task mmlu --source hf` end to end, offline: a local copy of `cais/mmlu` in the hub
repository's layout (`<subject>/{dev,test}-00000-of-00001.parquet`), read through `datasets` with the
hub switched off, scored against the stub endpoints, with `--fewshot 2`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.stub_openai import StubServer, StubState
from tests.test_mcq_cli import ROOT, only_run_dir, records

SUBJECTS = {
    "astronomy": {
        "dev": [(f"Which planet is number {i}?", [f"p{i}", "Venus", "Mars", "Earth"], i % 4) for i in range(5)],
        "test": [("What orbits the Earth?", ["The Sun", "The Moon", "Mars", "Vega"], 1),
                 ("How many moons has Mars?", ["0", "1", "2", "3"], 2)],
    },
    "virology": {
        "dev": [(f"Virus fact {i}?", ["yes", "no", "maybe", "never"], (i + 1) % 4) for i in range(5)],
        "test": [("Is a virus alive?", ["yes", "no", "debated", "sometimes"], 2),
                 ("What does a virus carry?", ["genes", "mitochondria", "ribosomes", "cell walls"], 0),
                 ("What fights viruses?", ["antibodies", "antibiotics", "salt", "sugar"], 0)],
    },
}


def write_local_copy(root: Path) -> None:
    import datasets

    for subject, splits in SUBJECTS.items():
        for split, rows in splits.items():
            path = root / subject / f"{split}-00000-of-00001.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            datasets.Dataset.from_list(
                [{"question": q, "subject": subject, "choices": c, "answer": a} for q, c, a in rows]
            ).to_parquet(str(path))
    # What `huggingface-cli download --local-dir` leaves beside the data: not a subject.
    (root / ".cache" / "huggingface").mkdir(parents=True)


def block(question: str, choices: list[str]) -> str:
    return question + "".join(f"\n{letter}. {c}" for letter, c in zip("ABCD", choices, strict=True)) + "\nAnswer:"


def expected_prompts(n_shots: int) -> dict[str, str]:
    """Item id → the MMLU prompt, built here from the rows above: header, exemplars, question."""
    out = {}
    for subject, splits in SUBJECTS.items():
        header = f"The following are multiple choice questions (with answers) about {subject}.\n\n"
        shots = "".join(f"{block(q, c)} {'ABCD'[a]}\n\n" for q, c, a in splits["dev"][:n_shots])
        for i, (q, c, _) in enumerate(splits["test"]):
            out[f"{subject}/{i}"] = header + shots + block(q, c)
    return out


def offline_env(tmp_path: Path) -> dict[str, str]:
    # No network here: the hub is switched off, and datasets' cache kept out of the user's home.
    return {**os.environ, "COLUMNS": "200", "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
            "HF_HOME": str(tmp_path / "hf-home"), "HF_DATASETS_CACHE": str(tmp_path / "hf-cache")}


def test_source_hf_reads_a_local_copy_with_fewshot(tmp_path: Path) -> None:
    copy = tmp_path / "cais_mmlu"
    write_local_copy(copy)
    runs = tmp_path / "runs"
    with StubServer(StubState(model="base")) as b, StubServer(StubState(model="cand")) as c:
        proc = subprocess.run(
            [sys.executable, "-m", "servecmp", "mcq", "--baseline", b.url, "--candidate", c.url,
             "--task", "mmlu", "--source", "hf", "--data-dir", str(copy), "--fewshot", "2", "--top-k", "5",
             "--runs-dir", str(runs), "--json"],
            capture_output=True, text=True, cwd=ROOT, env=offline_env(tmp_path), timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        sent = [r["body"]["prompt"] for r in b.state.requests if r["path"] == "/v1/completions"
                and not r["body"].get("echo") and "user" not in r["body"]]  # "user": the capability probe
    want = expected_prompts(2)
    assert sorted(sent) == sorted(want.values())
    run_dir = only_run_dir(runs)
    recs = records(run_dir)
    assert sorted(str(r["item_id"]) for r in recs if r["endpoint"] == "baseline") == sorted(want)
    golds = {f"{s}/{i}": a for s, sp in SUBJECTS.items() for i, (_, _, a) in enumerate(sp["test"])}
    assert {r["item_id"]: r["gold"] for r in recs} == golds
    assert {r["item_id"]: r["subject"] for r in recs} == {k: k.split("/")[0] for k in want}

    manifest: dict[str, Any] = json.loads((run_dir / "manifest.json").read_text())
    assert (manifest["task"], manifest["source"], manifest["fewshot"], manifest["data_dir"], manifest["n_items"]) == (
        "mmlu", "hf", 2, str(copy), 5)
    assert manifest["source_description"] == f"cais/mmlu from local copy {copy}"
    summary = json.loads(proc.stdout)
    assert summary["n_items"] == 5 and summary["run"]["source"] == f"cais/mmlu from local copy {copy}"
    assert {g["group"]: g["n"] for g in summary["groups"]["subject"]} == {"astronomy": 2, "virology": 3}

    # The report reads it back with no endpoint; the default (5 exemplars) would be another task.
    again = subprocess.run([sys.executable, "-m", "servecmp", "report", str(run_dir), "--json"],
                           capture_output=True, text=True, cwd=ROOT, env=offline_env(tmp_path), timeout=120)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == summary
    assert expected_prompts(5) != want


def test_source_hf_without_a_local_copy_offline_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "servecmp", "mcq", "--baseline", "http://127.0.0.1:9/v1", "--candidate",
         "http://127.0.0.1:9/v1", "--task", "mmlu", "--source", "hf", "--data-dir", str(tmp_path / "absent")],
        capture_output=True, text=True, cwd=ROOT, env=offline_env(tmp_path), timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == [f"servecmp: error: dataset directory {tmp_path / 'absent'} not found"]
