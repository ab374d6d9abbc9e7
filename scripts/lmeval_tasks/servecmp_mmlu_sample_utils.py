"""Helpers that `servecmp_mmlu_sample.yaml` loads with `!function` (lm-eval imports this file by path).

lm-eval's own MMLU is one task per subject, each with its own dev split, so `first_n` gives each
subject its own exemplars. Here one task holds items of several subjects (so one samples log per
endpoint covers them all), so the exemplars must be chosen per evaluated document. lm-eval 0.4.13
hands a sampler the evaluated document only when the few-shot split is the test split, hence the
layout: the `test` split is test.jsonl + dev.jsonl, rows tagged by `role`; the evaluated docs keep
role "test", the few-shot pool keeps role "dev", and `SubjectFirstN` takes the first n pool rows of
the document's subject, i.e. lm-eval's `first_n` applied per subject, as lm-eval's mmlu does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lm_eval.api.samplers import ContextSampler

TEST_ROLE = "test"
DEV_ROLE = "dev"


def _is_test(doc: dict[str, Any]) -> bool:
    return bool(doc["role"] == TEST_ROLE)


def _is_dev(doc: dict[str, Any]) -> bool:
    return bool(doc["role"] == DEV_ROLE)


def eval_docs(dataset: Any) -> Any:
    """The evaluated documents (a datasets.Dataset: lm-eval reads its `.features`)."""
    return dataset.filter(_is_test)


def fewshot_pool(dataset: Any) -> Any:
    """The few-shot pool: every subject's dev rows, in file order."""
    return dataset.filter(_is_dev)


class SubjectFirstN(ContextSampler):
    """The first n dev rows of the evaluated document's subject."""

    def sample(
        self, n: int, eval_doc: dict[str, Any] | None = None, df: Sequence[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> Sequence[dict[str, Any]]:
        if eval_doc is None:
            raise ValueError("SubjectFirstN needs the evaluated document: set fewshot_split to the test split")
        pool = [d for d in self.fewshot_docs() if d["subject"] == eval_doc["subject"]]
        if len(pool) < n:
            raise ValueError(f"subject {eval_doc['subject']!r} has {len(pool)} dev rows; {n} requested")
        return pool[:n]
