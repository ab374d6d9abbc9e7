"""`load_task`: task names and sources, --limit sampling, fingerprints, and the UserErrors."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest

from servecmp.errors import UserError
from servecmp.tasks import KNOWN_TASKS, load_task, mmlu
from servecmp.tasks.registry import fingerprint

ROOT = Path(__file__).resolve().parents[1]
SHARED_MMLU = str(ROOT.parent / "shared" / "data" / "mmlu")


def write_set(path: Path, ids: list[str]) -> Path:
    rows = [
        {"id": i, "question": f"question {i}?", "choices": ["yes", "no"], "answer": int(i[1:]) % 2}
        for i in ids
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


IDS = [f"q{n}" for n in range(40)]


def test_mmlu_defaults_to_the_vendored_sample_and_mmlu_sample_is_the_same() -> None:
    default, sample = load_task("mmlu"), load_task("mmlu-sample")
    assert len(default.items) == 228
    assert default.source == sample.source == "vendored MMLU sample (prompts/mmlu_sample)"
    assert default.fingerprint == sample.fingerprint
    assert default.prompt_format_hash == sample.prompt_format_hash
    assert {it.task for it in default.items} == {"mmlu"}
    assert {it.task for it in sample.items} == {"mmlu-sample"}


def test_mmlu_with_data_dir_reads_the_csv_layout() -> None:
    data = load_task("mmlu", data_dir=SHARED_MMLU, limit=50, seed=3)
    assert len(data.items) == 50
    assert data.source == f"MMLU CSV directory {SHARED_MMLU}; 50 of 14079 items sampled with seed 3"


def test_limit_sampling_is_deterministic_and_independent_of_source_order(tmp_path: Path) -> None:
    in_order = write_set(tmp_path / "a.jsonl", IDS)
    shuffled_ids = IDS[:]
    random.Random(1).shuffle(shuffled_ids)
    shuffled = write_set(tmp_path / "b.jsonl", shuffled_ids)

    first = load_task(f"jsonl:{in_order}", limit=10, seed=7)
    again = load_task(f"jsonl:{in_order}", limit=10, seed=7)
    assert [it.item_id for it in first.items] == [it.item_id for it in again.items]

    # The expected choice, computed independently: the 10 ids with the smallest sha256("7:<id>").
    expected = sorted(IDS, key=lambda i: hashlib.sha256(f"7:{i}".encode()).digest())[:10]
    assert sorted(it.item_id for it in first.items) == sorted(expected)
    # Kept in source order.
    assert [it.item_id for it in first.items] == [i for i in IDS if i in expected]

    other_order = load_task(f"jsonl:{shuffled}", limit=10, seed=7)
    assert {it.item_id for it in other_order.items} == set(expected)

    other_seed = load_task(f"jsonl:{in_order}", limit=10, seed=8)
    assert {it.item_id for it in other_seed.items} != set(expected)

    larger = load_task(f"jsonl:{in_order}", limit=20, seed=7)
    assert set(expected) < {it.item_id for it in larger.items}

    assert len(load_task(f"jsonl:{in_order}", limit=1000, seed=7).items) == 40


def test_fingerprint_covers_the_item_set_not_its_order(tmp_path: Path) -> None:
    a = load_task(f"jsonl:{write_set(tmp_path / 'a.jsonl', IDS)}")
    b = load_task(f"jsonl:{write_set(tmp_path / 'b.jsonl', IDS[::-1])}")
    assert [it.item_id for it in b.items] == IDS[::-1]
    assert a.fingerprint == b.fingerprint == fingerprint(a.items)
    changed = [a.items[0].model_copy(update={"prompt": a.items[0].prompt + " "}), *a.items[1:]]
    assert fingerprint(changed) != a.fingerprint
    regolded = [a.items[0].model_copy(update={"gold": 1}), *a.items[1:]]
    assert fingerprint(regolded) != a.fingerprint
    assert len(a.fingerprint) == 16 and int(a.fingerprint, 16) >= 0


def test_prompt_format_hash_differs_between_formats(tmp_path: Path) -> None:
    path = write_set(tmp_path / "a.jsonl", IDS)
    hashes = {
        load_task("mmlu").prompt_format_hash,
        load_task(f"jsonl:{path}").prompt_format_hash,
        load_task(f"jsonl:{path}", fewshot=str(path)).prompt_format_hash,
    }
    assert len(hashes) == 3
    assert (
        load_task(f"jsonl:{path}", limit=3).prompt_format_hash
        == load_task(f"jsonl:{path}").prompt_format_hash
    )


def test_known_tasks() -> None:
    assert KNOWN_TASKS == (
        "mmlu",
        "mmlu-sample",
        "jsonl:PATH",
        "arc_easy",
        "arc_challenge",
        "hellaswag",
        "piqa",
        "winogrande",
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"name": "mmlu_pro"},
            r"^unknown task 'mmlu_pro'; known: mmlu, mmlu-sample, jsonl:PATH, arc_easy, "
            r"arc_challenge, hellaswag, piqa, winogrande$",
        ),
        ({"name": "mmlu", "limit": 0}, r"^--limit 0 selects no items from task mmlu$"),
        ({"name": "mmlu", "limit": -1}, r"^--limit must be 0 or more, got -1$"),
        ({"name": "mmlu", "source": "s3"}, r"^unknown MMLU source 's3'; known: csv, sample, hf$"),
        ({"name": "mmlu", "source": "csv"}, r"^MMLU source 'csv' needs --data-dir"),
        (
            {"name": "mmlu", "data_dir": "/nonexistent/mmlu"},
            r"^MMLU data directory /nonexistent/mmlu not found$",
        ),
        (
            {"name": "mmlu", "source": "hf", "data_dir": "/nonexistent/hf"},
            r"^dataset directory /nonexistent/hf ",
        ),
        (
            {"name": "mmlu-sample", "data_dir": "x"},
            r"^task mmlu-sample \(vendored sample\) does not read --data-dir$",
        ),
        ({"name": "mmlu-sample", "source": "hf"}, r"^task mmlu-sample is the vendored sample"),
        ({"name": "mmlu", "fewshot": "f.jsonl"}, r"^--fewshot applies to jsonl:PATH tasks only, not mmlu$"),
        ({"name": "jsonl:"}, r"^task jsonl:PATH needs a path"),
        ({"name": "jsonl:/nonexistent/set.jsonl"}, r"^/nonexistent/set.jsonl not found$"),
        ({"name": "jsonl:x.jsonl", "data_dir": "d"}, r"^task jsonl:x.jsonl does not read --data-dir$"),
        (
            {"name": "piqa", "source": "csv"},
            r"^task piqa is read through Hugging Face datasets; source must be 'hf'$",
        ),
    ],
)
def test_bad_requests_are_user_errors(kwargs: dict[str, object], message: str) -> None:
    name = kwargs.pop("name")
    with pytest.raises(UserError, match=message):
        load_task(str(name), **kwargs)  # type: ignore[arg-type]


def test_empty_file_is_an_empty_task(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("\n\n", encoding="utf-8")
    with pytest.raises(
        UserError, match=rf"^task jsonl:{tmp_path}/empty.jsonl has no items \(JSONL file .*\)$"
    ):
        load_task(f"jsonl:{tmp_path / 'empty.jsonl'}")


def test_duplicate_ids_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "mmlu_sample"
    (root / "dev").mkdir(parents=True)
    (root / "test").mkdir()
    (root / "dev" / "astronomy_dev.csv").write_text("q,a,b,c,d,A\n" * 5, encoding="utf-8")
    (root / "test" / "astronomy_test.csv").write_text("3,q,a,b,c,d,A\n3,r,a,b,c,d,B\n", encoding="utf-8")
    monkeypatch.setattr(mmlu, "sample_dir", lambda: root)
    with pytest.raises(UserError, match=r"^task mmlu-sample: item id 'astronomy/3' appears more than once$"):
        load_task("mmlu-sample")
