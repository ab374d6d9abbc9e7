"""The MCQ HTML report: from a stub run (`servecmp mcq ... --html` and `servecmp report RUN --html`),
numbers equal to the summary's, every flipped item listed with its question, options and both
endpoints' probabilities, nothing fetched from another host; several candidates with a noise floor."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from servecmp.errors import UserError
from servecmp.finish import run_html
from servecmp.html import render_mcq
from servecmp.mcq.compare import compare_run, load_comparison
from tests.stub_openai import StubServer, StubState
from tests.test_html_page import assert_self_contained, fpct, parse
from tests.test_mcq_cli import assert_one_line_error, only_run_dir, records, servecmp
from tests.test_mcq_multi import SOFT, WRONG, P, make_run

ROOT = Path(__file__).resolve().parent.parent

N = 16
EVIL = '<b>bold</b> & <script>alert("x")</script> see https://evil.example/p.png'


def write_items(path: Path) -> list[dict[str, Any]]:
    rows = [{"id": f"q{i}", "question": f"What is {i} + {i}?" + (f" {EVIL}" if i == 3 else ""),
             "choices": [str(2 * i), "7", "9", f"eleven {i}"], "answer": i % 4,
             "subject": "arith" if i % 2 else "logic"} for i in range(N)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


@pytest.fixture(scope="module")
def mcq_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str, list[dict[str, Any]]]:
    """A finished 16-item stub run, its --json summary and the HTML `mcq --html` wrote at its end."""
    tmp = tmp_path_factory.mktemp("mcqhtml")
    data = tmp / "items.jsonl"
    rows = write_items(data)
    runs = tmp / "runs"
    out = tmp / "report.html"
    with StubServer(StubState(model="base")) as b, StubServer(StubState(model="cand")) as c:
        proc = servecmp("mcq", "--baseline", b.url, "--candidate", c.url, "--task", f"jsonl:{data}",
                        "--runs-dir", str(runs), "--top-k", "5", "--json", "--html", str(out))
    assert proc.returncode == 0, proc.stderr
    return only_run_dir(runs), json.loads(proc.stdout), out.read_text(encoding="utf-8"), rows


def expected_items(run_dir: Path) -> dict[str, str]:
    """Item id -> "c2w" / "w2c" / "chg" for every item whose answer changed, from the raw records
    (argmax of the option logprobs, lowest index on ties), independent of servecmp's metrics."""
    by: dict[str, dict[str, dict[str, Any]]] = {}
    for r in records(run_dir):
        by.setdefault(str(r["item_id"]), {})[str(r["endpoint"])] = r
    out = {}
    for item_id, sides in by.items():
        b, c = sides["baseline"], sides["candidate"]
        bc, cc = int(np.argmax(b["option_logprobs"])), int(np.argmax(c["option_logprobs"]))
        gold = int(b["gold"])
        if bc == gold and cc != gold:
            out[item_id] = "c2w"
        elif cc == gold and bc != gold:
            out[item_id] = "w2c"
        elif bc != cc:
            out[item_id] = "chg"
    return out


def listed(html: str) -> dict[str, dict[str, str]]:
    return {a["data-item"]: a for tag, a in parse(html).elements if tag == "details" and "data-item" in a}


def test_numbers_shown_equal_the_summary(mcq_run: tuple[Path, dict[str, Any], str, list[dict[str, Any]]]) -> None:
    run_dir, s, html, _ = mcq_run
    doc = parse(html)
    m = doc.metrics
    assert doc.title == f"servecmp mcq — jsonl:{run_dir.parent.parent / 'items.jsonl'} — {run_dir.name}"
    for key in ("baseline", "candidate", "diff"):
        e = s["accuracy"][key]
        assert float(m[f"accuracy.{key}"][0]) == e["point"]
        sign = key == "diff"
        assert m[f"accuracy.{key}"][1] == f"{fpct(e['point'], sign)} [{fpct(e['low'], sign)}, {fpct(e['high'], sign)}]"
    fl = s["flips"]
    assert float(m["flips.rate"][0]) == fl["rate"]["rate"]
    assert m["flips.rate"][1] == (f"{fpct(fl['rate']['rate'])} [{fpct(fl['rate']['low'])}, "
                                  f"{fpct(fl['rate']['high'])}] ({fl['flips']}/{N})")
    assert int(m["flips.correct_to_wrong"][0]) == fl["correct_to_wrong"]
    assert int(m["flips.wrong_to_correct"][0]) == fl["wrong_to_correct"]
    assert float(m["flips.mcnemar_p"][0]) == fl["mcnemar_p"]
    assert float(m["answer_changes"][0]) == s["answer_changes"]["rate"]
    for field in ("mean", "median", "p90", "p99", "max"):
        assert float(m[f"option_kl.{field}"][0]) == s["option_kl"][field]
        assert float(m[f"topk_kl.kl_hat.{field}"][0]) == s["topk_kl"]["kl_hat"][field]
    assert int(m["option_kl.n"][0]) == N
    # Summary layout 3 adds KL in both directions, JS, the tight estimate and llama.cpp's block; a
    # layout-2 summary has none of them, and then the page has no such cells either.
    for key in ("option_kl_cb", "option_js"):
        assert (f"{key}.mean" in m) == (s.get(key) is not None)
        if s.get(key) is not None:
            assert float(m[f"{key}.mean"][0]) == s[key]["mean"]
    tight = s["topk_kl"].get("tight")
    if tight is not None:
        assert float(m["topk_kl.tight.kl_bc.mean"][0]) == tight["kl_bc"]["mean"]
        assert float(m["topk_kl.tight.js.p99"][0]) == tight["js"]["p99"]
    ntr = s.get("next_token_report")
    assert ("next_token_report.kld_mean" in m) == (ntr is not None)
    if ntr is not None:
        assert float(m["next_token_report.kld_mean"][0]) == ntr["kld_mean"]["value"]
        assert m["next_token_report.same_top"][1].endswith(f"({ntr['same_top_count']}/{N})")
    for label in ("correct", "wrong"):
        assert float(m[f"top_margin.when_{label}"][0]) == s["top_margin"]["by_baseline_correctness"][f"when_{label}"][
            "point"]
    for i, b in enumerate(s["top_margin"]["change_by_bucket"]):
        assert int(m[f"margin_bucket.{i}.n"][0]) == b["changes"]["n"]
        assert int(m[f"margin_bucket.{i}.count"][0]) == b["changes"]["count"]
    for row in s["groups"]["subject"]:
        assert float(m[f"groups.subject.{row['group']}.flips"][0]) == row["flip_rate"]
    # The settings name both endpoints; the verdict block says no gate was given.
    assert "No gates given" in doc.text and "servecmp 0.1.0" in doc.text
    assert s["run"]["endpoints"]["candidate"]["url"] in doc.text


def test_every_flipped_and_changed_item_is_listed(
        mcq_run: tuple[Path, dict[str, Any], str, list[dict[str, Any]]]) -> None:
    run_dir, s, html, rows = mcq_run
    want = expected_items(run_dir)
    assert sum(k in ("c2w", "w2c") for k in want.values()) == s["flips"]["flips"] > 0
    assert len(want) == s["answer_changes"]["count"]
    got = listed(html)
    assert set(got) == set(want)
    for item_id, kind in want.items():
        assert got[item_id]["data-kind"].split()[0] == kind
        assert ("flip" in got[item_id]["data-kind"].split()) == (kind in ("c2w", "w2c"))
    # Each listed item shows its question and options; the probabilities are the records' renormalised.
    doc = parse(html)
    for r in rows:
        if r["id"] in want:
            assert f"What is {r['id'][1:]} + {r['id'][1:]}?" in doc.text
            assert f"eleven {r['id'][1:]}" in doc.text
    recs = {(x["item_id"], x["endpoint"]): x for x in records(run_dir)}
    one = next(iter(want))
    lp = np.array(recs[(one, "baseline")]["option_logprobs"], dtype=float)
    probs = np.exp(lp - np.logaddexp.reduce(lp))
    section = html.split(f'data-item="{one}"', 1)[1].split("</details>", 1)[0]
    values = [float(v) for v in re.findall(r'data-v="([0-9.e-]+)">', section)]
    assert np.allclose(values[0::2], probs, rtol=1e-12)


def test_run_texts_are_escaped_and_nothing_is_fetched(
        mcq_run: tuple[Path, dict[str, Any], str, list[dict[str, Any]]]) -> None:
    run_dir, _, html, _ = mcq_run
    assert_self_contained(html)
    assert "q3" in listed(html)  # the stub's answers change q3, so its (hostile) question is shown
    assert "<script>alert" not in html and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    assert EVIL in parse(html).text  # as text, URL included: inert
    assert not [e for e in parse(html).elements if e[0] == "b"]
    # Plots are inline SVG with text as text (no embedded font, no image file).
    assert html.count("<svg") >= 4 and "<img" not in html


def test_report_html_equals_the_run_end_html(mcq_run: tuple[Path, dict[str, Any], str, list[dict[str, Any]]],
                                             tmp_path: Path) -> None:
    run_dir, s, html, _ = mcq_run
    out = tmp_path / "again.html"
    proc = servecmp("report", str(run_dir), "--html", str(out), "--gate", "flips<=5%", "--gate", "kl<=10")
    assert proc.returncode == 1, proc.stderr  # flips<=5% fails on the stub's random answers
    again = out.read_text(encoding="utf-8")
    a, b = parse(html).metrics, parse(again).metrics
    assert {k: v for k, v in a.items() if not k.startswith("gate.")} == \
        {k: v for k, v in b.items() if not k.startswith("gate.")}
    doc = parse(again)
    assert "Verdict: FAIL (exit 1): 1 of 2 gates failed" in doc.text
    assert float(doc.metrics["gate.flips"][0]) == s["flips"]["rate"]["rate"]
    assert float(doc.metrics["gate.kl"][0]) == s["option_kl"]["mean_ci"]["point"]


def test_bad_html_paths_are_one_line(mcq_run: tuple[Path, dict[str, Any], str, list[dict[str, Any]]],
                                     tmp_path: Path) -> None:
    run_dir = mcq_run[0]
    assert_one_line_error(servecmp("report", str(run_dir), "--html", str(tmp_path / "no" / "r.html")),
                          f"--html {tmp_path / 'no' / 'r.html'}: directory {tmp_path / 'no'} does not exist")
    assert_one_line_error(servecmp("report", str(tmp_path / "absent"), "--html", str(tmp_path / "r.html")),
                          "not found")
    # `mcq --html` refuses before any request: the endpoint below does not exist.
    assert_one_line_error(servecmp("mcq", "--baseline", "http://127.0.0.1:9", "--candidate", "http://127.0.0.1:9",
                                   "--task", "mmlu-sample", "--html", str(tmp_path)), "is a directory")
    with pytest.raises(UserError, match="not found"):
        run_html(tmp_path / "absent")


def test_several_candidates_with_a_noise_floor(tmp_path: Path) -> None:
    # Three candidates: a, which keeps the baseline's answers (KL 0 except item 1); b, which flips
    # one item correct→wrong; c, which flips two. The baseline's second replica answers as it does.
    run = make_run(tmp_path, {"baseline": [P, P, P, P], "secondary": [P, P, P, P],
                              "a": [P, SOFT, P, P], "b": [WRONG, P, P, P], "c": [WRONG, WRONG, SOFT, P]},
                   secondary=True)
    cmp = compare_run(run)
    html = run_html(run, [])
    assert_self_contained(html)
    doc = parse(html)
    m = doc.metrics
    stored = load_comparison(run)
    assert [r.name for r in stored.leaderboard] == ["a", "b", "c"]
    for r in stored.leaderboard:
        assert float(m[f"{r.name}:leaderboard.flips"][0]) == r.flips.rate
        assert m[f"{r.name}:leaderboard.flips"][1].endswith(f"({r.flips.count}/4)")
        assert float(m[f"{r.name}:leaderboard.option_kl"][0]) == r.option_kl.point
        assert r.flips_excess is not None
        assert float(m[f"{r.name}:leaderboard.flips_excess"][0]) == r.flips_excess.point
        # Each candidate's own sections carry its summary's numbers.
        c = cmp.candidate(r.name).summary
        assert float(m[f"{r.name}:flips.rate"][0]) == c.flips.rate.rate
        assert float(m[f"{r.name}:accuracy.diff"][0]) == c.accuracy.diff.point
    # flips 0, 1/4 and 2/4 (hand count above)
    assert [r.flips.count for r in stored.leaderboard] == [0, 1, 2]
    items = listed(html)
    assert {i for i, a in items.items() if "flip" in a["data-kind"]} == {"q0", "q1"}  # b's q0, c's q0 and q1
    assert "Each endpoint against itself" in doc.text and "baseline vs secondary" in doc.text
    assert "Flips vs option KL per candidate" in doc.text and "Correlations across candidates" in doc.text
    assert "question texts not shown" in doc.text.lower()  # the task file /x.jsonl does not exist
    assert math.isclose(float(m["c:leaderboard.flips"][0]), 0.5)


def test_a_summary_alone_renders_without_records(
        mcq_run: tuple[Path, dict[str, Any], str, list[dict[str, Any]]]) -> None:
    run_dir, s, _, _ = mcq_run
    html = render_mcq(load_comparison(run_dir))
    assert_self_contained(html)
    doc = parse(html)
    assert float(doc.metrics["flips.rate"][0]) == s["flips"]["rate"]["rate"]
    assert "No records to list items from" in doc.text


def test_size_per_listed_item_stays_small(tmp_path: Path) -> None:
    """scripts/bench_html_size.py's synthetic run (MMLU question texts, ~21% of answers changed) at
    1,000 items: every changed item is listed, and the page stays near 1.5 kB per listed item plus a
    fixed part for plots and tables (the full 14,042-item run measured 4.3 MB). A budget, not a
    measurement: it catches a page that starts embedding something per item it should not."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_html_size", ROOT / "scripts" / "bench_html_size.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    run = bench.build_run(tmp_path, 1000, 0.21, 0)
    cmp = compare_run(run)
    html = run_html(run, [])
    s = cmp.candidates[0].summary
    items = listed(html)
    assert len(items) == s.answer_changes.count
    assert sum("flip" in a["data-kind"] for a in items.values()) == s.flips.flips
    size = len(html.encode())
    assert size < 150_000 + 2_500 * len(items), size
    assert_self_contained(html)


def test_lm_eval_logs_get_their_item_list_too(tmp_path: Path) -> None:
    from tests.test_lmeval_import import FIXTURES, MMLU_NAME

    base, cand = FIXTURES / "baseline" / MMLU_NAME, FIXTURES / "candidate" / MMLU_NAME
    out = tmp_path / "lmeval.html"
    proc = servecmp("mcq", "--from-lm-eval", str(base), str(cand), "--html", str(out))
    assert proc.returncode == 0, proc.stderr
    # Expected from the raw logs: argmax of each doc's logged loglikelihoods against the gold index.
    docs = {}
    for side, path in (("b", base), ("c", cand)):
        for line in path.read_text().splitlines():
            d = json.loads(line)
            lls = [float(r[0]) for r in d["filtered_resps"]]
            docs.setdefault(str(d["doc_id"]), {})[side] = (int(np.argmax(lls)), int(d["target"]),
                                                         d["arguments"]["gen_args_0"]["arg_0"])
    want = {}
    for doc_id, s in docs.items():
        (bc, gold, _), (cc, _, _) = s["b"], s["c"]
        if bc != cc:
            want[doc_id] = "c2w" if bc == gold else "w2c" if cc == gold else "chg"
    html = out.read_text(encoding="utf-8")
    got = listed(html)
    assert {k: v["data-kind"].split()[0] for k, v in got.items()} == want == {"0": "c2w"}
    section = html.split('data-item="0"', 1)[1].split("</details>", 1)[0]
    assert "What is 2 + 3?" in parse(section).text  # the logged prompt, as lm-eval sent it


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_report_of_a_moved_run_without_its_task_data_writes_the_same_page_and_nothing_into_the_run(
        tmp_path: Path) -> None:
    import shutil

    data = tmp_path / "items.jsonl"
    rows = write_items(data)
    runs = tmp_path / "runs"
    with StubServer(StubState(model="base")) as b, StubServer(StubState(model="cand")) as c:
        proc = servecmp("mcq", "--baseline", b.url, "--candidate", c.url, "--task", f"jsonl:{data}",
                        "--runs-dir", str(runs), "--top-k", "5", "--json")
    assert proc.returncode == 0, proc.stderr
    run = only_run_dir(runs)
    before = _tree(run)
    first = tmp_path / "first.html"
    assert servecmp("report", str(run), "--html", str(first)).returncode == 0
    assert _tree(run) == before  # byte-identical: the report wrote nothing into the run

    moved = tmp_path / "elsewhere" / run.name
    shutil.copytree(run, moved)
    data.unlink()  # the task's data is gone: the page must come from the run directory alone
    second = tmp_path / "second.html"
    proc = servecmp("report", str(moved), "--html", str(second), "--gate", "flips<=50%")
    assert proc.returncode in (0, 1, 4), proc.stderr
    assert _tree(moved) == before

    page1, page2 = first.read_text(encoding="utf-8"), second.read_text(encoding="utf-8")
    # The same numbers and the same items, with the question texts of the (now deleted) task file.
    second_metrics = {k: v for k, v in parse(page2).metrics.items() if not k.startswith("gate.")}
    assert parse(page1).metrics == second_metrics and "gate.flips" in parse(page2).metrics
    items1, items2 = listed(page1), listed(page2)
    assert items1.keys() == items2.keys() == expected_items(run).keys()
    for item_id in items1:
        question = next(r["question"] for r in rows if r["id"] == item_id)
        assert question.split(" <")[0] in page2
