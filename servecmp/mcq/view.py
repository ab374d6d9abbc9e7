"""What every rendering of an MCQ run reads, loaded from its run directory once and never written.

`McqView` bundles the typed comparison (`McqComparison`, the numbers of every table), the manifest
(settings), the per-item quantities of each candidate (`PerItem`: computed by the same metric
functions as the summary, in the same step, so histogram counts add up to the summary's n) and the
items' question and option texts from the run's items.jsonl. Renderers (terminal, JSON, HTML) take
a view and compute nothing; a run directory copied to a machine without the task's data renders the
same page.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from servecmp.mcq.compare import McqComparison, read_comparison
from servecmp.mcq.records import ITEMS, RECORDS, McqItem, McqRecord
from servecmp.mcq.settings import McqManifest
from servecmp.runstore import load_records


@dataclass(frozen=True)
class ItemText:
    question: str
    options: list[str]


@dataclass(frozen=True)
class ItemView:
    """One item both endpoints answered, as the page shows it."""

    item_id: str
    subject: str | None
    category: str | None
    gold: int
    base_probs: list[float]
    cand_probs: list[float]
    base_choice: int
    cand_choice: int
    option_kl: float | None
    topk_kl: float | None
    margin: float | None

    @property
    def kind(self) -> str:
        """"c2w", "w2c", "chg" (another wrong option) or "same"."""
        b, c = self.base_choice == self.gold, self.cand_choice == self.gold
        if b and not c:
            return "c2w"
        if c and not b:
            return "w2c"
        return "chg" if self.base_choice != self.cand_choice else "same"


@dataclass
class PerItem:
    items: list[ItemView]
    option_kl: np.ndarray
    topk_kl: np.ndarray | None
    p_rest: np.ndarray | None
    margin: np.ndarray
    base_correct: np.ndarray




def per_item(base: Sequence[McqRecord], cand: Sequence[McqRecord]) -> PerItem:
    """The per-item quantities of the summary, from the records (the summary's own functions)."""
    from servecmp.mcq.from_records import option_matrix, pair_records
    from servecmp.metrics.kl import merge_topk, topk_kl
    from servecmp.metrics.mcq import chosen_options, option_kl, option_log_probs, top_margin

    paired = pair_records(base, cand)
    k = max((len(r.option_logprobs) for r in paired.base), default=1)
    b_lp, c_lp = option_matrix(paired.base, k), option_matrix(paired.cand, k)
    gold = np.array([r.gold for r in paired.base], dtype=np.int64)
    with np.errstate(all="ignore"):
        b_p, c_p = np.exp(option_log_probs(b_lp)), np.exp(option_log_probs(c_lp))
    b_ch, c_ch = chosen_options(b_lp), chosen_options(c_lp)
    kl = option_kl(b_lp, c_lp).kl
    margin = top_margin(b_lp)
    tk = pr = None
    b_top = [merge_topk(r.topk) if r.topk else None for r in paired.base]
    c_top = [merge_topk(r.topk) if r.topk else None for r in paired.cand]
    if any(x is not None and y is not None for x, y in zip(b_top, c_top, strict=True)):
        t = topk_kl(b_top, c_top)
        tk, pr = t.kl_hat, t.p_rest

    def f(x: float) -> float | None:
        return float(x) if math.isfinite(x) else None

    views = []
    for i, r in enumerate(paired.base):
        n_opt = len(r.option_logprobs)
        views.append(ItemView(
            item_id=r.item_id, subject=r.subject, category=r.category, gold=int(gold[i]),
            base_probs=[float(x) for x in b_p[i, :n_opt]], cand_probs=[float(x) for x in c_p[i, :n_opt]],
            base_choice=int(b_ch[i]), cand_choice=int(c_ch[i]), option_kl=f(kl[i]),
            topk_kl=f(tk[i]) if tk is not None else None, margin=f(margin[i]),
        ))
    return PerItem(items=views, option_kl=kl, topk_kl=tk, p_rest=pr, margin=margin, base_correct=b_ch == gold)




@dataclass(frozen=True)
class McqView:
    comparison: McqComparison
    #: None for a comparison without a run directory (lm-eval logs, a summary file).
    manifest: McqManifest | None = None
    #: Per candidate name: the items both it and the baseline answered (main pass only).
    per_item: Mapping[str, PerItem] = field(default_factory=dict)
    texts: Mapping[str, ItemText] = field(default_factory=dict)
    #: Why the item texts are missing, when they are.
    texts_missing: str | None = None


def view_from_records(comparison: McqComparison, records: Sequence[McqRecord], *,
                      manifest: McqManifest | None = None, texts: Mapping[str, ItemText] | None = None,
                      texts_missing: str | None = None) -> McqView:
    main: dict[str, list[McqRecord]] = {}
    for r in records:
        if not r.repeat:
            main.setdefault(r.endpoint, []).append(r)
    per = {c.name: per_item(main["baseline"], main[c.name]) for c in comparison.candidates
           if main.get("baseline") and main.get(c.name)}
    return McqView(comparison=comparison, manifest=manifest, per_item=per, texts=dict(texts or {}),
                   texts_missing=texts_missing)


def item_texts(items: Sequence[McqItem]) -> dict[str, ItemText]:
    return {it.item_id: ItemText(it.question, list(it.options)) for it in items if it.question or it.options}


def load_view(run_dir: Path, comparison: McqComparison | None = None) -> McqView:
    """The view of a run directory, read-only (no file in it is written). ``comparison``: the run's
    own, when the caller has just computed it (the end of a run), so it is not computed twice."""
    from servecmp.mcq.settings import read_manifest

    if comparison is None:
        comparison = read_comparison(run_dir)
    manifest = read_manifest(run_dir)
    records = load_records(run_dir / RECORDS, McqRecord)
    texts: dict[str, ItemText] = {}
    missing = None
    if (run_dir / ITEMS).is_file():
        texts = item_texts(load_records(run_dir / ITEMS, McqItem))
    else:
        missing = "the run predates items.jsonl (servecmp writes it when a run starts; resuming the run adds it)"
    return view_from_records(comparison, records, manifest=manifest, texts=texts, texts_missing=missing)
