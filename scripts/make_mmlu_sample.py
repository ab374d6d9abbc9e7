"""Rebuild prompts/mmlu_sample/ (the MMLU sample vendored in the package) from the full MMLU CSVs.

    python scripts/make_mmlu_sample.py [--source ../shared/data/mmlu] [--out prompts/mmlu_sample]

Dev files (the 5 exemplars per subject) are copied verbatim. Each test file keeps a seeded random
choice of rows, in their original order, with the row's 0-based index in the full test CSV as
an extra first column so item ids ("<subject>/<index>") match runs on the full data set. Each
subject has its own RNG seeded from (seed, subject), so the choice for one subject never
depends on the others. Same inputs and seed → byte-identical output.
"""

from __future__ import annotations

import argparse
import csv
import random
import shutil
from pathlib import Path

from servecmp.tasks.mmlu_subjects import SUBJECTS

REPO = Path(__file__).resolve().parents[1]
PER_SUBJECT = 4
SEED = 0

README = """\
MMLU sample vendored with servecmp
==================================

A small, fixed subset of MMLU (Hendrycks et al., "Measuring Massive Multitask Language
Understanding", ICLR 2021; https://github.com/hendrycks/test), so `servecmp mcq --task mmlu`
works with no download. MIT licensed: see LICENSE in this directory.

dev/<subject>_dev.csv    the 5 dev rows of each of the 57 subjects, copied verbatim
                         (question, A, B, C, D, answer; no header). They are the 5-shot exemplars.
test/<subject>_test.csv  {per_subject} test rows per subject ({total} items), chosen at random with
                         seed {seed} (one RNG per subject, seeded with "mmlu-sample:{seed}:<subject>"),
                         kept in their original order. Each row has one extra FIRST column: the
                         row's 0-based index in the full test/<subject>_test.csv, so the item id
                         "<subject>/<index>" is the same as in a run on the full data set.

Rebuild with: python scripts/make_mmlu_sample.py --source ../shared/data/mmlu
"""


def read_records(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return [row for row in csv.reader(fh) if row]


def make_sample(source: Path, out: Path, per_subject: int, seed: int) -> int:
    found = sorted(p.name.removesuffix("_test.csv") for p in (source / "test").glob("*_test.csv"))
    if found != list(SUBJECTS):
        raise SystemExit(f"{source}/test does not hold exactly the 57 MMLU subjects")
    (out / "dev").mkdir(parents=True, exist_ok=True)
    (out / "test").mkdir(parents=True, exist_ok=True)
    total = 0
    for subject in SUBJECTS:
        shutil.copyfile(source / "dev" / f"{subject}_dev.csv", out / "dev" / f"{subject}_dev.csv")
        records = read_records(source / "test" / f"{subject}_test.csv")
        rng = random.Random(f"mmlu-sample:{seed}:{subject}")
        chosen = sorted(rng.sample(range(len(records)), per_subject))
        with (out / "test" / f"{subject}_test.csv").open("w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            for index in chosen:
                writer.writerow([str(index), *records[index]])
        total += len(chosen)
    shutil.copyfile(source / "LICENSE", out / "LICENSE")
    (out / "README.txt").write_text(
        README.format(per_subject=per_subject, total=total, seed=seed), encoding="utf-8"
    )
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=REPO.parent / "shared" / "data" / "mmlu")
    parser.add_argument("--out", type=Path, default=REPO / "prompts" / "mmlu_sample")
    parser.add_argument("--per-subject", type=int, default=PER_SUBJECT)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    total = make_sample(args.source, args.out, args.per_subject, args.seed)
    print(f"wrote {total} test items over {len(SUBJECTS)} subjects to {args.out}")


if __name__ == "__main__":
    main()
