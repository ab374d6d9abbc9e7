"""`load_task`: task names and sources, --sample sampling, --limit, --fewshot, fingerprints, and the UserErrors."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
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
    data = load_task("mmlu", data_dir=SHARED_MMLU, sample=50, seed=3)
    assert len(data.items) == 50
    assert data.source == f"MMLU CSV directory {SHARED_MMLU}; 50 of 14079 items sampled with seed 3"


def test_sampling_is_deterministic_and_independent_of_source_order(tmp_path: Path) -> None:
    in_order = write_set(tmp_path / "a.jsonl", IDS)
    shuffled_ids = IDS[:]
    random.Random(1).shuffle(shuffled_ids)
    shuffled = write_set(tmp_path / "b.jsonl", shuffled_ids)

    first = load_task(f"jsonl:{in_order}", sample=10, seed=7)
    again = load_task(f"jsonl:{in_order}", sample=10, seed=7)
    assert [it.item_id for it in first.items] == [it.item_id for it in again.items]

    # The expected choice, computed independently: the 10 ids with the smallest sha256("7:<id>").
    expected = sorted(IDS, key=lambda i: hashlib.sha256(f"7:{i}".encode()).digest())[:10]
    assert sorted(it.item_id for it in first.items) == sorted(expected)
    # Kept in source order.
    assert [it.item_id for it in first.items] == [i for i in IDS if i in expected]

    other_order = load_task(f"jsonl:{shuffled}", sample=10, seed=7)
    assert {it.item_id for it in other_order.items} == set(expected)

    other_seed = load_task(f"jsonl:{in_order}", sample=10, seed=8)
    assert {it.item_id for it in other_seed.items} != set(expected)

    larger = load_task(f"jsonl:{in_order}", sample=20, seed=7)
    assert set(expected) < {it.item_id for it in larger.items}

    assert len(load_task(f"jsonl:{in_order}", sample=1000, seed=7).items) == 40


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
        load_task(f"jsonl:{path}", fewshot_file=str(path)).prompt_format_hash,
    }
    assert len(hashes) == 3
    assert (
        load_task(f"jsonl:{path}", sample=3).prompt_format_hash
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
        ({"name": "mmlu", "sample": 0}, r"^--sample 0 selects no items from task mmlu$"),
        ({"name": "mmlu", "sample": -1}, r"^--sample must be 0 or more, got -1$"),
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
        ({"name": "mmlu", "fewshot_file": "f.jsonl"}, r"^--fewshot-file applies to jsonl:PATH tasks only, not mmlu$"),
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


def test_limit_takes_the_first_n_in_file_order(tmp_path: Path) -> None:
    path = write_set(tmp_path / "a.jsonl", IDS)
    first = load_task(f"jsonl:{path}", limit=3)
    assert [it.item_id for it in first.items] == ["q0", "q1", "q2"]
    assert first.source == f"JSONL file {path}; the first 3 of 40 items"
    assert first.n_available == 40
    # The seed plays no part in --limit.
    assert first.fingerprint == load_task(f"jsonl:{path}", limit=3, seed=9).fingerprint
    assert len(load_task(f"jsonl:{path}", limit=1000).items) == 40
    with pytest.raises(UserError, match=r"^--limit 0 selects no items from task jsonl:"):
        load_task(f"jsonl:{path}", limit=0)
    with pytest.raises(UserError, match=r"^--limit \(the first N items\) and --sample \(a seeded sample of N\) "
                                        r"are alternatives; give one$"):
        load_task(f"jsonl:{path}", limit=3, sample=3)


def _sample_csv_row(folder: str, subject: str) -> list[list[str]]:
    import csv

    path = ROOT / "servecmp" / "prompts" / "mmlu_sample" / folder / f"{subject}_{folder}.csv"
    with path.open(encoding="utf-8", newline="") as fh:
        return [list(row) for row in csv.reader(fh)]


def test_fewshot_sets_the_number_of_mmlu_exemplars() -> None:
    # Built here from the vendored CSVs, independently of servecmp's renderer.
    test_row = _sample_csv_row("test", "abstract_algebra")[0]  # row index, question, A-D, answer
    dev_rows = _sample_csv_row("dev", "abstract_algebra")  # question, A-D, answer

    def block(question: str, choices: Sequence[str]) -> str:
        return question.strip() + "".join(f"\n{letter}. {c}" for letter, c in zip("ABCD", choices, strict=True)) \
            + "\nAnswer:"

    header = "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
    question = block(test_row[1], test_row[2:6])
    item_id = f"abstract_algebra/{test_row[0]}"

    def prompt(n: int | None) -> str:
        data = load_task("mmlu-sample", fewshot=n)
        return next(it.prompt for it in data.items if it.item_id == item_id)

    assert prompt(0) == header + question
    two = "".join(block(r[0], r[1:5]) + f" {r[5]}\n\n" for r in dev_rows[:2])
    assert prompt(2) == header + two + question
    five = "".join(block(r[0], r[1:5]) + f" {r[5]}\n\n" for r in dev_rows[:5])
    assert prompt(None) == prompt(5) == header + five + question

    default, zero, explicit = load_task("mmlu"), load_task("mmlu", fewshot=0), load_task("mmlu", fewshot=5)
    assert (default.fewshot, zero.fewshot, explicit.fewshot) == (5, 0, 5)
    assert default.fingerprint == explicit.fingerprint != zero.fingerprint
    assert default.prompt_format_hash == explicit.prompt_format_hash != zero.prompt_format_hash
    with pytest.raises(UserError, match=r"abstract_algebra_dev.csv has 5 rows; the 6-shot prompt needs 6$"):
        load_task("mmlu", fewshot=6)


def test_fewshot_on_jsonl_and_continuation_tasks(tmp_path: Path) -> None:
    items = write_set(tmp_path / "items.jsonl", ["q0", "q1"])
    shots = write_set(tmp_path / "shots.jsonl", ["q7", "q8", "q9"])
    whole = load_task(f"jsonl:{items}", fewshot_file=str(shots))
    two = load_task(f"jsonl:{items}", fewshot_file=str(shots), fewshot=2)
    assert (whole.fewshot, two.fewshot, load_task(f"jsonl:{items}").fewshot) == (3, 2, 0)
    # Exemplars are the file's first rows, in order: q7 then q8 (answers: 7 % 2 -> B, 8 % 2 -> A).
    assert two.items[0].prompt == ("question q7?\nA. yes\nB. no\nAnswer: B\n\n"
                                   "question q8?\nA. yes\nB. no\nAnswer: A\n\n"
                                   "question q0?\nA. yes\nB. no\nAnswer:")
    assert whole.items[0].prompt.count("Answer:") == 4
    assert two.source == f"JSONL file {items} with few-shot file {shots} (first 2 rows)"
    with pytest.raises(UserError, match=rf"^--fewshot 4: {shots} has 3 rows$"):
        load_task(f"jsonl:{items}", fewshot_file=str(shots), fewshot=4)
    with pytest.raises(UserError, match=r"^--fewshot 1: no few-shot file was given$"):
        load_task(f"jsonl:{items}", fewshot=1)
    with pytest.raises(UserError, match=r"^--fewshot must be 0 or more, got -1$"):
        load_task("mmlu", fewshot=-1)
    with pytest.raises(UserError, match=r"^task piqa is scored zero-shot, as lm-eval scores it; --fewshot applies "
                                        r"to mmlu and jsonl:PATH tasks$"):
        load_task("piqa", fewshot=3)


def test_the_resolved_source_kind_loads_the_same_items(tmp_path: Path) -> None:
    """What a resumed run relies on: passing back `source_kind` and `fewshot` reloads the task."""
    path = write_set(tmp_path / "a.jsonl", IDS)
    csv_dir = tmp_path / "mmlu"
    for folder in ("dev", "test"):
        (csv_dir / folder).mkdir(parents=True)
    (csv_dir / "dev" / "astronomy_dev.csv").write_text("q,a,b,c,d,A\n" * 5, encoding="utf-8")
    (csv_dir / "test" / "astronomy_test.csv").write_text("r,a,b,c,d,B\n", encoding="utf-8")
    cases = [("mmlu", {}, "sample"), ("mmlu-sample", {}, "sample"), ("mmlu", {"data_dir": str(csv_dir)}, "csv"),
             (f"jsonl:{path}", {}, "jsonl")]
    for name, kwargs, kind in cases:
        first = load_task(name, **kwargs)  # type: ignore[arg-type]
        assert first.source_kind == kind
        again = load_task(name, source=first.source_kind, fewshot=first.fewshot, **kwargs)  # type: ignore[arg-type]
        assert again.fingerprint == first.fingerprint
    with pytest.raises(UserError, match=r"^task jsonl:\S+ reads its file; its only source is 'jsonl'$"):
        load_task(f"jsonl:{path}", source="hf")
