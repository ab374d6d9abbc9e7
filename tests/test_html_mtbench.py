"""The MT-Bench HTML report from stub runs (`servecmp mtbench --html`, `servecmp report RUN --html`).

The stub judge rates "[base]" answers 8 and "[cand]" answers 6 (9 on CAND-WINS questions) and gives
no rating at all on NO-RATING questions, so per question Δ is −2 (q1 writing), −2 (q2 math), +1 (q3
stem), and q4 (writing, NO-RATING) has no score: four unparseable single judgments.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from servecmp.finish import run_html
from tests.test_html_page import assert_self_contained, parse
from tests.test_mtbench_cli import QUESTIONS, Stubs, invoke, ok, only_run, private_user_cache, running_stubs
from tests.test_mtbench_multi import Multi, multi_stubs

NO_RATING = {"question_id": 4, "category": "writing", "turns": ["NO-RATING <i>poem</i>", "again"]}


@pytest.fixture(autouse=True)
def _private_user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    private_user_cache(tmp_path, monkeypatch)


@pytest.fixture
def stubs(tmp_path: Path) -> Any:
    with running_stubs(tmp_path) as s:
        s.questions.write_text("".join(json.dumps(q) + "\n" for q in [*QUESTIONS, NO_RATING]))
        yield s


def test_mtbench_page_shows_the_summary(stubs: Stubs, tmp_path: Path) -> None:
    out = tmp_path / "mt.html"
    s = ok(stubs.args("--html", str(out), "--show", "5"))
    html = out.read_text(encoding="utf-8")
    assert_self_contained(html)
    doc = parse(html)
    m = doc.metrics
    run = only_run(stubs)
    assert doc.title == f"servecmp mtbench — {run.name}"
    assert float(m["baseline.score"][0]) == s["endpoints"]["baseline"]["score"]["mean"] == 8.0
    assert float(m["candidate.score"][0]) == s["endpoints"]["candidate"]["score"]["mean"] == 7.0
    for cat, v in s["endpoints"]["candidate"]["categories"].items():
        assert float(m[f"candidate.category.{cat}"][0]) == v["mean"]
    d = s["delta"]
    assert float(m["delta"][0]) == d["point"] == pytest.approx(-1.0)
    assert m["delta"][1] == f"{d['point']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}] (n=3)"
    assert float(m["wilcoxon.pvalue"][0]) == s["wilcoxon"]["pvalue"]
    assert int(m["pairwise.losses"][0]) == s["pairwise"]["losses"]
    # Per question and per category (hand-computed above; q4 has no score).
    assert {k.split(".", 1)[1]: float(v[0]) for k, v in m.items() if k.startswith("question_delta.")} == \
        {"1": -2.0, "2": -2.0, "3": 1.0}
    assert float(m["category_delta.writing"][0]) == -2.0 and float(m["category_delta.stem"][0]) == 1.0
    # The largest drops: both answers and the judge's explanation for each, side by side.
    assert [float(v[0]) for k, v in m.items() if k.startswith("drop.")] == [dr["diff"] for dr in s["largest_drops"]]
    assert [dr["question_id"] for dr in s["largest_drops"]] == [1, 2]
    drop1 = html.split('data-metric="drop.1"', 1)[1].split("</details>", 1)[0]
    assert "[base] turn 1: Write a poem." in drop1 and "[cand] turn 2: Shorten it." in drop1
    assert "Rating: [[8]]" in drop1 and "Rating: [[6]]" in drop1
    # Judge parse failures: counted, and each unreadable judgment shown (its question text escaped).
    assert int(m["single.unparseable"][0]) == s["single_judgments"]["unparseable"] == 4
    assert "Unreadable single judgments (4)" in doc.text and "I cannot decide." in doc.text
    assert "<i>poem</i>" not in html
    # Every pairwise game the candidate lost, with the judge's explanation of both orders.
    lost = html.count('data-kind="lost-game"')
    assert lost == s["pairwise"]["losses"] > 0
    pair_file = next((run / "model_judgment").glob("*_pair.jsonl"))
    games = [json.loads(line) for line in pair_file.read_text().splitlines()]
    expected = {(g["question_id"], g["turn"]) for g in games if g["g1_winner"] == g["g2_winner"] == "model_1"}
    shown = {(int(q), int(t)) for q, t in re.findall(
        r'data-kind="lost-game"><summary>question (\d+) \([^)]*\), turn (\d+)', html)}
    assert shown == expected
    assert f"{lost} of {s['pairwise']['n']} games lost" in doc.text
    assert "game 1: baseline shown first" in html and "game 2: candidate shown first" in html
    assert "judge-m at" in doc.text and "No gates given" in doc.text
    assert html.count("<svg") >= 3  # radar, per-category Δ, per-question Δ


def test_report_rerenders_and_decides(stubs: Stubs, tmp_path: Path) -> None:
    ok(stubs.args())
    run = only_run(stubs)
    out = tmp_path / "again.html"
    result = invoke(["report", str(run), "--html", str(out), "--gate", "delta_mtbench>=-5"])
    assert result.exit_code == 0, result.output
    doc = parse(out.read_text(encoding="utf-8"))
    assert "Verdict: PASS (exit 0): the gate passed" in doc.text
    assert float(doc.metrics["gate.delta_mtbench"][0]) == pytest.approx(-1.0)
    assert run_html(run).count("<svg") >= 3


def test_several_candidates_lead_with_the_leaderboard(tmp_path: Path) -> None:
    with multi_stubs(tmp_path) as mm:
        multi: Multi = mm
        result = invoke(multi.args())
        assert result.exit_code == 0, result.output
        s = json.loads(result.stdout)
        html = run_html(multi.run_dir())
    assert_self_contained(html)
    m = parse(html).metrics
    for row in s["leaderboard"]:
        assert float(m[f"{row['name']}:leaderboard.delta"][0]) == row["delta"]["point"]
    for c in s["candidates"]:
        name = c["endpoint"]["name"]
        assert float(m[f"{name}:delta"][0]) == c["summary"]["delta"]["point"]
        assert float(m[f"{name}:candidate.score"][0]) == c["summary"]["endpoints"]["candidate"]["score"]["mean"]
