"""Adapter from the scorer's `McqRecord`s to the array metrics: pair by item, build arrays, summarise."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from servecmp.errors import UserError
from servecmp.metrics.kl import merge_topk
from servecmp.metrics.mcq import chosen_options
from servecmp.metrics.stats import DEFAULT_CONFIDENCE, DEFAULT_N_BOOT, FloatArray
from servecmp.metrics.summary import summarize_mcq
from servecmp.records import McqRecord

#: Item attributes the summary breaks results down by, when any paired item has them.
GROUP_FIELDS = ("task", "subject", "category")


@dataclass(frozen=True)
class PairedRecords:
    """Records of the items both endpoints answered, in item-id order."""

    base: list[McqRecord]
    cand: list[McqRecord]
    unpaired_baseline: int
    unpaired_candidate: int
    #: Records dropped because a later record of the same item replaced them (e.g. a resumed run).
    duplicates_baseline: int
    duplicates_candidate: int


def pair_records(base: Sequence[McqRecord], cand: Sequence[McqRecord]) -> PairedRecords:
    """Pair records by ``item_id`` (sorted), keeping each side's last record of an item.

    UserError when the two sides disagree on an item's gold answer or number of options, which
    means they did not run the same task.
    """
    b_by_id = {r.item_id: r for r in base}
    c_by_id = {r.item_id: r for r in cand}
    # One canonical order, not the files': records land in the order requests finish (and a
    # resumed or stored-baseline run appends them in another), and the bootstrap intervals, seeded,
    # depend on the order of the arrays. Sorted ids make the same records give the same summary.
    ids = sorted(i for i in b_by_id if i in c_by_id)
    for item_id in ids:
        b, c = b_by_id[item_id], c_by_id[item_id]
        if b.gold != c.gold or len(b.option_logprobs) != len(c.option_logprobs):
            raise UserError(
                f"item {item_id!r} differs between the runs (gold {b.gold} vs {c.gold}, "
                f"{len(b.option_logprobs)} vs {len(c.option_logprobs)} options): "
                "were both runs made on the same task?"
            )
    return PairedRecords(
        base=[b_by_id[i] for i in ids],
        cand=[c_by_id[i] for i in ids],
        unpaired_baseline=len(b_by_id) - len(ids),
        unpaired_candidate=len(c_by_id) - len(ids),
        duplicates_baseline=len(base) - len(b_by_id),
        duplicates_candidate=len(cand) - len(c_by_id),
    )


def option_matrix(records: Sequence[McqRecord], k: int) -> FloatArray:
    """``(n, k)`` option logprobs, padded with ``-inf`` for items with fewer than ``k`` options."""
    out = np.full((len(records), k), -np.inf)
    for i, r in enumerate(records):
        out[i, : len(r.option_logprobs)] = r.option_logprobs
    return out


def length_matrix(base: Sequence[McqRecord], cand: Sequence[McqRecord], k: int) -> FloatArray | None:
    """``(n, k)`` option lengths (padding 1), or None unless every paired record carries lengths.

    UserError if the two sides give an item different lengths: then they scored different texts.
    """
    if not all(len(r.option_lengths) == len(r.option_logprobs) for r in (*base, *cand)):
        return None
    out = np.ones((len(base), k))
    for i, (b, c) in enumerate(zip(base, cand, strict=True)):
        if b.option_lengths != c.option_lengths:
            raise UserError(f"item {b.item_id!r} has different option texts in the two runs")
        out[i, : len(b.option_lengths)] = b.option_lengths
    return out


def summarize_records(base: Sequence[McqRecord], cand: Sequence[McqRecord], *, seed: int = 0,
                      n_boot: int = DEFAULT_N_BOOT, confidence: float = DEFAULT_CONFIDENCE) -> dict[str, Any]:
    """`summarize_mcq` over two runs' records, plus a ``"pairing"`` section.

    Only items answered by both endpoints are compared. Top-k KL is included for the items where
    both records carry ``topk`` (duplicate token strings merged, see `merge_topk`); ``acc_norm`` when
    every record carries option lengths. Results are grouped by task (when the runs hold several),
    subject and category (when any item has one). UserError when no item is paired.
    """
    paired = pair_records(base, cand)
    n = len(paired.base)
    if n == 0:
        raise UserError(f"the runs share no item ({len(base)} baseline and {len(cand)} candidate records)")
    k = max(len(r.option_logprobs) for r in paired.base)
    if k == 0:
        raise UserError("the records hold no option logprobs")
    base_lp, cand_lp = option_matrix(paired.base, k), option_matrix(paired.cand, k)
    gold = np.array([r.gold for r in paired.base], dtype=np.int64)

    base_topk = [merge_topk(r.topk) if r.topk else None for r in paired.base]
    cand_topk = [merge_topk(r.topk) if r.topk else None for r in paired.cand]
    has_topk = any(b is not None and c is not None for b, c in zip(base_topk, cand_topk, strict=True))

    groups: dict[str, list[str | None]] = {}
    for field in GROUP_FIELDS:
        labels: list[str | None] = [getattr(r, field) for r in paired.base]
        distinct = {x for x in labels if x is not None}
        if distinct and not (field == "task" and len(distinct) == 1):
            groups[field] = labels

    try:
        summary = summarize_mcq(
            base_lp, cand_lp, gold,
            option_lengths=length_matrix(paired.base, paired.cand, k),
            base_topk=base_topk if has_topk else None,
            cand_topk=cand_topk if has_topk else None,
            groups=groups, seed=seed, n_boot=n_boot, confidence=confidence,
        )
    except ValueError as exc:
        raise UserError(f"cannot summarise the records: {exc}") from exc

    stored = np.array([r.chosen for r in paired.base]), np.array([r.chosen for r in paired.cand])
    recomputed = chosen_options(base_lp), chosen_options(cand_lp)
    summary["pairing"] = {
        "paired": n,
        "unpaired_baseline": paired.unpaired_baseline,
        "unpaired_candidate": paired.unpaired_candidate,
        "duplicates_baseline": paired.duplicates_baseline,
        "duplicates_candidate": paired.duplicates_candidate,
        # The metrics recompute each choice from the logprobs; a nonzero count flags a scorer whose
        # stored `chosen` disagrees (e.g. another tie rule).
        "stored_choice_mismatch": {
            "baseline": int(np.count_nonzero(stored[0] != recomputed[0])),
            "candidate": int(np.count_nonzero(stored[1] != recomputed[1])),
        },
    }
    summary["tasks"] = sorted({r.task for r in paired.base})
    return summary


def record_differences(a: Sequence[McqRecord], b: Sequence[McqRecord]) -> dict[str, tuple[bool, bool, float]]:
    """Per item both answered (last record of each): (correctness flipped, chosen option changed,
    option KL(a ‖ b), NaN where either answered nothing), keyed by item id. See
    `servecmp.metrics.floor`."""
    from servecmp.metrics.floor import item_differences

    paired = pair_records(a, b)
    if not paired.base:
        return {}
    k = max(len(r.option_logprobs) for r in paired.base)
    gold = np.array([r.gold for r in paired.base], dtype=np.int64)
    d = item_differences(option_matrix(paired.base, k), option_matrix(paired.cand, k), gold)
    return {r.item_id: (bool(d.flipped[i]), bool(d.changed[i]), float(d.kl[i]))
            for i, r in enumerate(paired.base)}
