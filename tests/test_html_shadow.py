"""The shadow HTML report (`servecmp shadow report DB --html`, `servecmp report DB --html`): the
measures and hourly rates equal the summary's; the worst-diverging requests show both answers, or
only their hashes for a --hash-only database. The database is test_shadow_report's scenario: 10
requests, the first 8 of which the candidate answers differently (edit distances 0.1 ... 0.8),
the secondary matching every one, and one candidate timeout."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from typer.testing import CliRunner

from servecmp._cli.main import build_app
from servecmp.finish import run_html
from servecmp.shadow.store import PairRecord
from tests.test_html_page import assert_self_contained, fpct, parse
from tests.test_shadow_report import _write_db, scenario


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def with_answers() -> list[PairRecord]:
    out = []
    for r in scenario(8):
        i = r.request_id
        primary, other = f"primary answer {i} <em>x</em>", (f"candidate answer {i}" if r.target == "candidate"
                                                            else f"primary answer {i} <em>x</em>")
        out.append(dataclasses.replace(r, primary_answer=primary, other_answer=other, primary_sha256=sha(primary),
                                       other_sha256=sha(other)))
    return out


def cli(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(build_app(), list(args))
    return res.exit_code, res.stdout


def test_shadow_page_numbers_and_answers(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    _write_db(db, with_answers())
    out = tmp_path / "shadow.html"
    code, stdout = cli("shadow", "report", str(db), "--json", "--n-boot", "200", "--show", "3", "--html", str(out))
    assert code == 0, stdout
    s = json.loads(stdout)
    html = out.read_text(encoding="utf-8")
    assert_self_contained(html)
    doc = parse(html)
    m = doc.metrics
    assert doc.title == "servecmp shadow — s.db"
    mis = next(x for x in s["measures"] if x["key"] == "mismatch")
    assert float(m["mismatch.candidate"][0]) == mis["candidate"]["rate"] == 0.8  # 8 of 10 compared
    c = mis["candidate"]
    assert m["mismatch.candidate"][1] == f"{fpct(c['rate'])} [{fpct(c['low'])}, {fpct(c['high'])}] (n=10)"
    assert float(m["mismatch.secondary"][0]) == 0.0
    assert float(m["mismatch.excess"][0]) == mis["excess"]["diff"]
    ed = next(x for x in s["measures"] if x["key"] == "edit_distance")
    assert float(m["edit_distance.candidate"][0]) == ed["candidate"]["mean"]
    for h in s["hourly"]:
        assert float(m[f"hour.{h['hour']}.mismatch"][0]) == h["candidate_mismatch"]["rate"]
    # Worst three by edit distance: r7, r6, r5, each with both answers side by side (escaped).
    worst = [a["data-request"] for tag, a in doc.elements if tag == "details" and "data-request" in a]
    assert worst == [w["request_id"] for w in s["worst"]] == ["r7", "r6", "r5"]
    assert float(m["worst.r7.edit_distance"][0]) == 0.8
    for i in ("r7", "r6", "r5"):
        assert f"primary answer {i} <em>x</em>" in doc.text and f"candidate answer {i}" in doc.text
    assert "<em>" not in html
    assert "noise floor: 0.0%" in doc.text and "secondary replica" in doc.text
    assert "<svg" in html


def test_hash_only_database_shows_hashes(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    _write_db(db, with_answers(), hash_only=True)
    out = tmp_path / "h.html"
    code, _ = cli("report", str(db), "--html", str(out), "--gate", "answer_differs<=20%")
    assert code == 1  # 80% of answers differ, the secondary none: the excess interval lies above 20%
    html = out.read_text(encoding="utf-8")
    doc = parse(html)
    assert "candidate answer r" not in html and "primary answer r" not in html
    assert f"sha256:{sha('candidate answer r7')}" in doc.text
    assert f"sha256:{sha('primary answer r7 <em>x</em>')}" in doc.text
    assert "Verdict: FAIL (exit 1): 1 of 1 gates failed" in doc.text
    assert run_html(db).startswith("<!DOCTYPE html>")
