"""servecmp.tasks.extract: lm-eval's gsm8k extraction and exact_match, and the user-task graders.

Parity is checked two ways: against what lm-eval itself logged on real generations of the embedded
pair (tests/fixtures/lmeval_gsm8k, see its README.txt), and against lm-eval's own filter and metric
code run in-process on those generations, the gold solutions and edge cases (where the dev extra's
lm-eval is installed), which also covers correct answers: the 135M model solves none of the 8 items.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from servecmp.errors import UserError
from servecmp.tasks.extract import (
    FLEXIBLE_PATTERN,
    GSM8K_IGNORE,
    STRICT_PATTERN,
    ChoiceGrader,
    ExactGrader,
    NumberGrader,
    RegexGrader,
    flexible_answer,
    lmeval_exact_match,
    normalize_answer,
    parse_grader,
    strict_answer,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "lmeval_gsm8k"
EXTRACTORS = {"strict-match": strict_answer, "flexible-extract": flexible_answer}


def read_samples(role: str) -> list[dict[str, Any]]:
    (path,) = (FIXTURES / role).glob("samples_gsm8k_local_*.jsonl")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def as_lmeval(answer: str | None) -> str:
    return "[invalid]" if answer is None else answer


# ---- hand cases ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("so 3 + 4 = 7\n#### 7\n\n", "7"),
    ("#### -1,234.50 dollars", "-1,234.50"),
    ("#### 5\nQuestion: ... #### 6", "5"),        # the first "#### "
    ("####5", None),                               # needs the space
    ("The answer is 7.", None),
    ("#### 3/15", "3"),
    ("", None),
])
def test_strict_answer(text: str, expected: str | None) -> None:
    assert strict_answer(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("3 + 4 = 7 apples", "7"),
    ("It costs $1,200.", "$1,200."),               # group 1: two or more of -$0-9.,
    ("#### 3/15", "15"),                           # the last match
    ("done... really", "..."),                     # lm-eval's regex takes an ellipsis for a number
    ("x = -5", "-5"),
    ("no digits here", None),
    ("", None),
])
def test_flexible_answer(text: str, expected: str | None) -> None:
    assert flexible_answer(text) == expected


@pytest.mark.parametrize(("s", "expected"), [
    ("Janet sells 9 eggs.\n#### 18", "18"),        # a gold solution: everything up to "#### " goes
    ("$1,200.", "1200"),
    ("1.5.", "1.5"),                               # one trailing period only
    ("ABC", "abc"),
    (" 18", " 18"),                                # whitespace is kept, as in lm-eval
    ("a\n#### b\n#### 7", "7"),                    # (?s).* is greedy: up to the last "#### "
])
def test_normalize_answer(s: str, expected: str) -> None:
    assert normalize_answer(s) == expected


def test_lmeval_exact_match() -> None:
    gold = "She makes 9 * 2 = $<<9*2=18>>18.\n#### 18"
    assert lmeval_exact_match("18", gold)
    assert lmeval_exact_match("$18.", gold)
    assert not lmeval_exact_match("18.0", gold)
    assert not lmeval_exact_match(None, gold)


# ---- parity with lm-eval's own logs ---------------------------------------------------------------


@pytest.mark.parametrize("role", ["baseline", "candidate"])
def test_parity_with_lmeval_sample_logs(role: str) -> None:
    samples = read_samples(role)
    assert sorted({s["doc_id"] for s in samples}) == list(range(8))
    assert sorted(s["filter"] for s in samples) == ["flexible-extract"] * 8 + ["strict-match"] * 8
    for s in samples:
        (resp,) = s["resps"][0]
        (lmeval_answer,) = s["filtered_resps"]
        answer = EXTRACTORS[s["filter"]](resp)
        assert as_lmeval(answer) == lmeval_answer, (role, s["doc_id"], s["filter"])
        assert lmeval_exact_match(answer, s["target"]) == bool(s["exact_match"]), (role, s["doc_id"])


def test_sample_logs_hold_what_the_readme_says() -> None:
    # Independent of the extraction code: what lm-eval logged, item by item.
    def logged(role: str, flt: str) -> list[str]:
        rows = sorted((s for s in read_samples(role) if s["filter"] == flt), key=lambda s: s["doc_id"])
        return [s["filtered_resps"][0] for s in rows]

    base = ["54", "2", "1500", "18", "40", "16", "[invalid]", "200"]
    assert logged("baseline", "strict-match") == base
    assert logged("baseline", "flexible-extract") == base
    assert logged("candidate", "strict-match") == ["24", "4", "[invalid]", "18", "3", "[invalid]", "[invalid]",
                                                   "[invalid]"]
    assert logged("candidate", "flexible-extract") == ["24", "4", "[invalid]", "18", "15", "[invalid]",
                                                       "[invalid]", "100"]
    assert all(s["exact_match"] == 0.0 for role in ("baseline", "candidate") for s in read_samples(role))


def test_task_yaml_is_lmevals_gsm8k() -> None:
    """The fixture's task is lm-eval's gsm8k.yaml (only name and data source changed), and the
    patterns and normalisation in extract.py are the ones that YAML names."""
    ours = yaml.safe_load((FIXTURES / "gsm8k_local.yaml").read_text(encoding="utf-8"))
    strict, flexible = ours["filter_list"]
    assert strict["filter"][0]["regex_pattern"] == STRICT_PATTERN
    assert "group_select" not in strict["filter"][0]  # RegexFilter's default, 0: the first match
    assert flexible["filter"][0]["regex_pattern"] == FLEXIBLE_PATTERN
    assert flexible["filter"][0]["group_select"] == -1
    assert [f["function"] for f in strict["filter"]] == ["regex", "take_first"]
    assert [f["function"] for f in flexible["filter"]] == ["regex", "take_first"]
    (metric,) = ours["metric_list"]
    assert (metric["metric"], metric["ignore_case"], metric["ignore_punctuation"]) == ("exact_match", True, False)
    assert tuple(metric["regexes_to_ignore"]) == GSM8K_IGNORE

    lm_eval = pytest.importorskip("lm_eval")
    installed = yaml.safe_load((Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml").read_text())
    for key in ("task", "dataset_path", "dataset_name", "dataset_kwargs"):
        ours.pop(key, None)
        installed.pop(key, None)
    assert ours == installed


# ---- parity with lm-eval's code, in-process --------------------------------------------------------


EDGE_TEXTS = [
    "#### 18", "#### $18.", "The answer is 1,000.\n#### 1,000", "#### -3", "#### 3.50", "....", "$ 5", "$5",
    "answer: 7.\n\nQuestion:", "12 and 13 and 14.", "-", "#### 72\n#### 73", "1.2.3", "", "   ", "ABC",
    "no number", "#### ,", "x -0.5 y", "5,\n", "It is 18 dollars", "it costs $18.00",
]


def corpus() -> list[tuple[str, str]]:
    """(generation, reference) pairs: every fixture generation and every gold solution (as a
    generation: it ends "#### N", so it is correct) against every item's gold, plus edge cases."""
    samples = read_samples("baseline") + read_samples("candidate")
    golds = sorted({s["target"] for s in samples})
    texts = sorted({s["resps"][0][0] for s in samples}) + golds + EDGE_TEXTS
    return [(t, g) for t in texts for g in golds + ["#### 18", "#### 1000", "#### 3.50", "#### -3"]]


def test_parity_with_lmeval_code() -> None:
    pytest.importorskip("lm_eval")
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter

    config = yaml.safe_load((FIXTURES / "gsm8k_local.yaml").read_text(encoding="utf-8"))
    (metric,) = config["metric_list"]
    settings = {k: metric[k] for k in ("ignore_case", "ignore_punctuation", "regexes_to_ignore")}
    filters = {f["name"]: RegexFilter(**{k: v for k, v in f["filter"][0].items() if k != "function"})
               for f in config["filter_list"]}
    pairs = corpus()
    n_correct = 0
    for name, extractor in EXTRACTORS.items():
        texts = [t for t, _ in pairs]
        theirs = [r[0] for r in filters[name].apply([[t] for t in texts], [{} for _ in texts])]
        for (text, ref), their_answer in zip(pairs, theirs, strict=True):
            ours = extractor(text)
            assert as_lmeval(ours) == their_answer, (name, text)
            their_em = exact_match_hf_evaluate(predictions=[their_answer], references=[ref], **settings)
            assert lmeval_exact_match(ours, ref) == bool(their_em["exact_match"]), (name, text, ref)
            n_correct += bool(their_em["exact_match"])
    # The comparison must include correct answers too, not only misses.
    assert n_correct >= 16


# ---- graders ------------------------------------------------------------------------------------


def test_parse_grader_kinds() -> None:
    assert isinstance(parse_grader("number"), NumberGrader)
    assert isinstance(parse_grader(" exact "), ExactGrader)
    assert isinstance(parse_grader("choice"), ChoiceGrader)
    g = parse_grader(r"regex:Answer: (\d+)")
    assert isinstance(g, RegexGrader) and g.pattern == r"Answer: (\d+)" and g.spec == r"regex:Answer: (\d+)"
    assert parse_grader("number").spec == "number"


@pytest.mark.parametrize(("spec", "message"), [
    ("numbers", "unknown grader 'numbers'"),
    ("", "unknown grader ''"),
    ("regex:", "needs a pattern"),
    ("regex:(unclosed", "does not compile"),
    ("regex:[a-", "does not compile"),
])
def test_parse_grader_refuses(spec: str, message: str) -> None:
    with pytest.raises(UserError, match=message) as info:
        parse_grader(spec)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("text", "reference", "expected"), [
    ("So she pays $1,000.00 in total.", "1000", ("$1,000.00", True)),
    ("3 apples and 4 pears: 7", "Step...\n#### 7", ("7", True)),
    ("The answer is 7.5", "7.50", ("7.5", True)),
    ("The answer is 7", "8", ("7", False)),
    ("-3 degrees", "-3", ("-3", True)),
    ("nothing... at all", "3", (None, False)),     # unlike lm-eval's flexible regex, "..." is no number
])
def test_number_grader(text: str, reference: str, expected: tuple[str | None, bool]) -> None:
    assert parse_grader("number").grade(text, reference) == expected


def test_number_grader_reference_check() -> None:
    parse_grader("number").check_reference("#### 1,234")
    with pytest.raises(UserError, match="not a number"):
        parse_grader("number").check_reference("twelve")


@pytest.mark.parametrize(("text", "reference", "expected"), [
    ("  Paris.\n", "paris", ("Paris.", True)),
    ("Paris, France", "paris france", ("Paris, France", True)),  # commas are ignored, as in lm-eval
    ("Lyon", "Paris", ("Lyon", False)),
    ("   ", "x", (None, False)),
])
def test_exact_grader(text: str, reference: str, expected: tuple[str | None, bool]) -> None:
    assert parse_grader("exact").grade(text, reference) == expected


@pytest.mark.parametrize(("spec", "text", "reference", "expected"), [
    (r"regex:Final: (\w+)", "think... Final: Yes", "yes", ("Yes", True)),
    (r"regex:\d+", "a 12 b 13", "12", ("12", True)),              # no group: the whole first match
    (r"regex:Final: (\w+)", "no verdict", "yes", (None, False)),
    (r"regex:(a)?b", "b", "b", (None, False)),                     # group 1 did not take part
])
def test_regex_grader(spec: str, text: str, reference: str, expected: tuple[str | None, bool]) -> None:
    assert parse_grader(spec).grade(text, reference) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("The answer is (B).", "B"),
    ("Answer: C", "C"),
    ("I think the answer is D because ...", "D"),
    ("answer is A, no wait, the answer is C", "C"),               # the last statement
    ("B) 42", "B"),
    ("(A)", "A"),
    ("I think it is B", None),                                    # no statement, no leading letter
    ("The answer is Apple", None),
    ("b", None),                                                  # lower case is no choice
])
def test_choice_grader_extract(text: str, expected: str | None) -> None:
    assert parse_grader("choice").extract(text) == expected


def test_choice_grader_grade_and_reference() -> None:
    g = parse_grader("choice")
    assert g.grade("Answer: b is wrong, Answer: C", "c") == ("C", True)
    assert g.grade("The answer is A", "B") == ("A", False)
    g.check_reference(" d ")
    with pytest.raises(UserError, match="not one letter"):
        g.check_reference("AB")
