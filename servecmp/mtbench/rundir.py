"""Where an MT-Bench run keeps its files, and reading them back (the last record per key wins).

<run>/manifest.json                       MtBenchManifest (kind "mtbench", version 2; see manifest.py)
<run>/questions.jsonl                     the selected questions, references attached
<run>/model_answer/<model>.jsonl          FastChat answer files, one per endpoint
<run>/model_judgment/<judge>_single.jsonl FastChat single-grading judgments
<run>/model_judgment/<judge>_pair.jsonl   FastChat pairwise judgments
<run>/judge_cache.jsonl                   judgments by request hash (see judges.cache)
<run>/summary.json                        the report (MtBenchSummary) as the run last wrote it;
                                          `run.load_summary` recomputes it from the files above
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from servecmp.judges.cache import CACHE_FILE
from servecmp.mtbench.questions import QuestionId
from servecmp.mtbench.records import AnswerRecord, PairJudgment, SingleJudgment
from servecmp.runstore import MANIFEST, SUMMARY, load_records


def file_stem(model: str) -> str:
    """A model name made safe as a file name (FastChat names answer files after the model)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("._") or "model"


def answer_stems(baseline_model: str, candidate_model: str) -> tuple[str, str]:
    """Answer-file names for the two endpoints; suffixed by role when both serve the same name."""
    base, cand = file_stem(baseline_model), file_stem(candidate_model)
    if base == cand:
        return f"{base}-baseline", f"{cand}-candidate"
    return base, cand


@dataclass(frozen=True)
class MtRunPaths:
    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def summary(self) -> Path:
        return self.root / SUMMARY

    @property
    def questions(self) -> Path:
        return self.root / "questions.jsonl"

    @property
    def cache(self) -> Path:
        return self.root / CACHE_FILE

    def answers(self, stem: str) -> Path:
        return self.root / "model_answer" / f"{stem}.jsonl"

    def single(self, judge_model: str) -> Path:
        return self.root / "model_judgment" / f"{file_stem(judge_model)}_single.jsonl"

    def pair(self, judge_model: str) -> Path:
        return self.root / "model_judgment" / f"{file_stem(judge_model)}_pair.jsonl"

    def make_dirs(self) -> None:
        (self.root / "model_answer").mkdir(parents=True, exist_ok=True)
        (self.root / "model_judgment").mkdir(parents=True, exist_ok=True)


def load_answers(path: Path) -> dict[QuestionId, AnswerRecord]:
    return {r.question_id: r for r in load_records(path, AnswerRecord)}


def load_single(path: Path) -> dict[tuple[QuestionId, str, int], SingleJudgment]:
    return {(r.question_id, r.model, r.turn): r for r in load_records(path, SingleJudgment)}


def load_pairs(path: Path, model_2: str | None = None) -> dict[tuple[QuestionId, int], PairJudgment]:
    """Pairwise judgments by (question, turn); `model_2`: only those against that candidate's answer file
    (a run with several candidates keeps every candidate's pairs in one file, as FastChat does)."""
    return {
        (r.question_id, r.turn): r
        for r in load_records(path, PairJudgment)
        if model_2 is None or r.model_2 == model_2
    }
