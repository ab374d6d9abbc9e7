"""llama.cpp's KL-divergence block over shadow's teacher-forced tokens: the per-token values by hand,
their storage (layout, float32 rounding, old databases), the summary's pooled block per target, its
rendering with llama.cpp's labels, the version 2 summary still read, and `servecmp report URL`."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from servecmp.finish import detect_kind as run_kind
from servecmp.shadow.measures import TokenStats, teacher_forced_stats
from servecmp.shadow.render import render
from servecmp.shadow.store import TABLES, PairRecord, open_store
from servecmp.shadow.summary import ShadowSummary, load_summary, summarise
from tests.test_shadow_report import _write_db, rec

L = math.log

#: Three teacher-forced positions (primary P, other Q, the primary's token). 1 and 2 list the same
#: two tokens (each side's rest 0.1, equal, so it adds nothing; fewer than 3 shared tokens, so no
#: tail term): the tight estimate is the plain KL over {x, y, rest}. 3 lists different tokens:
#: each side imputes the other's token at min(its smallest listed p, unlisted 0.2 / 2) = 0.1,
#: leaving 0.1 in each rest, so P = (a .5, b .3, c .1, R .1) and Q = (a .4, b .1, c .4, R .1).
PRIMARY = [{"x": L(0.6), "y": L(0.3)}, {"y": L(0.7), "x": L(0.2)}, {"a": L(0.5), "b": L(0.3)}]
OTHER = [{"x": L(0.5), "y": L(0.4)}, {"x": L(0.6), "y": L(0.3)}, {"a": L(0.4), "c": L(0.4)}]
CHOSEN = ["x", "y", "a"]
KL_BC = [0.6 * L(0.6 / 0.5) + 0.3 * L(0.3 / 0.4),
         0.7 * L(0.7 / 0.3) + 0.2 * L(0.2 / 0.6),
         0.5 * L(0.5 / 0.4) + 0.3 * L(0.3 / 0.1) + 0.1 * L(0.1 / 0.4)]
KL_CB = [0.5 * L(0.5 / 0.6) + 0.4 * L(0.4 / 0.3),
         0.3 * L(0.3 / 0.7) + 0.6 * L(0.6 / 0.2),
         0.4 * L(0.4 / 0.5) + 0.1 * L(0.1 / 0.3) + 0.4 * L(0.4 / 0.1)]
# JS = ½ Σ p log(p/m) + ½ Σ q log(q/m), m = (p + q)/2; equal rest cells add nothing.
JS = [0.5 * (0.6 * L(0.6 / 0.55) + 0.3 * L(0.3 / 0.35)) + 0.5 * (0.5 * L(0.5 / 0.55) + 0.4 * L(0.4 / 0.35)),
      0.5 * (0.7 * L(0.7 / 0.5) + 0.2 * L(0.2 / 0.4)) + 0.5 * (0.3 * L(0.3 / 0.5) + 0.6 * L(0.6 / 0.4)),
      0.5 * (0.5 * L(0.5 / 0.45) + 0.3 * L(0.3 / 0.2) + 0.1 * L(0.1 / 0.25))
      + 0.5 * (0.4 * L(0.4 / 0.45) + 0.1 * L(0.1 / 0.2) + 0.4 * L(0.4 / 0.25))]
P_BASE, P_CAND = [0.6, 0.7, 0.5], [0.5, 0.3, 0.4]
# x/x agree; y/x do not; a vs the tie {a, c}: the tied set holds a, so they agree (top1_agree's rule).
SAME = [True, False, True]


def test_per_token_values_by_hand() -> None:
    s = teacher_forced_stats(PRIMARY, OTHER, CHOSEN)
    assert s is not None
    t = s.tokens
    assert t.kl.tolist() == pytest.approx(KL_BC, rel=1e-12)
    assert [round(k, 4) for k in KL_BC] == [0.0231, 0.3734, 0.3025]  # the numbers, for a reader
    assert t.p_primary.tolist() == pytest.approx(P_BASE, rel=1e-12)
    assert t.p_other.tolist() == pytest.approx(P_CAND, rel=1e-12)
    assert t.same_top.tolist() == SAME
    assert s.kl_tight_mean == pytest.approx(sum(KL_BC) / 3, rel=1e-12)
    assert s.kl_cb_mean == pytest.approx(sum(KL_CB) / 3, rel=1e-12)
    assert s.js_mean == pytest.approx(sum(JS) / 3, rel=1e-12)
    assert s.top1_agree == 2 / 3  # the per-request share agrees with the per-token flags


def test_pack_layout_and_float32_rounding() -> None:
    s = teacher_forced_stats(PRIMARY, OTHER, CHOSEN)
    assert s is not None
    blob = s.tokens.pack()
    assert len(blob) == 4 + 13 * 3 and blob[:4] == b"\x01\x00\x00\x00"  # header, then 13 bytes a token
    back = TokenStats.unpack(blob)
    f32 = np.float32
    assert back.kl.tolist() == [float(f32(k)) for k in s.tokens.kl]
    assert back.p_primary.tolist() == [float(f32(p)) for p in s.tokens.p_primary]
    # Δp is what is stored: p_other comes back as float32(p_primary) + float32(Δp).
    dp = s.tokens.p_other - s.tokens.p_primary
    assert (back.p_other - back.p_primary).tolist() == [float(f32(x)) for x in dp]
    assert back.same_top.tolist() == SAME
    for bad, why in ((b"\x02\x00\x00\x00", "unknown layout"), (blob[:-1], "whole number"), (b"", "unknown")):
        with pytest.raises(ValueError, match=why):
            TokenStats.unpack(bad)


def _rows(records: list[PairRecord]) -> list[dict[str, Any]]:
    return [dataclasses.asdict(r) for r in records]


def _tf_record(rid: str, target: str, ts: float, primary: list[dict[str, float]], other: list[dict[str, float]],
               chosen: list[str]) -> PairRecord:
    r = rec(rid, target, ts, exact_match=True, edit_distance=0.0)
    stats = teacher_forced_stats(primary, other, chosen)
    assert stats is not None
    r.set_teacher_forced(stats)
    return r


def hand_records() -> list[PairRecord]:
    """Two requests: the candidate scores positions 1-2 on request A and 3 on request B; the secondary
    matches the primary on every position (its floor: KL 0, Δp 0, same top everywhere)."""
    return [
        _tf_record("A", "candidate", 100.0, PRIMARY[:2], OTHER[:2], CHOSEN[:2]),
        _tf_record("B", "candidate", 200.0, PRIMARY[2:], OTHER[2:], CHOSEN[2:]),
        _tf_record("A", "secondary", 100.0, PRIMARY[:2], PRIMARY[:2], CHOSEN[:2]),
        _tf_record("B", "secondary", 200.0, PRIMARY[2:], PRIMARY[2:], CHOSEN[2:]),
    ]


def test_summary_pools_tokens_across_requests_by_hand(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    _write_db(db, hand_records())
    s = load_summary(db, n_boot=200)
    assert s.teacher_forced_tokens is not None
    b = s.teacher_forced_tokens.candidate
    assert b is not None and (b.n, b.n_requests, b.skipped_requests) == (3, 2, 0)
    # float32 storage: 7 significant digits.
    approx = dict(rel=1e-6, abs=1e-9)
    mean = sum(KL_BC) / 3
    assert b.kld_mean.value == pytest.approx(mean, **approx)
    # llama.cpp's error: sqrt((mean(x²) − mean²)/(n − 1)).
    assert b.kld_mean.error == pytest.approx(math.sqrt((sum(k * k for k in KL_BC) / 3 - mean**2) / 2), **approx)
    lo, mid, hi = sorted(KL_BC)
    assert (b.kld_percentiles["max"], b.kld_percentiles["median"], b.kld_percentiles["min"]) == pytest.approx(
        (hi, mid, lo), **approx)
    # 99%: linear interpolation at 0.99 · (n − 1) = 1.98 of the sorted values.
    assert b.kld_percentiles["p99"] == pytest.approx(mid + 0.98 * (hi - mid), **approx)
    # Δp = -0.1, -0.4, -0.1: mean -0.2; mean(Δp²) = 0.06, so the error is sqrt((0.06 - 0.04)/2) = 0.1.
    assert (b.dp_mean.value, b.dp_mean.error) == pytest.approx((-0.2, 0.1), **approx)
    assert b.dp_percentiles["min"] == pytest.approx(-0.4, **approx)
    assert b.dp_percentiles["median"] == pytest.approx(-0.1, **approx)
    # RMS = sqrt(0.06); Δp⁴ mean 0.0086, so SE(Δp²) = sqrt((0.0086 - 0.0036)/2) = 0.05, over 2·RMS.
    assert b.dp_rms.value == pytest.approx(math.sqrt(0.06), **approx)
    assert b.dp_rms.error == pytest.approx(0.05 / (2 * math.sqrt(0.06)), **approx)
    # Same top 2 of 3: sqrt((2/3)(1/3)/2) = 1/3.
    assert b.same_top_count == 2
    assert (b.same_top.value, b.same_top.error) == pytest.approx((2 / 3, 1 / 3), rel=1e-12)

    floor = s.teacher_forced_tokens.secondary
    assert floor is not None and (floor.n, floor.same_top_count) == (3, 3)
    assert (floor.kld_mean.value, floor.dp_mean.value, floor.dp_rms.value) == (0.0, 0.0, 0.0)

    # Per request: KL(c ‖ b) and JS means, the candidate's against the floor's zeros.
    kl_cb = s.measure("kl_cb_mean")
    per_request = [(KL_CB[0] + KL_CB[1]) / 2, KL_CB[2]]
    assert kl_cb.candidate.n == 2 and kl_cb.candidate.mean == pytest.approx(sum(per_request) / 2, rel=1e-12)
    js = s.measure("js_mean")
    assert js.candidate.mean == pytest.approx(((JS[0] + JS[1]) / 2 + JS[2]) / 2, rel=1e-12)
    assert js.secondary is not None and js.secondary.mean == 0.0
    assert s.measure("kl_tight_mean").candidate.mean == pytest.approx(((KL_BC[0] + KL_BC[1]) / 2 + KL_BC[2]) / 2,
                                                                      rel=1e-12)


def test_render_prints_both_blocks_with_llama_cpp_labels(tmp_path: Path) -> None:
    s = summarise(_rows(hand_records()), n_boot=200)
    out = io.StringIO()
    render(s, Console(file=out, width=200, color_system=None))
    text = out.getvalue()
    assert "Teacher-forced tokens, as llama.cpp's KL-divergence report" in text
    b = s.teacher_forced_tokens.candidate if s.teacher_forced_tokens else None
    assert b is not None and b.kld_mean.value is not None and b.kld_mean.error is not None
    line = next(ln for ln in text.splitlines() if "Mean    KLD" in ln)
    # The candidate's "value ± error" in llama.cpp's format, then the floor's.
    assert f"{b.kld_mean.value:.6f} ± {b.kld_mean.error:.6f}" in line and "0.000000 ± 0.000000" in line
    for label in ("99.9%   KLD", "Median  KLD", " 0.1%   KLD", "Mean    Δp", "75.0%   Δp", "RMS Δp", "Same top p"):
        assert label in text
    same = next(ln for ln in text.splitlines() if "Same top p" in ln)
    assert "66.667 ± 33.333 % (2/3)" in same and "100.000 ± 0.000 % (3/3)" in same
    assert "3 (2 requests)" in text


def _old_database(path: Path) -> None:
    """A database of layout 2: the pairs table without the layout 3 columns."""
    new = {"kl_tight_mean", "kl_cb_mean", "js_mean", "tf_token_stats"}
    types = {"text": "TEXT", "int": "INTEGER", "real": "REAL", "blob": "BLOB", "id": "INTEGER PRIMARY KEY"}
    conn = sqlite3.connect(path)
    for table, (columns, extra) in TABLES.items():
        cols = ", ".join(f"{n} {types[k]} {c}".strip() for n, k, c in columns if n not in new)
        conn.execute(f"CREATE TABLE {table} ({cols}{extra})")
    conn.execute("INSERT INTO meta VALUES ('schema_version', '2')")
    conn.execute("INSERT INTO runs VALUES ('old', 1.0, 'serve', 'p', 'c', NULL, 0, 1.0, '{}')")
    conn.execute("INSERT INTO pairs (run_id, request_id, ts, source, endpoint, stream, target, prompt_sha256, "
                 "primary_status, primary_latency_s, exact_match, edit_distance, kl_mean, tf_positions) "
                 "VALUES ('old', 'r0', 100.0, 'live', 'chat', 0, 'candidate', 'ab', 200, 0.1, 1, 0.0, 0.02, 5)")
    conn.commit()
    conn.close()


def test_old_database_reports_without_the_block_and_gains_the_columns_when_written(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    _old_database(db)
    s = load_summary(db, n_boot=200)
    assert s.teacher_forced_tokens is None
    keys = [m.key for m in s.measures]
    assert "kl_mean" in keys and not {"kl_tight_mean", "kl_cb_mean", "js_mean"} & set(keys)
    assert s.measure("kl_mean").candidate.mean == 0.02
    out = io.StringIO()
    render(s, Console(file=out, width=200, color_system=None))
    assert "llama.cpp" not in out.getvalue()

    # Opened for writing (a new proxy on an old file): the columns are added, the old row kept.
    open_store(db).close()
    conn = sqlite3.connect(db)
    cols = [r[1] for r in conn.execute("PRAGMA table_info(pairs)")]
    version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
    conn.close()
    assert cols[-4:] == ["kl_tight_mean", "kl_cb_mean", "js_mean", "tf_token_stats"] and version == "3"
    open_store(db).close()  # a second open finds nothing to add
    _write_db(db, hand_records()[:2])
    s = load_summary(db, n_boot=200)
    assert s.teacher_forced_tokens is not None and s.teacher_forced_tokens.candidate is not None
    assert s.teacher_forced_tokens.candidate.n == 3 and s.teacher_forced_tokens.secondary is None
    assert s.measure("kl_cb_mean").candidate.n == 2  # the old row has no value: not counted


def test_a_version_2_summary_still_validates() -> None:
    s = summarise(_rows(hand_records()), n_boot=200)
    data = json.loads(json.dumps(s.model_dump(mode="json")))
    assert data["version"] == 3 and data["teacher_forced_tokens"]["candidate"]["n"] == 3
    old = {k: v for k, v in data.items() if k != "teacher_forced_tokens"}
    old["version"] = 2
    old["measures"] = [m for m in data["measures"] if m["key"] not in ("kl_tight_mean", "kl_cb_mean", "js_mean")]
    v2 = ShadowSummary.model_validate(old)
    assert v2.version == 2 and v2.teacher_forced_tokens is None
    assert ShadowSummary.model_validate(data) == s
    with pytest.raises(ValueError, match="version"):
        ShadowSummary.model_validate({**data, "version": 4})


def test_unreadable_per_token_values_are_left_out_and_counted() -> None:
    rows = _rows(hand_records())
    rows[0]["tf_token_stats"] = b"\x09\x00\x00\x00"  # a layout this servecmp does not know
    s = summarise(rows, n_boot=200)
    assert s.teacher_forced_tokens is not None
    b = s.teacher_forced_tokens.candidate
    assert b is not None and (b.n, b.n_requests, b.skipped_requests) == (1, 1, 1)


@pytest.mark.parametrize("url", ["postgresql://u@h/db", "postgres://u:pw@h:5/db", "POSTGRESQL://h/db"])
def test_report_cli_sends_database_urls_to_the_shadow_report(url: str) -> None:
    assert run_kind(url) == "shadow"


def test_html_page_shows_the_block_with_the_summary_numbers(tmp_path: Path) -> None:
    from servecmp.html.shadow import render_shadow
    from tests.test_html_page import assert_self_contained, parse

    db = tmp_path / "s.db"
    _write_db(db, hand_records())
    s = load_summary(db, n_boot=200)
    html = render_shadow(s, db=db)
    assert_self_contained(html)
    m = parse(html).metrics
    tokens = s.teacher_forced_tokens
    assert tokens is not None and tokens.candidate is not None and tokens.secondary is not None
    for target, block in (("candidate", tokens.candidate), ("secondary", tokens.secondary)):
        for key in ("kld_mean", "dp_mean", "dp_rms", "same_top"):
            assert float(m[f"teacher_forced_tokens.{target}.{key}"][0]) == getattr(block, key).value
    assert m["teacher_forced_tokens.candidate.same_top"][1] == "66.667 ± 33.333 % (2/3)"
    # An old database's page has no such section.
    old = tmp_path / "old.db"
    _old_database(old)
    assert "teacher_forced_tokens" not in render_shadow(load_summary(old, n_boot=200), db=old)
