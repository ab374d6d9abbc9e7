"""`servecmp gen --from-lm-eval BASE CAND`: two lm-eval `gsm8k` sample logs (--log_samples) compared
as a gen run, with no endpoint.

An lm-eval gsm8k samples file has one line per document and filter ("strict-match",
"flexible-extract"), each with the generation (``resps[0][0]``), lm-eval's extraction
(``filtered_resps[0]``, "[invalid]" when nothing matched), the document and its gold solution.
servecmp re-extracts from ``resps`` with its own copy of lm-eval's filters
(`servecmp.tasks.extract`) and grades with lm-eval's exact_match, then states how many of its
extractions equal lm-eval's ``filtered_resps`` (parity). Item ids are ``gsm8k/<doc_id>``.
Lengths and first divergences are counted in characters: the logs hold no token ids.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from servecmp.errors import UserError
from servecmp.gen.records import GenRecord
from servecmp.gen.settings import BASELINE, GenEndpoint, GenManifest, GenOptions
from servecmp.runstore import line_error, read_jsonl_objects
from servecmp.tasks.extract import LMEVAL_FALLBACK, flexible_answer, lmeval_exact_match, strict_answer
from servecmp.tasks.gen_task import GSM8K_GRADER, GenItem, fingerprint
from servecmp.tasks.gsm8k import STOP, gold_of

FILTERS = {"strict-match": strict_answer, "flexible-extract": flexible_answer}
#: The flags --from-lm-eval accepts besides its own (every other flag is refused, not ignored).
ACCEPTED = ("--json", "--show", "--gate", "--summary-md", "--html")


def refuse_flags(opts: GenOptions) -> None:
    given = [f"--{f.name.replace('_', '-')}" for f in fields(opts)
             if getattr(opts, f.name) not in (None, []) and f.name != "allow_code_execution"]
    if given:
        raise UserError(f"--from-lm-eval reads two sample logs and calls no endpoint; {', '.join(given)} do not "
                        f"apply to it (only {', '.join(ACCEPTED)} do)")


def read_samples(path: Path) -> dict[int, dict[str, Any]]:
    """doc_id → {"doc", "text", "filtered": {filter: answer}}; UserError on a file that is not a
    gsm8k samples log."""
    docs: dict[int, dict[str, Any]] = {}
    for n, obj in read_jsonl_objects(path):
        try:
            doc_id = int(obj["doc_id"])
            text = str(obj["resps"][0][0])
            flt = str(obj["filter"])
            filtered = str(obj["filtered_resps"][0])
            doc = obj["doc"]
            if not isinstance(doc.get("question"), str) or not isinstance(doc.get("answer"), str):
                raise TypeError("doc")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise line_error(path, n, "not an lm-eval gsm8k sample (needs doc_id, doc.question, doc.answer, "
                             "resps, filtered_resps, filter)") from None
        entry = docs.setdefault(doc_id, {"doc": doc, "text": text, "filtered": {}})
        if entry["text"] != text:
            raise UserError(f"{path}: doc {doc_id} has different generations under different filters")
        entry["filtered"][flt] = filtered
    if not docs:
        raise UserError(f"{path}: no samples")
    return docs


def _records(name: str, docs: dict[int, dict[str, Any]], items: dict[int, GenItem]) -> list[GenRecord]:
    out = []
    for doc_id, d in docs.items():
        text, gold = d["text"], items[doc_id].gold
        strict, flexible = strict_answer(text), flexible_answer(text)
        out.append(GenRecord(item_id=items[doc_id].item_id, endpoint=name, sample=0, text=text, answer=strict,
                             gold=gold, correct=lmeval_exact_match(strict, gold), answer_flexible=flexible,
                             correct_flexible=lmeval_exact_match(flexible, gold), finish_reason=None,
                             completion_tokens=None))
    return out


def parity(docs: dict[int, dict[str, Any]]) -> dict[str, tuple[int, int]]:
    """Per lm-eval filter: (servecmp's extraction equal to lm-eval's filtered_resps, documents)."""
    out: dict[str, tuple[int, int]] = {}
    for flt, fn in FILTERS.items():
        pairs = [(fn(d["text"]), d["filtered"][flt]) for d in docs.values() if flt in d["filtered"]]
        same = sum((ours if ours is not None else LMEVAL_FALLBACK) == theirs for ours, theirs in pairs)
        out[flt] = (same, len(pairs))
    return out


def summary_from_lmeval(base_path: Path, cand_path: Path) -> Any:
    from servecmp.gen.summary import build_summary

    base, cand = read_samples(base_path), read_samples(cand_path)
    common = sorted(set(base) & set(cand))
    if not common:
        raise UserError(f"{base_path} and {cand_path} share no doc_id")
    for i in common:
        if base[i]["doc"] != cand[i]["doc"]:
            raise UserError(f"doc {i} differs between {base_path} and {cand_path}: not the same task")
    items = {i: GenItem(item_id=f"gsm8k/{i}", question=base[i]["doc"]["question"],
                        gold=gold_of(base[i]["doc"]["answer"]), solution=base[i]["doc"]["answer"], prompt=None,
                        messages=[{"role": "user", "content": base[i]["doc"]["question"]}], stop=list(STOP),
                        grader=GSM8K_GRADER) for i in common}
    # A manifest with placeholder URLs: no endpoint is called; the files stand in for them below.
    placeholder = "http://lm-eval.invalid/v1"
    manifest = GenManifest(
        task="gsm8k", source=f"lm-eval sample logs {base_path.name} vs {cand_path.name}", fewshot=5,
        task_fingerprint=fingerprint(list(items.values())), n_items=len(common), n_available=len(common),
        max_tokens=1, teacher_forcing=False,
        endpoints=[GenEndpoint(base_url=placeholder, model="lm-eval baseline", name=BASELINE, role="baseline"),
                   GenEndpoint(base_url=placeholder, model="lm-eval candidate", name="candidate", role="candidate")])
    records = _records(BASELINE, {i: base[i] for i in common}, items) + _records(
        "candidate", {i: cand[i] for i in common}, items)
    summary = build_summary(manifest, list(items.values()), records, {})
    for block, path in zip(summary.endpoints, (base_path, cand_path), strict=True):
        block.url = str(path)
    summary.candidates[0].url = str(cand_path)
    summary.candidates[0].teacher_forcing = None
    notes = [f"lm-eval parity ({who}): " + ", ".join(f"{flt} {same}/{n}" for flt, (same, n) in parity(docs).items())
             + " of servecmp's extractions equal lm-eval's filtered_resps"
             for who, docs in (("baseline", base), ("candidate", cand))]
    notes.append("from lm-eval sample logs: lengths and first divergences are in characters (no token ids), "
                 "no teacher forcing")
    summary.notes = [*summary.notes, *notes]
    summary.run.max_tokens = 0
    return summary
