"""MMLU 5-shot letter items from the original CSV layout, the vendored sample, or `cais/mmlu`.

Every source yields the same items for the same rows: the subject header, the subject's first
five dev rows as exemplars (lm-eval's `first_n` sampler, Hendrycks' `gen_prompt`), then the test
question ending in "Answer:". `n_shots` (lm-eval's `num_fewshot`, `--fewshot N`) takes fewer
exemplars: the first n dev rows, 0 being zero-shot. `item_id` is "<subject>/<row index in the
subject's test file>", so ids from the vendored sample, the full CSVs and the hub agree.
"""

from __future__ import annotations

import csv
import importlib.resources
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from servecmp.errors import UserError
from servecmp.tasks import hf_source
from servecmp.tasks.items import McqItem
from servecmp.tasks.letter_format import (
    LETTER_FORMAT,
    LetterQuestion,
    letter_continuations,
    parse_letter,
    render_prompt,
    subject_header,
)
from servecmp.tasks.mmlu_subjects import SUBJECTS, category_of

N_SHOTS = 5
HF_DATASET = "cais/mmlu"
#: Hub configs of cais/mmlu that are not single subjects.
_HF_AGGREGATE_CONFIGS = frozenset({"all", "auxiliary_train"})
SAMPLE_PACKAGE = "servecmp.prompts"
SAMPLE_DIR = "mmlu_sample"


def mmlu_format(n_shots: int = N_SHOTS) -> str:
    """The prompt-format description (hashed into run manifests) for `n_shots` exemplars."""
    return f"mmlu-{n_shots}shot-v1|exemplars=first {n_shots} dev rows in order|{LETTER_FORMAT}"


MMLU_FORMAT = mmlu_format(N_SHOTS)

_CSV_LAYOUT = "question, A, B, C, D, answer"
_INDEXED_CSV_LAYOUT = "row index, question, A, B, C, D, answer"


def build_items(
    task: str,
    subject: str,
    dev: Sequence[LetterQuestion],
    test: Sequence[tuple[int, LetterQuestion]],
    n_shots: int = N_SHOTS,
) -> list[McqItem]:
    header = subject_header(subject)
    shots = dev[:n_shots]
    return [
        McqItem(
            item_id=f"{subject}/{index}",
            task=task,
            kind="letter",
            prompt=render_prompt(header, shots, q),
            continuations=letter_continuations(len(q.choices)),
            gold=q.answer,
            subject=subject,
            category=category_of(subject),
            question=q.question,
            options=list(q.choices),
        )
        for index, q in test
    ]


# --- CSV layout (Hendrycks' data.tar and the vendored sample) ---------------------------------


def read_csv_rows(path: Path, *, indexed: bool = False) -> list[tuple[int, LetterQuestion]]:
    """(row index, question) pairs of an MMLU CSV (no header). `indexed`: the first column holds
    the row index in the original file (the vendored sample); otherwise rows are numbered from 0."""
    layout = _INDEXED_CSV_LAYOUT if indexed else _CSV_LAYOUT
    n_cols = layout.count(",") + 1
    rows: list[tuple[int, LetterQuestion]] = []
    try:
        with path.open(encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh)
            next_line = 1
            try:
                for record in reader:
                    # A quoted field may span lines: report the line where the row starts.
                    where, next_line = f"{path}:{next_line}", reader.line_num + 1
                    if not record:
                        continue
                    rows.append(_csv_question(record, where, indexed, n_cols, layout, len(rows)))
            except csv.Error as exc:
                raise UserError(f"{path}:{reader.line_num}: unreadable CSV ({exc})") from exc
    except FileNotFoundError as exc:
        raise UserError(f"{path} not found") from exc
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    return rows


def _csv_question(
    record: list[str], where: str, indexed: bool, n_cols: int, layout: str, position: int
) -> tuple[int, LetterQuestion]:
    if len(record) != n_cols:
        raise UserError(f"{where}: expected {n_cols} columns ({layout}), got {len(record)}")
    index = position
    if indexed:
        head, record = record[0], record[1:]
        if not head.strip().isdigit():
            raise UserError(f"{where}: first column must be the original row index, got {head!r}")
        index = int(head)
    question, *choices, answer = record
    if not question.strip():
        raise UserError(f"{where}: empty question")
    gold = parse_letter(answer, len(choices))
    if gold is None:
        raise UserError(f"{where}: answer must be one of A, B, C, D, got {answer!r}")
    return index, LetterQuestion(question=question, choices=tuple(choices), answer=gold)


def load_csv_dir(root: Path, *, task: str, indexed: bool = False, n_shots: int = N_SHOTS) -> list[McqItem]:
    """All subjects of a directory holding `dev/<subject>_dev.csv` and `test/<subject>_test.csv`."""
    if not root.is_dir():
        raise UserError(f"MMLU data directory {root} not found")
    dev_dir, test_dir = root / "dev", root / "test"
    for folder in (dev_dir, test_dir):
        if not folder.is_dir():
            raise UserError(
                f"{root} has no {folder.name}/ directory "
                "(expected dev/<subject>_dev.csv and test/<subject>_test.csv)"
            )
    test_files = sorted(test_dir.glob("*_test.csv"))
    if not test_files:
        raise UserError(f"no <subject>_test.csv files in {test_dir}")
    items: list[McqItem] = []
    for test_path in test_files:
        subject = test_path.name.removesuffix("_test.csv")
        dev_path = dev_dir / f"{subject}_dev.csv"
        if not dev_path.is_file():
            raise UserError(f"{dev_path} not found: the {N_SHOTS}-shot prompt takes its exemplars from it")
        dev = [q for _, q in read_csv_rows(dev_path)]
        if len(dev) < n_shots:
            raise UserError(f"{dev_path} has {len(dev)} rows; the {n_shots}-shot prompt needs {n_shots}")
        items.extend(build_items(task, subject, dev, read_csv_rows(test_path, indexed=indexed), n_shots))
    return items


def sample_dir() -> Path:
    """The vendored sample inside the installed `prompts` package."""
    root = importlib.resources.files(SAMPLE_PACKAGE).joinpath(SAMPLE_DIR)
    # setuptools installs (wheel or editable) unpack package data, so this is a real directory.
    if not isinstance(root, Path) or not root.is_dir():
        raise UserError(
            f"the vendored MMLU sample ({SAMPLE_PACKAGE}/{SAMPLE_DIR}) is missing from this install"
        )
    return root


def load_sample(*, task: str, n_shots: int = N_SHOTS) -> list[McqItem]:
    return load_csv_dir(sample_dir(), task=task, indexed=True, n_shots=n_shots)


# --- Hugging Face cais/mmlu ---------------------------------------------------------------------


def hf_question(row: dict[str, Any], where: str) -> LetterQuestion:
    question, choices, answer = row.get("question"), row.get("choices"), row.get("answer")
    if not isinstance(question, str) or not question.strip():
        raise UserError(f"{where}: `question` must be a non-empty string")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise UserError(f"{where}: `choices` must be a list of at least 2 strings")
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise UserError(f"{where}: `answer` must be an index into `choices`, got {answer!r}")
    return LetterQuestion(question=question, choices=tuple(choices), answer=answer)


def load_hf(*, task: str, local_dir: Path | None = None, n_shots: int = N_SHOTS) -> list[McqItem]:
    """`cais/mmlu`, one config per subject: from the hub, or from a local copy of the hub repo
    (`DIR/<subject>/{dev,test}-*.parquet`), whose subjects are its sub-directories."""
    if local_dir is None:
        subjects: Sequence[str] = SUBJECTS
    else:
        subjects = [c for c in hf_source.local_configs(local_dir) if c not in _HF_AGGREGATE_CONFIGS]
        if not subjects:
            raise UserError(f"no subject directories in {local_dir} (expected <subject>/test-*.parquet)")
    items: list[McqItem] = []
    for subject in subjects:
        splits = {}
        for split in ("dev", "test"):
            where = hf_source.describe(HF_DATASET, subject, split, local_dir)
            rows = hf_source.load_split(HF_DATASET, subject, split, local_dir=local_dir)
            splits[split] = [(i, hf_question(row, f"{where}, row {i}")) for i, row in enumerate(rows)]
        dev = [q for _, q in splits["dev"]]
        if len(dev) < n_shots:
            raise UserError(f"{HF_DATASET} {subject}: dev split has {len(dev)} rows, need {n_shots}")
        items.extend(build_items(task, subject, dev, splits["test"], n_shots))
    return items
