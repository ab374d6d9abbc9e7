"""The MT-Bench comparison, computed from a run's questions, answers and judgments (no I/O).

Definitions (FastChat's where it has one):
- An endpoint's MT-Bench score is the mean of all its valid single-grading ratings over both turns
  (FastChat's show_result "Average"); per turn and per category likewise.
- The difference is paired by question: a question's score is the mean of its turn ratings, and a
  question counts only when both endpoints have a valid rating for every turn. Δ = candidate −
  baseline, with a 95% paired bootstrap interval and a two-sided Wilcoxon signed-rank test.
- Pairwise: each (question, turn) is judged in both orders; a verdict that changes with the order is
  a tie (MT-Bench's rule) and counts as position-inconsistent. Pairs with an error or an unreadable
  game in either order are left out of the tally and counted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from statistics import fmean
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from servecmp.judges.pairwise import PairOutcome, combine_games, tally
from servecmp.metrics.stats import paired_bootstrap_diff_ci, wilcoxon_paired
from servecmp.mtbench.questions import CATEGORIES, MtQuestion, QuestionId
from servecmp.mtbench.records import AnswerRecord, PairJudgment, SingleJudgment
from servecmp.records import ROLES, EndpointRole


class MeanScore(BaseModel):
    mean: float | None
    n: int


class EndpointScores(BaseModel):
    model: str
    answer_file: str
    score: MeanScore
    turns: dict[str, MeanScore]
    categories: dict[str, MeanScore]


class Delta(BaseModel):
    """candidate − baseline, paired by question."""

    point: float | None
    low: float | None
    high: float | None
    n: int
    confidence: float = 0.95


class Wilcoxon(BaseModel):
    statistic: float | None
    pvalue: float | None
    n: int
    n_nonzero: int


class PairwiseSummary(BaseModel):
    """Counted for the candidate against the baseline: a `servecmp.judges.pairwise.PairTally`'s counts
    and rates as stored (read from its attributes, so the two cannot drift apart)."""

    model_config = ConfigDict(from_attributes=True)

    n: int
    wins: int
    ties: int
    losses: int
    inconsistent: int
    inconsistency_rate: float | None
    win_rate_adjusted: float | None
    excluded: int


class JudgmentCounts(BaseModel):
    expected: int
    ok: int
    unparseable: int
    out_of_range: int
    errors: int
    missing: int


class Drop(BaseModel):
    question_id: QuestionId
    category: str
    baseline_score: float
    candidate_score: float
    diff: float
    questions: list[str]
    baseline_answers: list[str]
    candidate_answers: list[str]


#: Names this summary layout, as MCQ summaries say "servecmp.mcq_summary/1"; bumped on an incompatible change.
SUMMARY_SCHEMA: Literal["servecmp.mtbench_summary/1"] = "servecmp.mtbench_summary/1"


class _MtBenchHead(BaseModel):
    """What a one-candidate summary and a comparison both start with: layout, judge, mode, size."""

    # `schema` is the JSON key; the attribute has another name because BaseModel.schema exists.
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    schema_id: str = Field(alias="schema")
    kind: str = "mtbench"
    judge_model: str
    judge_url: str
    #: The offline demo: the baseline model judged (a small model's ratings only exercise the pipeline).
    judge_is_baseline: bool = False
    mode: str
    n_questions: int
    complete: bool


class MtBenchSummary(_MtBenchHead):
    schema_id: Literal["servecmp.mtbench_summary/1"] = Field(default=SUMMARY_SCHEMA, alias="schema")
    endpoints: dict[str, EndpointScores]
    delta: Delta
    delta_by_turn: dict[str, Delta] = Field(default_factory=dict)
    wilcoxon: Wilcoxon
    pairwise: PairwiseSummary | None
    pairwise_by_turn: dict[str, PairwiseSummary] = Field(default_factory=dict)
    single_judgments: JudgmentCounts
    pair_judgments: JudgmentCounts | None
    unparseable_examples: list[str] = Field(default_factory=list)
    largest_drops: list[Drop] = Field(default_factory=list)
    #: Math/reasoning/coding questions graded with the general prompt for lack of a reference.
    missing_references: list[QuestionId] = Field(default_factory=list)

    @property
    def candidate_model(self) -> str | None:
        """The candidate's model name, which labels its verdict (None when the run names none)."""
        cand = self.endpoints.get("candidate")
        return cand.model or None if cand is not None else None


def _mean(values: Sequence[float]) -> MeanScore:
    return MeanScore(mean=fmean(values) if values else None, n=len(values))


def endpoint_scores(model: str, answer_file: str, judgments: Sequence[SingleJudgment]) -> EndpointScores:
    valid = [j for j in judgments if j.score is not None]
    turns = sorted({j.turn for j in judgments})
    cats = [c for c in CATEGORIES if any(j.category == c for j in judgments)]
    cats += sorted({j.category for j in judgments} - set(cats))
    return EndpointScores(
        model=model,
        answer_file=answer_file,
        score=_mean([j.score for j in valid if j.score is not None]),
        turns={str(t): _mean([j.score for j in valid if j.turn == t and j.score is not None]) for t in turns},
        categories={
            c: _mean([j.score for j in valid if j.category == c and j.score is not None]) for c in cats
        },
    )


def per_question_scores(
    questions: Sequence[MtQuestion],
    judgments: Mapping[tuple[QuestionId, str, int], SingleJudgment],
    model: str,
    turns: Sequence[int] | None = None,
) -> dict[QuestionId, float]:
    """Mean rating over the question's turns (or the given turns), only where every one is valid."""
    out: dict[QuestionId, float] = {}
    for q in questions:
        wanted = [t for t in range(1, len(q.turns) + 1) if turns is None or t in turns]
        scores = [judgments.get((q.question_id, model, t)) for t in wanted]
        if wanted and all(s is not None and s.score is not None for s in scores):
            out[q.question_id] = fmean(s.score for s in scores if s is not None and s.score is not None)
    return out


def paired_delta(
    base: Mapping[QuestionId, float], cand: Mapping[QuestionId, float], *, seed: int = 0
) -> Delta:
    common = [qid for qid in base if qid in cand]
    est = paired_bootstrap_diff_ci([base[q] for q in common], [cand[q] for q in common], seed=seed)
    return Delta(point=est.point, low=est.low, high=est.high, n=est.n)


def pair_outcome(p: PairJudgment) -> PairOutcome | None:
    """The combined verdict, or None when either game has no readable verdict."""
    if p.g1_winner == "error" or p.g2_winner == "error":
        return None
    return combine_games(p.g1_winner, p.g2_winner)


def pairwise_summary(pairs: Sequence[PairJudgment]) -> PairwiseSummary:
    return PairwiseSummary.model_validate(tally(pair_outcome(p) for p in pairs))


def _single_counts(expected: int, judgments: Sequence[SingleJudgment]) -> JudgmentCounts:
    by = {s: sum(j.status == s for j in judgments) for s in ("ok", "unparseable", "out_of_range", "error")}
    return JudgmentCounts(
        expected=expected,
        ok=by["ok"],
        unparseable=by["unparseable"],
        out_of_range=by["out_of_range"],
        errors=by["error"],
        missing=expected - len(judgments),
    )


def _pair_counts(expected: int, pairs: Sequence[PairJudgment]) -> JudgmentCounts:
    """Counted per game (two per pair)."""
    statuses = [s for p in pairs for s in (p.g1_status, p.g2_status)]
    return JudgmentCounts(
        expected=2 * expected,
        ok=statuses.count("ok"),
        unparseable=statuses.count("unparseable"),
        out_of_range=0,
        errors=statuses.count("error"),
        missing=2 * (expected - len(pairs)),
    )


def largest_drops(
    questions: Sequence[MtQuestion],
    base: Mapping[QuestionId, float],
    cand: Mapping[QuestionId, float],
    answers: Mapping[EndpointRole, Mapping[QuestionId, AnswerRecord]],
    n: int,
) -> list[Drop]:
    """The `n` questions whose score fell most from baseline to candidate (only actual drops)."""
    drops = []
    for q in questions:
        qid = q.question_id
        if qid in base and qid in cand and cand[qid] < base[qid]:
            drops.append(
                Drop(
                    question_id=qid,
                    category=q.category,
                    baseline_score=base[qid],
                    candidate_score=cand[qid],
                    diff=cand[qid] - base[qid],
                    questions=list(q.turns),
                    baseline_answers=answers["baseline"][qid].turns,
                    candidate_answers=answers["candidate"][qid].turns,
                )
            )
    drops.sort(key=lambda d: d.diff)  # stable: ties keep question order
    return drops[: max(0, n)]


def build_summary(
    *,
    questions: Sequence[MtQuestion],
    answers: Mapping[EndpointRole, Mapping[QuestionId, AnswerRecord]],
    stems: Mapping[EndpointRole, str],
    models: Mapping[EndpointRole, str],
    single: Mapping[tuple[QuestionId, str, int], SingleJudgment],
    pairs: Mapping[tuple[QuestionId, int], PairJudgment],
    mode: str,
    judge_model: str,
    judge_url: str,
    judge_is_baseline: bool = False,
    show: int = 5,
    seed: int = 0,
) -> MtBenchSummary:
    qids = {q.question_id for q in questions}
    n_turns = sum(len(q.turns) for q in questions)
    wants_single = mode in ("single", "both")
    wants_pairs = mode in ("pairwise", "both")

    by_role = {
        role: [j for (qid, m, _), j in single.items() if m == stems[role] and qid in qids] for role in ROLES
    }
    scores = {
        role: endpoint_scores(models[role], f"model_answer/{stems[role]}.jsonl", by_role[role])
        for role in ROLES
    }
    per_q = {role: per_question_scores(questions, single, stems[role]) for role in ROLES}
    delta = paired_delta(per_q["baseline"], per_q["candidate"], seed=seed)
    common = [qid for qid in per_q["baseline"] if qid in per_q["candidate"]]
    w = wilcoxon_paired([per_q["baseline"][q] for q in common], [per_q["candidate"][q] for q in common])
    all_turns = sorted({t for q in questions for t in range(1, len(q.turns) + 1)})
    by_turn = {
        str(t): paired_delta(
            per_question_scores(questions, single, stems["baseline"], [t]),
            per_question_scores(questions, single, stems["candidate"], [t]),
            seed=seed,
        )
        for t in all_turns
    }

    pair_list = [p for (qid, _), p in pairs.items() if qid in qids]
    all_single = by_role["baseline"] + by_role["candidate"]
    single_counts = _single_counts(2 * n_turns if wants_single else len(all_single), all_single)
    pair_counts = _pair_counts(n_turns, pair_list) if wants_pairs else None
    unreadable = [j.judgment for j in all_single if j.status in ("unparseable", "out_of_range")]
    unreadable += [
        text
        for p in pair_list
        for text, status in ((p.g1_judgment, p.g1_status), (p.g2_judgment, p.g2_status))
        if status == "unparseable"
    ]
    complete = single_counts.missing == 0 and single_counts.errors == 0
    if pair_counts is not None:
        complete = complete and pair_counts.missing == 0 and pair_counts.errors == 0

    return MtBenchSummary(
        judge_model=judge_model,
        judge_url=judge_url,
        judge_is_baseline=judge_is_baseline,
        mode=mode,
        n_questions=len(questions),
        complete=complete,
        endpoints={role: scores[role] for role in ROLES},
        delta=delta,
        delta_by_turn=by_turn,
        wilcoxon=Wilcoxon(statistic=w.statistic, pvalue=w.pvalue, n=w.n, n_nonzero=w.n_nonzero),
        pairwise=pairwise_summary(pair_list) if wants_pairs else None,
        pairwise_by_turn={
            str(t): pairwise_summary([p for p in pair_list if p.turn == t])
            for t in sorted({p.turn for p in pair_list})
        }
        if wants_pairs
        else {},
        single_judgments=single_counts,
        pair_judgments=pair_counts,
        unparseable_examples=[" ".join(t.split())[:300] for t in unreadable[:5]],
        largest_drops=largest_drops(questions, per_q["baseline"], per_q["candidate"], answers, show),
        missing_references=[q.question_id for q in questions if q.needs_reference and q.reference is None],
    )


#: Names the several-candidates layout of summary.json (a one-candidate run keeps MtBenchSummary).
COMPARISON_SCHEMA: Literal["servecmp.mtbench_comparison/1"] = "servecmp.mtbench_comparison/1"


class MtComparedEndpoint(BaseModel):
    """An answering endpoint of a comparison: its name in the run, model, URL and answer file."""

    name: str
    model: str
    url: str
    answer_file: str


class MtCandidateResult(BaseModel):
    endpoint: MtComparedEndpoint
    #: This candidate against the baseline, exactly as a one-candidate run would summarise it.
    summary: MtBenchSummary

    @property
    def name(self) -> str:
        return self.endpoint.name


class MtLeaderboardRow(BaseModel):
    name: str
    model: str
    #: candidate − baseline MT-Bench score, paired by question, with its 95% interval.
    delta: Delta
    #: Pairwise against the baseline (None without pairwise judging).
    wins: int | None = None
    ties: int | None = None
    losses: int | None = None
    #: losses / pairs tallied: the `pairwise_loss` gate's estimate.
    loss_share: float | None = None


class MtBenchComparison(_MtBenchHead):
    """Several candidates against one baseline whose answers were generated once."""

    schema_id: Literal["servecmp.mtbench_comparison/1"] = Field(default=COMPARISON_SCHEMA, alias="schema")
    baseline: MtComparedEndpoint
    candidates: list[MtCandidateResult]
    #: Best ΔMT-Bench first (candidates without a Δ last, in run order).
    leaderboard: list[MtLeaderboardRow]


def _row(c: MtCandidateResult) -> MtLeaderboardRow:
    p = c.summary.pairwise
    return MtLeaderboardRow(
        name=c.endpoint.name,
        model=c.endpoint.model,
        delta=c.summary.delta,
        wins=p.wins if p is not None else None,
        ties=p.ties if p is not None else None,
        losses=p.losses if p is not None else None,
        loss_share=(p.losses / p.n if p.n else None) if p is not None else None,
    )


def build_comparison(
    *, baseline: MtComparedEndpoint, candidates: Sequence[tuple[MtComparedEndpoint, MtBenchSummary]]
) -> MtBenchComparison:
    results = [MtCandidateResult(endpoint=e, summary=s) for e, s in candidates]
    first = results[0].summary
    rows = [_row(c) for c in results]
    rows.sort(key=lambda r: (r.delta.point is None, -(r.delta.point or 0.0)))  # stable: ties keep run order
    # The judge, mode and question count are the run's: every candidate's summary holds the same.
    head = first.model_dump(include={"judge_model", "judge_url", "judge_is_baseline", "mode", "n_questions"})
    return MtBenchComparison(
        **head,
        complete=all(c.summary.complete for c in results),
        baseline=baseline,
        candidates=results,
        leaderboard=rows,
    )


def load_stored(path: Path) -> MtBenchSummary | MtBenchComparison:
    """A stored MT-Bench summary.json (a run directory's, or the file itself), validated; one-line
    UserError for another layout or a newer version."""
    from servecmp.runstore import SUMMARY, check_schema, read_json, validate_as

    file = path / SUMMARY if path.is_dir() else path
    raw = read_json(file)
    if check_schema(raw, file, (SUMMARY_SCHEMA, COMPARISON_SCHEMA)) == COMPARISON_SCHEMA:
        return validate_as(MtBenchComparison, raw, file, "a valid MT-Bench comparison")
    return validate_as(MtBenchSummary, raw, file, "a valid MT-Bench summary")
