"""A `servecmp gen` run's summary: records → the typed, versioned `GenSummary` (summary.json).

Always recomputed from the run directory (manifest.json, items.jsonl, records.jsonl,
teacher_forcing.jsonl) with no endpoint: a finished run and `servecmp report RUN` give the same
numbers by construction. Schema "servecmp.gen_summary/1"; `read_summary` refuses another with one line.

Per endpoint: accuracy (Wilson) under each extraction (GSM8K: lm-eval's strict and flexible; other
tasks: their grader), no-answer and truncation rates (Wilson, over generations), mean length.

Per compared endpoint (each candidate; the secondary and the floor pass as noise floors), over the
items both endpoints finished:
- correctness per extraction: flips c→w / w→c with exact McNemar, each with Wilson, and the accuracy
  difference with a paired bootstrap interval (servecmp.metrics.gen). Sampled runs (--samples K):
  pass@1 of each and their paired-bootstrap difference, and the flips of the majority-vote answers;
- greedy runs: identical-output share (Wilson) and the first differing position over the items that
  differ, in token ids when every generation was tokenized by the endpoint's /tokenize, else in
  characters (stated as ``divergence_unit``);
- completion length ratio mean(candidate)/mean(baseline) tokens, paired bootstrap interval;
- teacher forcing (greedy runs): per item the mean and maximum (and its position) of the per-token
  KL(baseline ‖ endpoint) along the baseline's answer, and the KL at the first divergence; their
  distributions over items (bootstrap interval of the mean); or why it is unavailable.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from servecmp.errors import UserError
from servecmp.gen.records import GenRecord, TfRecord
from servecmp.gen.rundir import load_records, load_tf, read_items, tf_targets
from servecmp.gen.settings import BASELINE, GenEndpoint, GenManifest, GenStoredBaseline, read_manifest
from servecmp.metrics.mcq import Flips
from servecmp.metrics.stats import Distribution, Estimate, Proportion
from servecmp.runstore import read_json
from servecmp.tasks.gen_task import GSM8K_GRADER, GenItem

SCHEMA: Literal["servecmp.gen_summary/1"] = "servecmp.gen_summary/1"
DEFAULT_SHOW = 10
#: The bootstrap seed of every interval (fixed, so a report reproduces the run's numbers).
BOOT_SEED = 0
ZERO_NOTE = ("both endpoints solve 0 of {n} items ({x}): accuracy flips cannot show on a model at 0%; "
             "the divergence, length and teacher-forced KL measures still compare the two")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _pyd(model: type[Any], value: Any) -> Any:
    """``value`` as ``model``, a metrics dataclass: JSON-safe (NaN -> None) and validated."""
    from servecmp.metrics.summary import jsonable

    return TypeAdapter(model).validate_python(jsonable(value))


class GenRunInfo(_Model):
    task: str
    source: str
    n_items_planned: int
    #: Items the baseline finished.
    n_items: int
    complete: bool
    api: str | None
    max_tokens: int
    samples: int
    temperature: float
    #: The extractions reported, primary first (GSM8K: "strict", "flexible").
    extractions: list[str]
    #: How first divergences are counted: "tokens" (the endpoints' /tokenize) or "characters".
    divergence_unit: Literal["tokens", "characters"]
    #: What completion lengths count: "tokens" (usage or /tokenize), or "characters" when a record has
    #: neither (lm-eval sample logs).
    length_unit: Literal["tokens", "characters"] = "tokens"
    started_at: str
    finished_at: str | None
    #: The stored baseline whose records stood in for the baseline endpoint (--baseline-run).
    stored_baseline: GenStoredBaseline | None = None


class EndpointBlock(_Model):
    name: str
    role: str
    model: str | None
    url: str
    #: Items with every sample on disk.
    n_items: int
    n_generations: int
    #: Per extraction (same order as run.extractions): the share of generations graded correct.
    accuracy: list[Proportion]
    no_answer: Proportion
    truncated: Proportion
    mean_completion_tokens: float | None


class Correctness(_Model):
    extraction: str
    n: int
    baseline_accuracy: Proportion
    candidate_accuracy: Proportion
    flips: Flips
    correct_to_wrong: Proportion
    wrong_to_correct: Proportion
    delta_acc: Estimate


class Sampled(_Model):
    """Repeated sampling (--samples K): pass@1 per endpoint and the paired difference."""

    k: int
    baseline_pass_at_1: Estimate
    candidate_pass_at_1: Estimate
    delta_pass_at_1: Estimate


class TeacherForcing(_Model):
    #: Items scored.
    n: int
    #: Why nothing (or not every item) was scored: error code → items.
    errors: dict[str, int] = Field(default_factory=dict)
    #: Set when no item could be scored: the measure is unavailable, and why.
    unavailable: str | None = None
    #: Per item: mean KL per token along the baseline's answer (nats).
    kl_mean: Distribution | None = None
    #: Per item: the largest per-token KL.
    kl_max: Distribution | None = None
    #: Per item whose outputs differ: the KL at the first differing token (token unit only).
    kl_at_divergence: Distribution | None = None


class ItemRow(_Model):
    item_id: str
    base_answer: str | None
    cand_answer: str | None
    base_correct: bool
    cand_correct: bool
    #: "c2w", "w2c" or None (primary extraction; sampled runs: the majority vote).
    flip: Literal["c2w", "w2c"] | None
    identical: bool
    first_divergence: int | None
    base_tokens: int | None
    cand_tokens: int | None
    tf_kl_mean: float | None = None
    tf_kl_max: float | None = None
    tf_kl_max_pos: int | None = None
    tf_kl_at_divergence: float | None = None
    #: The per-token KL along the baseline's answer (for the HTML strip); not written to summary.json
    #: or --json (teacher_forcing.jsonl holds it), so the summary stays small on thousands of items.
    tf_kl: list[float] | None = Field(default=None, exclude=True)


class Comparison(_Model):
    name: str
    role: str
    model: str | None
    url: str
    #: Items both endpoints finished.
    n: int
    correctness: list[Correctness]
    sampled: Sampled | None = None
    identical: Proportion | None
    first_divergence: Distribution | None
    length_ratio: Estimate
    #: The compared endpoint's generations (paired items) with nothing extracted (primary extraction).
    no_answer: Proportion
    teacher_forcing: TeacherForcing | None
    items: list[ItemRow]

    @property
    def primary(self) -> Correctness:
        return self.correctness[0]


class GenSummary(_Model):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_: Literal["servecmp.gen_summary/1"] = Field(default=SCHEMA, alias="schema")
    run: GenRunInfo
    endpoints: list[EndpointBlock]
    candidates: list[Comparison]
    floors: list[Comparison]
    notes: list[str]

    def candidate(self, name: str) -> Comparison:
        return next(c for c in self.candidates if c.name == name)


def read_summary(path: Path) -> GenSummary:
    raw = read_json(path)
    if not isinstance(raw, dict) or raw.get("schema") != SCHEMA:
        schema = raw.get("schema") if isinstance(raw, dict) else None
        raise UserError(f"{path}: schema {schema!r} is not one this servecmp reads ({SCHEMA})")
    return GenSummary.model_validate(raw)


# ---- records ------------------------------------------------------------------------------------


# ---- building -----------------------------------------------------------------------------------


def _extractions(items: Sequence[GenItem]) -> list[str]:
    if items and all(it.grader == GSM8K_GRADER for it in items):
        return ["strict", "flexible"]
    kinds = sorted({it.grader.split(":", 1)[0] for it in items})
    return [kinds[0] if len(kinds) == 1 else "grader"]


def _correct(r: GenRecord, extraction: str) -> bool:
    return bool(r.correct_flexible) if extraction == "flexible" else r.correct


def _answer(r: GenRecord, extraction: str) -> str | None:
    return r.answer_flexible if extraction == "flexible" else r.answer


def _tokens(r: GenRecord, unit: str) -> float:
    if unit == "characters":
        return float(len(r.text))
    if r.completion_tokens is not None:
        return float(r.completion_tokens)
    return float(len(r.token_ids or []))


def _endpoint_block(e: GenEndpoint, recs: Sequence[GenRecord], extractions: Sequence[str]) -> EndpointBlock:
    from servecmp.metrics.gen import endpoint_rates
    from servecmp.metrics.stats import wilson_ci

    rates = endpoint_rates([r.answer for r in recs], [r.finish_reason for r in recs])
    lengths = [r.completion_tokens for r in recs if r.completion_tokens is not None]
    return EndpointBlock(
        name=e.name, role=e.role, model=e.model, url=e.normalised_url(), n_items=len({r.item_id for r in recs}),
        n_generations=len(recs),
        accuracy=[_pyd(Proportion, wilson_ci(sum(_correct(r, x) for r in recs), len(recs))) for x in extractions],
        no_answer=_pyd(Proportion, rates.no_answer), truncated=_pyd(Proportion, rates.truncated),
        mean_completion_tokens=float(np.mean(lengths)) if lengths else None,
    )


def _correctness(extraction: str, b: Sequence[bool], c: Sequence[bool]) -> Correctness:
    from servecmp.metrics.gen import paired_correctness

    pc = paired_correctness(np.asarray(b, dtype=bool), np.asarray(c, dtype=bool), seed=BOOT_SEED)
    return Correctness(extraction=extraction, n=pc.n, baseline_accuracy=_pyd(Proportion, pc.baseline_accuracy),
                       candidate_accuracy=_pyd(Proportion, pc.candidate_accuracy), flips=_pyd(Flips, pc.flips),
                       correct_to_wrong=_pyd(Proportion, pc.correct_to_wrong),
                       wrong_to_correct=_pyd(Proportion, pc.wrong_to_correct), delta_acc=_pyd(Estimate, pc.delta_acc))


def _distribution(values: Sequence[float]) -> Distribution:
    from servecmp.metrics.stats import describe

    return _pyd(Distribution, describe(np.asarray(values, dtype=np.float64), seed=BOOT_SEED))


def _teacher_forcing(name: str, item_ids: Sequence[str], tf: dict[tuple[str, str], TfRecord],
                     rows: dict[str, ItemRow], unit: str) -> TeacherForcing:
    errors: Counter[str] = Counter()
    means, maxes, at_div = [], [], []
    for iid in item_ids:
        rec = tf.get((name, iid))
        if rec is None:
            errors["not_scored"] += 1
            continue
        if rec.error is not None or not rec.kl:
            errors[rec.error or "empty_answer"] += 1
            continue
        kl = np.asarray(rec.kl, dtype=np.float64)
        row = rows[iid]
        row.tf_kl = list(rec.kl)
        row.tf_kl_mean = float(kl.mean())
        row.tf_kl_max_pos = int(kl.argmax())
        row.tf_kl_max = float(kl[row.tf_kl_max_pos])
        means.append(row.tf_kl_mean)
        maxes.append(row.tf_kl_max)
        d = row.first_divergence
        if unit == "tokens" and d is not None and d < kl.size:
            row.tf_kl_at_divergence = float(kl[d])
            at_div.append(row.tf_kl_at_divergence)
    if not means:
        reason = ", ".join(f"{k} ({v} items)" for k, v in errors.most_common()) or "no items"
        return TeacherForcing(n=0, errors=dict(errors), unavailable=_tf_reason(errors) or reason)
    return TeacherForcing(n=len(means), errors=dict(errors), kl_mean=_distribution(means),
                          kl_max=_distribution(maxes), kl_at_divergence=_distribution(at_div) if at_div else None)


_TF_REASONS = {
    "no_prompt_logprobs": "the endpoint returns no prompt_logprobs (vLLM's teacher forcing)",
    "baseline_no_prompt_logprobs": "the baseline returns no prompt_logprobs (vLLM's teacher forcing)",
    "no_tokenize": "the baseline has no /tokenize to render prompts and answers to token ids",
    "empty_answer": "the baseline's answers are empty",
}


def _tf_reason(errors: Counter[str]) -> str | None:
    if not errors:
        return None
    code = errors.most_common(1)[0][0]
    return _TF_REASONS.get(code)


def _compare(manifest: GenManifest, e: GenEndpoint, base: dict[str, list[GenRecord]],
             other: dict[str, list[GenRecord]], extractions: Sequence[str], tf: dict[tuple[str, str], TfRecord],
             unit: str, length_unit: str) -> Comparison:
    from servecmp.metrics.gen import first_divergence, length_ratio, majority_correct, paired_pass_at_1

    ids = [iid for iid in base if iid in other]
    greedy = manifest.greedy
    rows: dict[str, ItemRow] = {}
    correctness: list[Correctness] = []
    sampled = None
    if greedy:
        for x in extractions:
            correctness.append(_correctness(x, [_correct(base[i][0], x) for i in ids],
                                            [_correct(other[i][0], x) for i in ids]))
        b_ok = [_correct(base[i][0], extractions[0]) for i in ids]
        c_ok = [_correct(other[i][0], extractions[0]) for i in ids]
    else:
        for x in extractions:
            bm = majority_correct([[_answer(r, x) for r in base[i]] for i in ids],
                                  [[_correct(r, x) for r in base[i]] for i in ids])
            cm = majority_correct([[_answer(r, x) for r in other[i]] for i in ids],
                                  [[_correct(r, x) for r in other[i]] for i in ids])
            correctness.append(_correctness(f"{x}, majority of {manifest.samples}", list(bm), list(cm)))
            if x == extractions[0]:
                b_ok, c_ok = list(bm), list(cm)
        x0 = extractions[0]
        pm = paired_pass_at_1([[_correct(r, x0) for r in base[i]] for i in ids],
                              [[_correct(r, x0) for r in other[i]] for i in ids], seed=BOOT_SEED) if ids else None
        if pm is not None:
            sampled = Sampled(k=manifest.samples, baseline_pass_at_1=_pyd(Estimate, pm.a),
                              candidate_pass_at_1=_pyd(Estimate, pm.b), delta_pass_at_1=_pyd(Estimate, pm.diff))
    positions: list[int | None] = []
    for i, iid in enumerate(ids):
        rb, rc = base[iid][0], other[iid][0]
        if unit == "tokens" and rb.token_ids is not None and rc.token_ids is not None:
            d = first_divergence(rb.token_ids, rc.token_ids)
        else:
            d = first_divergence(rb.text, rc.text)
        positions.append(d)
        flip: Literal["c2w", "w2c"] | None = None
        if b_ok[i] != c_ok[i]:
            flip = "c2w" if b_ok[i] else "w2c"
        x0 = extractions[0]
        rows[iid] = ItemRow(item_id=iid, base_answer=_answer(rb, x0), cand_answer=_answer(rc, x0),
                            base_correct=b_ok[i], cand_correct=c_ok[i], flip=flip, identical=rb.text == rc.text,
                            first_divergence=d if greedy else None, base_tokens=rb.completion_tokens,
                            cand_tokens=rc.completion_tokens)
    identical = first_div = None
    if greedy:
        from servecmp.metrics.gen import divergence_summary

        div = divergence_summary(positions, seed=BOOT_SEED)
        identical, first_div = _pyd(Proportion, div.identical), _pyd(Distribution, div.position)
    ratio = length_ratio([float(np.mean([_tokens(r, length_unit) for r in base[i]])) for i in ids],
                         [float(np.mean([_tokens(r, length_unit) for r in other[i]])) for i in ids], seed=BOOT_SEED)
    teacher = None
    if manifest.teacher_forcing and greedy and e.role in ("candidate", "secondary"):
        teacher = _teacher_forcing(e.name, ids, tf, rows, unit)
    elif e.role in ("candidate", "secondary"):
        teacher = TeacherForcing(n=0, unavailable="sampled run: teacher forcing follows a greedy answer"
                                 if not greedy else "turned off for this run (--no-teacher-forcing)")
    from servecmp.metrics.stats import wilson_ci

    answers = [r.answer for i in ids for r in other[i]]
    no_answer = _pyd(Proportion, wilson_ci(sum(a is None for a in answers), len(answers)))
    return Comparison(name=e.name, role=e.role, model=e.model, url=e.normalised_url(), n=len(ids),
                      correctness=correctness, sampled=sampled, identical=identical, first_divergence=first_div,
                      length_ratio=_pyd(Estimate, ratio), no_answer=no_answer, teacher_forcing=teacher,
                      items=list(rows.values()))


def _fmt_rate(p: Proportion) -> str:
    if p.rate is None or p.low is None or p.high is None:
        return "n/a"
    return f"{p.rate:.1%} [{p.low:.1%}, {p.high:.1%}]"


def _notes(manifest: GenManifest, endpoints: list[EndpointBlock], candidates: list[Comparison],
           floors: list[Comparison]) -> list[str]:
    notes = []
    for c in candidates:
        p = c.primary
        if p.n and p.baseline_accuracy.count == 0 and p.candidate_accuracy.count == 0:
            every = all(k.baseline_accuracy.count == 0 and k.candidate_accuracy.count == 0 for k in c.correctness)
            x = "all extractions" if every else p.extraction
            notes.append(f"{c.name}: " + ZERO_NOTE.format(n=p.n, x=x))
        for f in floors:
            fr, cr = f.primary.flips.rate, p.flips.rate
            if fr.high is None or cr.low is None:
                continue
            within = cr.low <= fr.high
            notes.append(f"{c.name}: flips {_fmt_rate(cr)} against the noise floor ({f.name}) {_fmt_rate(fr)}: "
                         + ("within the floor (the intervals overlap)" if within else "above the floor"))
    return notes


def build_summary(manifest: GenManifest, items: Sequence[GenItem], records: Sequence[GenRecord],
                  tf: dict[tuple[str, str], TfRecord]) -> GenSummary:
    extractions = _extractions(items)
    order = {it.item_id: i for i, it in enumerate(items)}
    by_ep: dict[str, dict[str, list[GenRecord]]] = {e.name: {} for e in manifest.endpoints}
    for r in sorted(records, key=lambda r: (order.get(r.item_id, math.inf), r.sample)):
        if r.endpoint in by_ep and r.item_id in order:
            by_ep[r.endpoint].setdefault(r.item_id, []).append(r)
    tokenized = all(r.token_ids is not None for r in records if r.text)
    unit: Literal["tokens", "characters"] = "tokens" if tokenized and records else "characters"
    counted = all(r.completion_tokens is not None or r.token_ids is not None for r in records)
    length_unit: Literal["tokens", "characters"] = "tokens" if counted else "characters"
    endpoints = [_endpoint_block(e, [r for rs in by_ep[e.name].values() for r in rs], extractions)
                 for e in manifest.endpoints]
    base = by_ep[BASELINE]
    candidates = [_compare(manifest, e, base, by_ep[e.name], extractions, tf, unit, length_unit)
                  for e in manifest.candidates]
    floors = [_compare(manifest, e, base, by_ep[e.name], extractions, tf, unit, length_unit) for e in manifest.floors]
    floor_set = set(manifest.floor_items)
    complete = all(
        len(by_ep[e.name]) == (len(floor_set) if e.role == "floor" else len(items)) for e in manifest.endpoints)
    if complete and manifest.teacher_forcing and manifest.greedy:
        complete = all((n, iid) in tf for n in tf_targets(manifest) for iid in base)
    run = GenRunInfo(task=manifest.task, source=manifest.source, n_items_planned=manifest.n_items,
                     n_items=len(base), complete=complete, api=manifest.baseline.api, max_tokens=manifest.max_tokens,
                     samples=manifest.samples, temperature=manifest.temperature, extractions=extractions,
                     divergence_unit=unit, length_unit=length_unit, started_at=manifest.started_at,
                     finished_at=manifest.finished_at, stored_baseline=manifest.stored_baseline)
    return GenSummary(run=run, endpoints=endpoints, candidates=candidates, floors=floors,
                      notes=_notes(manifest, endpoints, candidates, floors))


def load_result(run_dir: Path, *, show: int = DEFAULT_SHOW) -> GenSummary:
    """The summary of the gen run in ``run_dir``, recomputed from its files; writes nothing.
    (``show`` is the renderers' business: every item's row is kept for the HTML page.)"""
    manifest = read_manifest(run_dir)
    items = read_items(run_dir, manifest)
    return build_summary(manifest, items, load_records(run_dir, manifest.samples), load_tf(run_dir))
