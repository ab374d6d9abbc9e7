"""Write the data files of `servecmp_mmlu_sample.yaml`: the first N items of servecmp's vendored
MMLU sample (in servecmp's item order) and their subjects' dev rows, read by servecmp's own MMLU
reader so both tools see the same questions.

    python scripts/lmeval_tasks/lmeval_task_data.py OUT_DIR [--limit N]

Each doc keeps servecmp's `item_id` and the `subject`, so a samples log maps back to servecmp's
records and servecmp's import groups it by subject.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from servecmp.mcq.records import McqItem
from servecmp.tasks import load_task
from servecmp.tasks.letter_format import LetterQuestion
from servecmp.tasks.mmlu import N_SHOTS, read_csv_rows, sample_dir

TASK = "servecmp_mmlu_sample"
SERVECMP_TASK = "mmlu-sample"
TEST_FILE = "test.jsonl"
DEV_FILE = "dev.jsonl"


def _doc(item_id: str, subject: str, q: LetterQuestion, role: str) -> dict[str, Any]:
    return {"item_id": item_id, "subject": subject, "question": q.question, "choices": list(q.choices),
            "answer": q.answer, "role": role}


def servecmp_items(limit: int | None = None) -> list[McqItem]:
    """servecmp's first `limit` items of the sample, in its own order (not its seeded --limit draw)."""
    return load_task(SERVECMP_TASK).items[:limit]


def task_docs(limit: int | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(test docs, dev docs) for the first `limit` items."""
    items = servecmp_items(limit)
    root = sample_dir()
    subjects = list(dict.fromkeys(it.subject or "" for it in items))
    test: list[dict[str, Any]] = []
    dev: list[dict[str, Any]] = []
    for subject in subjects:
        rows = {f"{subject}/{i}": q for i, q in read_csv_rows(root / "test" / f"{subject}_test.csv", indexed=True)}
        for it in items:
            if it.subject == subject:
                q = rows[it.item_id]
                if q.answer != it.gold:
                    raise ValueError(f"{it.item_id}: gold {it.gold} in servecmp, {q.answer} in the CSV")
                test.append(_doc(it.item_id, subject, q, "test"))
        shots = read_csv_rows(root / "dev" / f"{subject}_dev.csv")[:N_SHOTS]
        dev.extend(_doc(f"{subject}/dev/{i}", subject, q, "dev") for i, q in shots)
    # Keep servecmp's item order (subjects come in sorted runs, so this is a no-op made explicit).
    order = {it.item_id: n for n, it in enumerate(items)}
    test.sort(key=lambda d: order[d["item_id"]])
    return test, dev


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def write_task_data(out_dir: Path, limit: int | None = None) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    test, dev = task_docs(limit)
    _write_jsonl(out_dir / TEST_FILE, test)
    _write_jsonl(out_dir / DEV_FILE, dev)
    return out_dir / TEST_FILE, out_dir / DEV_FILE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--limit", type=int, default=None, help="first N items of the sample (default: all)")
    args = parser.parse_args()
    test, dev = write_task_data(args.out_dir, args.limit)
    print(f"wrote {test} and {dev}")


if __name__ == "__main__":
    main()
