"""`servecmp gen --from-lm-eval BASE CAND` on real lm-eval 0.4.13 gsm8k sample logs (the fixtures of
tests/fixtures/lmeval_gsm8k, made against the embedded vLLM pair; the values below are the ones its
README lists from the logs themselves)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from servecmp._cli.main import build_app
from tests.test_mcq_cli import assert_one_line_error, servecmp

FIX = Path(__file__).parent / "fixtures" / "lmeval_gsm8k"


def _logs() -> tuple[Path, Path]:
    (b,) = sorted((FIX / "baseline").glob("samples_*.jsonl"))
    (c,) = sorted((FIX / "candidate").glob("samples_*.jsonl"))
    return b, c


def test_from_lm_eval_reextracts_and_compares(tmp_path: Path) -> None:
    b, c = _logs()
    html = tmp_path / "lm.html"
    res = CliRunner().invoke(build_app(), ["gen", "--from-lm-eval", str(b), str(c), "--json", "--html", str(html)])
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    cand = [(r["item_id"], r["cand_answer"]) for r in s["candidates"][0]["items"]]
    # strict-match of the candidate, in doc order: 24 4 [invalid] 18 3 [invalid] [invalid] [invalid].
    assert sorted(cand, key=lambda t: int(t[0].split("/")[1])) == [
        ("gsm8k/0", "24"), ("gsm8k/1", "4"), ("gsm8k/2", None), ("gsm8k/3", "18"), ("gsm8k/4", "3"),
        ("gsm8k/5", None), ("gsm8k/6", None), ("gsm8k/7", None)]
    base_ep, cand_ep = s["endpoints"]
    assert [a["count"] for a in base_ep["accuracy"]] == [0, 0] and [a["count"] for a in cand_ep["accuracy"]] == [0, 0]
    assert cand_ep["no_answer"]["count"] == 4 and base_ep["no_answer"]["count"] == 1
    assert s["run"]["divergence_unit"] == "characters" and s["run"]["length_unit"] == "characters"
    assert "lm-eval parity (baseline): strict-match 8/8, flexible-extract 8/8" in " ".join(s["notes"])
    assert "lm-eval parity (candidate): strict-match 8/8, flexible-extract 8/8" in " ".join(s["notes"])
    assert any("cannot show on a model at 0%" in n for n in s["notes"])
    assert "gsm8k/4" in html.read_text()


def test_from_lm_eval_refuses_endpoint_flags(tmp_path: Path) -> None:
    b, c = _logs()
    assert_one_line_error(servecmp("gen", "--from-lm-eval", str(b), str(c), "--limit", "3"),
                          "--limit do not apply to it")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"doc_id": 0}\n')
    assert_one_line_error(servecmp("gen", "--from-lm-eval", str(bad), str(c)),
                          "bad.jsonl:1: not an lm-eval gsm8k sample")
