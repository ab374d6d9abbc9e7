"""llama.cpp's block end to end: stub endpoints with varied next-token distributions, a shadow replay
(primary, candidate, secondary), and the summary's per-target block compared with `kl_report` over
positions the test computes itself from the stub's distributions. Then the same numbers through
PostgreSQL, and `servecmp report URL` printing what `servecmp shadow report URL` prints."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from servecmp._cli.main import build_app
from servecmp.config import ShadowConfig
from servecmp.metrics.kl import topk_kl_tight_item
from servecmp.metrics.kl_report import KlReport, kl_report, top_token
from servecmp.shadow.replay import load_requests, replay
from servecmp.shadow.store import Counters, PairWriter, RunInfo, open_store, register_run
from servecmp.shadow.summary import TokenBlock, load, load_summary
from servecmp.shadow.wiring import ShadowEndpoints
from tests import stub_shadow
from tests._pg import pg_server, pg_url, query
from tests.stub_shadow import WORDS, ServerThread, StubControl, build_stub_app, tokenize
from tests.test_shadow_kl import hand_records

#: The session's PostgreSQL fixtures, used here (named so the imports count as used).
FIXTURES = (pg_server, pg_url)


def _h(*parts: object) -> int:
    return stub_shadow._h("kl-e2e", *parts)


def varied(token: str, variant: int) -> dict[str, float]:
    """Top-5 logprobs at a position whose actual token is ``token``, varying with the token (the
    stub's own `distribution` is the same at every position, which would make every percentile
    equal). Variant 0 (primary): the token gets 0.35-0.85, four alternatives share 90% of the rest.
    Other variants: each probability scaled by exp(noise), noise up to ±0.4 (variant 1, the
    candidate) or ±0.05 (variant 2, the secondary); for a third of the tokens the candidate lists a
    different fifth token (the estimate imputes the missing ones), for a fifth it swaps the token's
    probability with the first alternative's (another token on top).
    The listed mass is then set to 0.95."""
    strip = token.strip()
    h = _h(token)
    base = WORDS.index(strip) if strip in WORDS else h % len(WORDS)
    lead = " " if token.startswith(" ") else ""
    alts = [lead + WORDS[(base + 3 * j) % len(WORDS)] for j in range(1, 5)]
    a = 0.35 + 0.5 * (h % 97) / 96
    probs = {token: a} | {alt: (1 - a) * 0.9 * w for alt, w in zip(alts, (0.5, 0.25, 0.15, 0.1), strict=True)}
    if variant:
        if variant == 1 and h % 3 == 0:
            probs.pop(alts[-1])
            probs[lead + WORDS[(base + 17) % len(WORDS)]] = (1 - a) * 0.09
        if variant == 1 and h % 5 == 1:  # the candidate prefers the first alternative
            probs[token], probs[alts[0]] = probs[alts[0]], probs[token]
        scale = 0.4 if variant == 1 else 0.05
        probs = {t: p * math.exp(scale * ((_h(variant, token, t) % 201) / 100 - 1)) for t, p in probs.items()}
        total = sum(probs.values())
        probs = {t: 0.95 * p / total for t, p in probs.items()}
    return {t: math.log(p) for t, p in probs.items()}


def _requests(path: Path, n: int) -> Path:
    lines: list[dict[str, Any]] = []
    for i in range(n):
        if i % 2:
            lines.append({"url": "/v1/completions", "body": {"model": "stub-model", "prompt": f"Tell me {i}"}})
        else:
            lines.append({"model": "stub-model", "messages": [{"role": "user", "content": f"question {i}"}]})
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


def expected_report(rows: list[dict[str, Any]], target: str, variant: int) -> tuple[KlReport, int]:
    """`kl_report` over every answer token of the target's rows, from the stub's distributions."""
    kl, p_base, p_cand, same = [], [], [], []
    n_requests = 0
    for r in rows:
        if r["target"] != target:
            continue
        assert r["tf_error"] is None and r["primary_answer"]
        n_requests += 1
        for tok in tokenize(r["primary_answer"]):
            p, q = varied(tok, 0), varied(tok, variant)
            kl.append(topk_kl_tight_item(p, q).kl_bc)
            p_base.append(math.exp(p[tok]))
            p_cand.append(math.exp(q[tok]))
            same.append(top_token(p) == top_token(q))  # no exact ties here, so either tie rule agrees
    return kl_report(kl, p_base, p_cand, same), n_requests


def assert_block_equals(block: TokenBlock | None, want: KlReport, n_requests: int) -> None:
    assert block is not None
    assert (block.n, block.n_requests, block.same_top_count) == (want.n, n_requests, want.same_top_count)
    # The database keeps float32 (7 significant digits): equal to that precision, not to the last bit.
    approx: dict[str, float] = {"rel": 1e-6, "abs": 1e-8}
    for got, exp in ((block.kld_mean, want.kld_mean), (block.dp_mean, want.dp_mean), (block.dp_rms, want.dp_rms),
                     (block.same_top, want.same_top)):
        assert (got.value, got.error) == pytest.approx((exp.value, exp.error), **approx)
    assert block.kld_percentiles == pytest.approx(want.kld_percentiles, **approx)
    assert block.dp_percentiles == pytest.approx(want.dp_percentiles, **approx)


def test_replay_block_per_target_equals_kl_report_over_the_positions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The stub servers look `distribution` up at call time, so they serve `varied`.
    monkeypatch.setattr(stub_shadow, "distribution", varied)
    requests = load_requests(_requests(tmp_path / "q.jsonl", 8))
    cfg = ShadowConfig(db=str(tmp_path / "e.db"))
    with ServerThread(build_stub_app(StubControl())) as p, \
            ServerThread(build_stub_app(StubControl(variant=1, model="cand-model"))) as c, \
            ServerThread(build_stub_app(StubControl(variant=2))) as s:
        outcome = asyncio.run(replay(cfg, ShadowEndpoints.of(p.url, c.url, s.url), requests, send_rps=200,
                                     max_in_flight=2))
    assert outcome.compared == 8
    summary = load_summary(cfg.db, n_boot=200)
    rows = load(cfg.db)[0]
    tokens = summary.teacher_forced_tokens
    assert tokens is not None
    cand, n_cand = expected_report(rows, "candidate", 1)
    floor, n_floor = expected_report(rows, "secondary", 2)
    assert cand.n == 64 and n_cand == 8  # 8 answers of 8 words
    # The example exercises what it should: some disagreement on top, spread-out KL.
    assert cand.same_top.value is not None and 0 < cand.same_top.value < 1
    assert cand.kld_percentiles["max"] != cand.kld_percentiles["min"]
    assert_block_equals(tokens.candidate, cand, n_cand)
    assert_block_equals(tokens.secondary, floor, n_floor)
    # The candidate (noise ±0.4) diverges more than the floor (±0.05).
    assert cand.kld_mean.value is not None and floor.kld_mean.value is not None
    assert cand.kld_mean.value > 10 * floor.kld_mean.value

    # Per request: KL(c ‖ b) and JS means exist for every request, with intervals.
    for key in ("kl_cb_mean", "js_mean", "kl_tight_mean"):
        m = summary.measure(key)
        assert getattr(m.candidate, "n", 0) == 8 and m.secondary is not None and m.excess is not None
    # The printed report shows the block (a sample for the reader of this test's output).
    res = CliRunner().invoke(build_app(), ["report", cfg.db], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "Mean    KLD" in res.output and "noise floor (secondary)" in res.output


def _write(target: str) -> None:
    run = RunInfo(mode="serve", primary_url="http://p", candidate_url="http://c", secondary_url="http://s",
                  hash_only=True, sample_rate=1.0, settings={}, run_id="run1")
    register_run(target, run)
    writer = PairWriter(target, run, Counters())
    writer.start()
    assert writer.submit(hand_records())
    writer.close()


def test_postgres_stores_and_reports_the_same_block(tmp_path: Path, pg_url: str) -> None:
    lite = str(tmp_path / "s.db")
    _write(lite)
    _write(pg_url)
    a, b = load_summary(lite, n_boot=200), load_summary(pg_url, n_boot=200)
    assert a.teacher_forced_tokens is not None and b.teacher_forced_tokens == a.teacher_forced_tokens
    assert [m.model_dump() for m in b.measures] == [m.model_dump() for m in a.measures]
    # --hash-only keeps the numbers: the per-token values are stored, the texts are not.
    assert query(pg_url, "SELECT count(*) FROM pairs WHERE tf_token_stats IS NOT NULL AND prompt IS NULL") == [(4,)]

    # `servecmp report URL` is `servecmp shadow report URL`.
    app = build_app()
    via_report = CliRunner().invoke(app, ["report", pg_url, "--json"])
    via_shadow = CliRunner().invoke(app, ["shadow", "report", "--db", pg_url, "--json", "--n-boot", "2000"])
    assert via_report.exit_code == 0 and via_shadow.exit_code == 0, via_report.output + via_shadow.output
    assert json.loads(via_report.stdout) == json.loads(via_shadow.stdout)
    assert json.loads(via_report.stdout)["database"] == pg_url


def test_an_old_postgres_database_gains_the_columns(pg_url: str) -> None:
    new = ("kl_tight_mean", "kl_cb_mean", "js_mean", "tf_token_stats")
    open_store(pg_url).close()
    import psycopg

    with psycopg.connect(pg_url) as conn:  # back to layout 2
        conn.execute("ALTER TABLE pairs " + ", ".join(f"DROP COLUMN {c}" for c in new))
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    old = load_summary(pg_url, n_boot=200)
    assert old.teacher_forced_tokens is None
    open_store(pg_url).close()
    cols = [r[0] for r in query(pg_url, "SELECT column_name FROM information_schema.columns "
                                "WHERE table_name = 'pairs' ORDER BY ordinal_position")]
    assert tuple(cols[-4:]) == new
    assert query(pg_url, "SELECT value FROM meta WHERE key = 'schema_version'") == [("3",)]
