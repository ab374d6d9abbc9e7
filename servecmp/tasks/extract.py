"""Answer extraction and grading for generated answers.

Two families live here:

- lm-eval's GSM8K filters and metric, reproduced exactly (lm-eval 0.4.13, `tasks/gsm8k/gsm8k.yaml`,
  `filters/extraction.py::RegexFilter`, `api/metrics.py::exact_match_hf_evaluate`), so that a
  servecmp GSM8K number is the number lm-eval would print for the same generation:

  * strict-match: ``re.findall(r"#### (\\-?[0-9\\.\\,]+)", text)``, the first match, stripped;
  * flexible-extract: ``re.findall(r"(-?[$0-9.,]{2,})|(-?[0-9]+)", text)``, the *last* match
    (``group_select: -1``), its first non-empty group, stripped;
  * a text with no match is lm-eval's fallback ``"[invalid]"``; here it is ``None``;
  * exact_match: prediction and reference each go through ``re.sub`` of ``","``, ``"\\$"``,
    ``"(?s).*#### "`` and ``"\\.$"`` (in that order), then are lower-cased, then compared as strings.

- `parse_grader(spec)`: the graders of a user's own JSONL task (``number``, ``exact``,
  ``regex:PATTERN``, ``choice``).

This module is a lower layer: it imports nothing from servecmp's feature packages.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import ClassVar

from servecmp.errors import UserError

#: lm-eval gsm8k.yaml, filter "strict-match" (regex, then take_first).
STRICT_PATTERN = r"#### (\-?[0-9\.\,]+)"
#: lm-eval gsm8k.yaml, filter "flexible-extract" (regex with group_select -1, then take_first).
FLEXIBLE_PATTERN = r"(-?[$0-9.,]{2,})|(-?[0-9]+)"
#: lm-eval gsm8k.yaml, exact_match's regexes_to_ignore, applied in this order.
GSM8K_IGNORE = (",", "\\$", "(?s).*#### ", "\\.$")
#: What lm-eval's RegexFilter returns when nothing matches.
LMEVAL_FALLBACK = "[invalid]"

_STRICT = re.compile(STRICT_PATTERN)
_FLEXIBLE = re.compile(FLEXIBLE_PATTERN)
_IGNORE = tuple(re.compile(p) for p in GSM8K_IGNORE)


def _lmeval_regex(regex: re.Pattern[str], text: str, group_select: int) -> str | None:
    """lm-eval's RegexFilter on one response, with its fallback mapped to None.

    Kept line for line with lm-eval (findall, pick by index, first non-empty group of a tuple,
    strip) because the parity test compares against lm-eval's own logged output.
    """
    matches = regex.findall(text)
    if not matches:
        return None
    match = matches[group_select]
    if isinstance(match, tuple):
        groups = [m for m in match if m]
        if not groups:
            return None
        match = groups[0]
    return str(match).strip()


def strict_answer(text: str) -> str | None:
    """lm-eval's gsm8k "strict-match": the number after the first ``#### ``, or None."""
    return _lmeval_regex(_STRICT, text, 0)


def flexible_answer(text: str) -> str | None:
    """lm-eval's gsm8k "flexible-extract": the last number-like run of ``-$0-9.,``, or None.

    Like lm-eval, this can return runs that are not numbers (``"..."``, ``"$,"``): a sentence ending
    in an ellipsis after the answer makes the ellipsis the "last number". Parity beats tidiness here.
    """
    return _lmeval_regex(_FLEXIBLE, text, -1)


def normalize_answer(s: str) -> str:
    """lm-eval's exact_match normalisation for gsm8k: drop commas and dollar signs, everything up
    to the last ``#### `` (so a gold worked solution becomes its final number), and one trailing
    period; then lower-case. No whitespace stripping and no punctuation removal (as in lm-eval)."""
    for regex in _IGNORE:
        s = regex.sub("", s)
    return s.lower()


def lmeval_exact_match(answer: str | None, reference: str) -> bool:
    """lm-eval's gsm8k exact_match of an extracted answer (None = nothing extracted) against the
    reference (the dataset's full ``answer`` field or just its number)."""
    if answer is None:
        # lm-eval compares its fallback "[invalid]"; no GSM8K reference normalises to that.
        return normalize_answer(LMEVAL_FALLBACK) == normalize_answer(reference)
    return normalize_answer(answer) == normalize_answer(reference)


# ---- graders of user tasks -------------------------------------------------------------------

#: A number as people write it: optional sign and dollar sign, digits with optional thousands
#: commas, optional decimals. Stricter than lm-eval's flexible regex on purpose: a user's `number`
#: grader should not extract "..." as the answer.
_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")
#: "answer is (B)", "Answer: B", "answer: (b)" -> the letter (case-sensitive letter, see ChoiceGrader).
_CHOICE_STATED = re.compile(r"(?i:answer)\s*(?:(?i:is)\s*)?[:\-]?\s*\(?([A-Z])\)?(?![A-Za-z])")
#: A reply that starts with the letter: "B", "(B)", "B) 42", "B. because ..." (not "I think").
_CHOICE_LEADING = re.compile(r"^\s*\(?([A-Z])(?:[).:,]|\s*$)")


def _number_value(s: str) -> Decimal | None:
    cleaned = s.replace(",", "").replace("$", "").strip().rstrip(".")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


class Grader(ABC):
    """Extracts an answer from a generation and decides whether it matches the reference."""

    kind: ClassVar[str]

    @property
    def spec(self) -> str:
        """The spec string that `parse_grader` turns back into this grader."""
        return self.kind

    @abstractmethod
    def extract(self, text: str) -> str | None:
        """The answer found in ``text``, or None when there is none."""

    @abstractmethod
    def matches(self, answer: str, reference: str) -> bool:
        """Whether an extracted answer equals the reference."""

    def check_reference(self, reference: str) -> None:
        """UserError (one line) if ``reference`` can never be matched by this grader; call it when
        loading a task so a bad line is refused before any request is made. Any text is a valid
        reference for the string graders."""
        return None

    def grade(self, text: str, reference: str) -> tuple[str | None, bool]:
        """(extracted answer or None, correct). Nothing extracted is never correct."""
        answer = self.extract(text)
        if answer is None:
            return None, False
        return answer, self.matches(answer, reference)


@dataclass(frozen=True)
class NumberGrader(Grader):
    """The last number in the text, compared numerically (``1,000`` == ``$1000.00`` == ``1000.``);
    the reference may be a GSM8K-style solution ending ``#### N``. Fractions and words are not
    numbers here."""

    kind: ClassVar[str] = "number"

    def extract(self, text: str) -> str | None:
        found = _NUMBER.findall(text)
        return found[-1] if found else None

    def matches(self, answer: str, reference: str) -> bool:
        ref = _reference_number(reference)
        value = _number_value(answer)
        return ref is not None and value is not None and value == ref

    def check_reference(self, reference: str) -> None:
        if _reference_number(reference) is None:
            raise UserError(f"grader 'number': reference {reference!r} is not a number")


def _reference_number(reference: str) -> Decimal | None:
    # "(?s).*#### " turns a worked solution into its final number, as lm-eval does for GSM8K.
    return _number_value(re.sub(r"(?s).*#### ", "", reference))


@dataclass(frozen=True)
class ExactGrader(Grader):
    """The whole generation, stripped of surrounding whitespace, equal to the reference after
    lm-eval's gsm8k normalisation (`normalize_answer`: commas, dollar signs, a trailing period and
    case ignored)."""

    kind: ClassVar[str] = "exact"

    def extract(self, text: str) -> str | None:
        stripped = text.strip()
        return stripped or None

    def matches(self, answer: str, reference: str) -> bool:
        return normalize_answer(answer.strip()) == normalize_answer(reference.strip())


@dataclass(frozen=True)
class RegexGrader(Grader):
    """The first match of the user's pattern (its first group if it has groups), compared with the
    reference like `ExactGrader`."""

    kind: ClassVar[str] = "regex"
    pattern: str

    @property
    def spec(self) -> str:
        return f"regex:{self.pattern}"

    def extract(self, text: str) -> str | None:
        m = re.search(self.pattern, text)
        if m is None:
            return None
        found = m.group(1) if m.re.groups else m.group(0)
        # An optional group that did not take part in the match gives None.
        return found.strip() if found is not None and found.strip() else None

    def matches(self, answer: str, reference: str) -> bool:
        return normalize_answer(answer.strip()) == normalize_answer(reference.strip())


@dataclass(frozen=True)
class ChoiceGrader(Grader):
    """A letter A-Z: the one after "answer is" / "Answer:" (the last such statement), else a letter
    that opens the reply ("B", "(B)", "B) ..."). Only capital letters count, so the pronoun "I" in
    "I think" is not read as a choice unless it opens the reply as "I." or "I)". The reference is
    one letter, compared case-insensitively."""

    kind: ClassVar[str] = "choice"

    def extract(self, text: str) -> str | None:
        stated = _CHOICE_STATED.findall(text)
        if stated:
            return str(stated[-1])
        m = _CHOICE_LEADING.match(text)
        return m.group(1) if m else None

    def matches(self, answer: str, reference: str) -> bool:
        return answer.strip().upper() == reference.strip().upper()

    def check_reference(self, reference: str) -> None:
        ref = reference.strip().upper()
        if len(ref) != 1 or not "A" <= ref <= "Z":
            raise UserError(f"grader 'choice': reference {reference!r} is not one letter A-Z")


GRADER_KINDS = ("number", "exact", "regex:PATTERN", "choice")


def parse_grader(spec: str) -> Grader:
    """``number``, ``exact``, ``regex:PATTERN`` or ``choice`` -> its Grader; UserError (one line)
    for anything else or a pattern that does not compile."""
    if not isinstance(spec, str):
        raise UserError(f"grader must be a string, one of {', '.join(GRADER_KINDS)}; got {spec!r}")
    name = spec.strip()
    if name == "number":
        return NumberGrader()
    if name == "exact":
        return ExactGrader()
    if name == "choice":
        return ChoiceGrader()
    if spec.startswith("regex:"):
        # The pattern is taken verbatim (no strip): whitespace can be part of it.
        pattern = spec[len("regex:"):]
        if not pattern:
            raise UserError("grader 'regex:' needs a pattern after the colon, e.g. regex:Answer: (\\d+)")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise UserError(f"grader {spec!r}: the regular expression does not compile: {exc}") from None
        return RegexGrader(pattern)
    raise UserError(f"unknown grader {spec!r}: use one of {', '.join(GRADER_KINDS)}")
