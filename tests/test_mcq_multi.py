"""Several candidates against one baseline: the leaderboard and the correlations across candidates
against hand-computed values, the run-directory layout (comparison.json / summary.json), the
settings (flags by position, [[candidates]], names), and end to end on stub endpoints (resume of a
two-candidate run after kill -9, gates applied to every candidate)."""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest

from servecmp.config import parse_config
from servecmp.endpoints import EndpointSpec
from servecmp.errors import UserError
from servecmp.mcq.compare import compare_run, load_comparison
from servecmp.mcq.records import McqRecord
from servecmp.mcq.settings import McqOptions, McqSettings, NamedEndpoint, new_manifest, new_settings, write_manifest
from servecmp.mcq.summary import load_summary
from servecmp.tasks.registry import TaskData
from tests.stub_openai import StubServer, StubState
from tests.test_mcq_cli import records, servecmp, write_items
from tests.test_mcq_resume import _start_and_kill

#: Four items, gold 0, four options. The baseline puts 0.7 on the gold option.
Probs = tuple[float, ...]
P: Probs = (0.7, 0.1, 0.1, 0.1)
WRONG: Probs = (0.1, 0.7, 0.1, 0.1)  # the same shape on option B: a correct→wrong flip
SOFT: Probs = (0.4, 0.39, 0.2, 0.01)  # still A, but far from P
N_ITEMS = 4


def kl(p: tuple[float, ...], q: tuple[float, ...]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


def record(item: int, endpoint: str, probs: tuple[float, ...], repeat: int = 0) -> McqRecord:
    lp = [math.log(x) for x in probs]
    return McqRecord(item_id=f"q{item}", endpoint=endpoint, task="jsonl:/x.jsonl", subject="s", gold=0,
                     option_logprobs=lp, chosen=int(np.argmax(lp)), repeat=repeat)


def make_run(tmp_path: Path, answers: Mapping[str, Sequence[Probs]], *, secondary: bool = False,
             noise_floor: int | None = None, extra: tuple[McqRecord, ...] = ()) -> Path:
    """A finished run directory: manifest (every name in `answers` but baseline/secondary a
    candidate) and one record per item and endpoint."""
    names = [n for n in answers if n not in ("baseline", "secondary")]
    settings = McqSettings(
        baseline=EndpointSpec(base_url="http://base:8000", model="m-base"),
        candidates=[NamedEndpoint(base_url=f"http://{n}:8000", model=f"m-{n}", name=n) for n in names],
        secondary=EndpointSpec(base_url="http://sec:8000", model="m-base") if secondary else None,
        noise_floor=noise_floor, task="jsonl:/x.jsonl", runs_dir=tmp_path,
    )
    data = TaskData(name="jsonl:/x.jsonl", items=[], source="JSONL file /x.jsonl", fingerprint="f" * 16,
                    prompt_format_hash="p" * 16, source_kind="jsonl", fewshot=0, n_available=N_ITEMS)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    manifest = new_manifest(settings, data).model_copy(update={"n_items": N_ITEMS, "finished_at": "now"})
    write_manifest(run_dir, manifest)
    lines = [record(i, name, probs) for name, rows in answers.items() for i, probs in enumerate(rows)]
    lines += list(extra)
    (run_dir / "records.jsonl").write_text("".join(r.model_dump_json() + "\n" for r in lines))
    return run_dir


LADDER: dict[str, list[Probs]] = {
    "baseline": [P] * 4,
    "a": [WRONG, P, P, P],           # 1 flip
    "b": [WRONG, WRONG, P, P],       # 2 flips
    "c": [WRONG, WRONG, WRONG, P],   # 3 flips
    "d": [SOFT] * 4,                 # 0 flips, every item moved
}


def exact_permutation_p(x: list[float], y: list[float], rank: bool) -> tuple[float, float]:
    """r and its two-sided p over all n! pairings, written out independently of scipy: twice the
    smaller one-sided tail, capped at 1 (scipy's definition for permutation tests)."""
    def ranks(v: list[float]) -> list[float]:
        order = sorted(v)
        return [order.index(a) + 1.0 for a in v]  # no ties in these tests

    def r(a: list[float], b: list[float]) -> float:
        return float(np.corrcoef(a, b)[0, 1])

    xs, ys = (ranks(x), ranks(y)) if rank else (x, y)
    observed = r(xs, ys)
    rs = [r(xs, list(p)) for p in itertools.permutations(ys)]
    low = sum(v <= observed + 1e-12 for v in rs) / len(rs)
    high = sum(v >= observed - 1e-12 for v in rs) / len(rs)
    return observed, min(1.0, 2 * min(low, high))


def test_leaderboard_and_correlations_match_hand_values(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, LADDER)
    comp = compare_run(run_dir)
    per_item = kl(P, WRONG)  # 0.6 · ln 7
    assert per_item == pytest.approx(0.6 * math.log(7))
    soft = kl(P, SOFT)
    expected = {  # name: (flips, Δacc, changes, mean option KL)
        "a": (1, -0.25, 1, per_item / 4),
        "b": (2, -0.50, 2, per_item / 2),
        "c": (3, -0.75, 3, 3 * per_item / 4),
        "d": (0, 0.0, 0, soft),
    }
    # Fewest flips first: d, a, b, c.
    assert [r.name for r in comp.leaderboard] == ["d", "a", "b", "c"]
    assert [r.rank for r in comp.leaderboard] == [1, 2, 3, 4]
    for row in comp.leaderboard:
        flips, dacc, changes, mean_kl = expected[row.name]
        assert (row.flips.count, row.flips.n, row.correct_to_wrong, row.wrong_to_correct) == (flips, 4, flips, 0)
        assert row.flips.rate == pytest.approx(flips / 4)
        assert row.delta_acc.point == pytest.approx(dacc)
        assert row.answer_changes.count == changes
        assert row.option_kl.point == pytest.approx(mean_kl)
        assert row.model == f"m-{row.name}" and row.n_items == 4
        # Each candidate's full summary is the one a two-endpoint run of it would give.
        assert comp.candidate(row.name).summary.flips.flips == flips
    # Across candidates: flips (0, 1, 2, 3) against KL (soft, k/4, k/2, 3k/4) with soft between k/4 and k/2.
    assert per_item / 4 < soft < per_item / 2
    flip_rates = [expected[n][0] / 4 for n in "abcd"]
    kls = [expected[n][3] for n in "abcd"]
    change_rates = [expected[n][2] / 4 for n in "abcd"]
    abs_dacc = [abs(expected[n][1]) for n in "abcd"]
    by_pair = {(c.x, c.y): c.correlation for c in comp.correlations}
    assert set(by_pair) == {("flip_rate", "option_kl"), ("answer_change_rate", "option_kl"),
                            ("flip_rate", "abs_delta_acc")}
    pairs: dict[tuple[str, str], tuple[list[float], list[float]]] = {
        ("flip_rate", "option_kl"): (flip_rates, kls), ("answer_change_rate", "option_kl"): (change_rates, kls),
        ("flip_rate", "abs_delta_acc"): (flip_rates, abs_dacc)}
    for (x, y), (xs, ys) in pairs.items():
        c = by_pair[(x, y)]
        sr, sp = exact_permutation_p(xs, ys, rank=True)
        pr, pp = exact_permutation_p(xs, ys, rank=False)
        assert (c.n, c.p_method) == (4, "exact permutation")
        assert c.spearman_r == pytest.approx(sr) and c.spearman_p == pytest.approx(sp)
        assert c.pearson_r == pytest.approx(pr) and c.pearson_p == pytest.approx(pp)
    # Hand values: the ranks of KL are (2, 1, 3, 4) against (1, 2, 3, 4): Σd² = 2, ρ = 1 − 6·2/(4·15) = 0.8;
    # 8 of the 24 pairings have |ρ| ≥ 0.8 (Σd² ∈ {0, 2, 18, 20}: 1 + 3 + 3 + 1).
    assert by_pair[("flip_rate", "option_kl")].spearman_r == pytest.approx(0.8)
    assert by_pair[("flip_rate", "option_kl")].spearman_p == pytest.approx(8 / 24)
    # flips and |Δacc| are the same thing here (every flip is correct→wrong): ρ = 1, p = 2/24.
    assert by_pair[("flip_rate", "abs_delta_acc")].spearman_r == pytest.approx(1.0)
    assert by_pair[("flip_rate", "abs_delta_acc")].spearman_p == pytest.approx(2 / 24)
    # The scatter plot, and the files: summary.json is the comparison when there are several.
    assert comp.scatter_png == str(run_dir / "leaderboard.png") and (run_dir / "leaderboard.png").stat().st_size
    stored = json.loads((run_dir / "summary.json").read_text())
    assert (stored["schema"], stored["version"]) == ("servecmp.mcq_comparison/1", 1)
    assert load_comparison(run_dir) == comp
    with pytest.raises(UserError, match="compares several candidates"):
        load_summary(run_dir)


def test_fewer_than_three_candidates_have_no_correlation(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, {"baseline": LADDER["baseline"], "a": LADDER["a"], "b": LADDER["b"]})
    comp = compare_run(run_dir)
    assert comp.correlations == [] and comp.scatter_png is None
    assert [r.name for r in comp.leaderboard] == ["a", "b"]


def test_one_candidate_keeps_the_summary_layout(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, {"baseline": LADDER["baseline"], "candidate": LADDER["b"]})
    comp = compare_run(run_dir)
    summary = load_summary(run_dir)
    assert summary == comp.candidates[0].summary and summary.flips.flips == 2
    assert json.loads((run_dir / "summary.json").read_text())["schema"] == "servecmp.mcq_summary/3"
    one = load_comparison(run_dir)
    assert [c.name for c in one.candidates] == ["candidate"] and len(one.leaderboard) == 1
    # A run of an earlier servecmp (no comparison.json) reads as a comparison of one.
    (run_dir / "comparison.json").unlink()
    assert load_comparison(run_dir).candidates[0].summary == summary


# --- settings ------------------------------------------------------------------------------------


def test_candidate_flags_match_by_position_and_names_default() -> None:
    cfg = parse_config({})
    s = new_settings(McqOptions(baseline="http://b:1", candidate=["http://c1:1", "http://c2:1"],
                                candidate_model=["m1", "m2"], candidate_key_env=["K1"],
                                candidate_name=["int8"], concurrency=3), cfg)
    assert [(c.base_url, c.model, c.api_key_env, c.name, c.max_concurrency) for c in s.candidates] == [
        ("http://c1:1/v1", "m1", "K1", "int8", 3), ("http://c2:1/v1", "m2", None, None, 3)]
    s.resolve_names()
    assert [c.name for c in s.candidates] == ["int8", "m2"]
    # Default names: the served model's last path part, deduplicated; "baseline" is never one.
    s = McqSettings(baseline=EndpointSpec(base_url="http://b:1"),
                    candidates=[NamedEndpoint(base_url="http://c:1", model="org/q"),
                                NamedEndpoint(base_url="http://d:1", model="other/q"),
                                NamedEndpoint(base_url="http://e:1", model="baseline")])
    s.resolve_names()
    assert [c.name for c in s.candidates] == ["q", "q-2", "baseline-2"]
    # One candidate keeps the role's name.
    one = new_settings(McqOptions(baseline="http://b:1", candidate="http://c:1"), cfg)
    one.resolve_names()
    assert one.candidate.name == "candidate"


def test_candidates_from_the_config_file() -> None:
    cfg = parse_config({"baseline": {"url": "http://b:1"},
                        "candidates": [{"url": "http://c1:1", "name": "int8", "max_concurrency": 2},
                                       {"url": "http://c2:1", "model": "m2", "api_key_env": "K2"}],
                        "mcq": {"noise_floor": 5}})
    s = new_settings(McqOptions(), cfg)
    assert [(c.name, c.base_url, c.model, c.api_key_env, c.max_concurrency) for c in s.candidates] == [
        # Not set in the file: MCQ's default, "auto" (servecmp.concurrency).
        ("int8", "http://c1:1/v1", None, None, 2), (None, "http://c2:1/v1", "m2", "K2", "auto")]
    assert s.noise_floor == 5 and s.secondary is None


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        ({"candidate": ["http://c:1"], "candidate_model": ["a", "b"]}, "2 --candidate-model flags for 1 --candidate"),
        ({"candidate": ["http://c:1", "http://d:1"], "candidate_name": ["x", "x"]}, "the names must differ"),
        ({"candidate": ["http://c:1"], "candidate_name": ["baseline"]}, "that name is the baseline's"),
        ({"candidate": ["http://c:1"], "secondary_model": "m"}, "need --secondary URL"),
    ],
)
def test_bad_candidate_flags_are_one_line(opts: dict[str, object], message: str) -> None:
    with pytest.raises(UserError, match=message):
        new_settings(McqOptions(baseline="http://b:1", **opts), parse_config({}))  # type: ignore[arg-type]


def test_manifest_records_every_candidate(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, LADDER, secondary=True, noise_floor=2)
    raw = json.loads((run_dir / "manifest.json").read_text())
    assert [(e["role"], e["name"], e["model"], e["max_concurrency"]) for e in raw["endpoints"]] == [
        ("baseline", None, "m-base", 4), *(("candidate", n, f"m-{n}", 4) for n in "abcd")]
    assert raw["secondary"]["base_url"] == "http://sec:8000/v1" and raw["noise_floor"] == 2


# --- end to end on stub endpoints ----------------------------------------------------------------


def test_two_candidates_resume_after_kill_without_duplicates(tmp_path: Path) -> None:
    data = tmp_path / "items.jsonl"
    write_items(data, 12)
    runs = tmp_path / "runs"
    with StubServer(StubState(model="base", delay_s=0.1)) as b, StubServer(StubState(model="c1", delay_s=0.1)) as c1, \
            StubServer(StubState(model="c2", delay_s=0.1)) as c2:
        args = ["--baseline", b.url, "--candidate", c1.url, "--candidate", c2.url, "--candidate-name", "one",
                "--task", f"jsonl:{data}", "--runs-dir", str(runs), "--top-k", "5", "--concurrency", "1"]
        run_dir = _start_and_kill(args, runs, at_least=8)
        before = records(run_dir)
        assert 8 <= len(before) < 36
        done = servecmp("mcq", "--resume", str(run_dir), "--json", "--concurrency", "2")
        assert done.returncode == 0, done.stderr
    after = records(run_dir)
    keys = Counter((r["item_id"], r["endpoint"], r["repeat"]) for r in after)
    assert len(keys) == 36 and max(keys.values()) == 1
    assert {r["endpoint"] for r in after} == {"baseline", "one", "c2"}
    assert after[: len(before)] == before
    out = json.loads(done.stdout)
    assert out["schema"] == "servecmp.mcq_comparison/1"
    assert sorted(c["name"] for c in out["candidates"]) == ["c2", "one"]
    assert all(c["summary"]["n_items"] == 12 for c in out["candidates"])


def test_gates_apply_to_every_candidate(tmp_path: Path) -> None:
    data = tmp_path / "items.jsonl"
    write_items(data, 10)
    runs = tmp_path / "runs"
    md = tmp_path / "summary.md"
    with StubServer(StubState(model="base")) as b, StubServer(StubState(model="c1")) as c1:
        common = ["mcq", "--baseline", b.url, "--candidate", c1.url, "--candidate", b.url, "--task",
                  f"jsonl:{data}", "--runs-dir", str(runs), "--top-k", "5"]
        passed = servecmp(*common, "--gate", "flips<=100%", "--summary-md", str(md))
        assert passed.returncode == 0, passed.stderr
        assert "Leaderboard" in passed.stdout and "PASS" in passed.stdout
        assert "c1" in md.read_text() and "base" in md.read_text()
        # The control (the baseline itself) never flips: on 10 items its Wilson interval [0%, 27.8%]
        # neither passes nor fails flips>=1%, while c1 passes it: exit 4 (none failed, one inconclusive).
        undecided = servecmp(*common, "--gate", "flips>=1%", "--json")
        assert undecided.returncode == 4, undecided.stderr
        verdict = json.loads(undecided.stdout)["verdict"]
        assert {v["candidate"]: v["status"] for v in verdict["candidates"]} == {"c1": "pass", "base": "inconclusive"}
        # flips<=1% fails for c1 (4 flips of 10): exit 1 whatever the control does.
        failed = servecmp(*common, "--gate", "flips<=1%", "--json")
        assert failed.returncode == 1, failed.stderr
        verdict = json.loads(failed.stdout)["verdict"]
        assert (verdict["status"], verdict["exit_code"]) == ("fail", 1)
        assert {v["candidate"]: v["status"] for v in verdict["candidates"]} == {"c1": "fail", "base": "inconclusive"}
        bad = servecmp(*common, "--gate", "nonsense<=1")
        assert bad.returncode == 2 and "nonsense" in bad.stderr


def test_report_run_decides_every_candidate(tmp_path: Path) -> None:
    import io

    from rich.console import Console

    from servecmp._cli.mcq import report_run  # the finish step for a stored MCQ run
    from servecmp.gates import parse_gates

    run_dir = make_run(tmp_path, LADDER)
    buf = io.StringIO()
    md = tmp_path / "gates.md"
    code = report_run(run_dir, as_json=False, show=None, console=Console(file=buf, width=200),
                      gates=parse_gates(["flips<=90%"], "mcq"), summary_md=md)
    # c: 3 flips of 4, Wilson [30.1%, 95.4%] contains 90%: inconclusive; d: 0 of 4 [0%, 49%] passes.
    assert code == 4
    out = buf.getvalue()
    assert "Leaderboard" in out and "Across the 4 candidates" in out
    assert all(f"### {n}" in md.read_text() for n in "abcd")
    assert report_run(run_dir, as_json=False, show=None, console=Console(file=io.StringIO()), gates=[],
                      summary_md=None) == 0


def test_secondary_from_the_config_needs_its_section() -> None:
    with pytest.raises(UserError, match="no secondary endpoint"):
        new_settings(McqOptions(baseline="http://b:1", candidate="http://c:1"),
                     parse_config({"mcq": {"secondary": True}}))
    s = new_settings(McqOptions(baseline="http://b:1", candidate="http://c:1"),
                     parse_config({"mcq": {"secondary": True}, "secondary": {"url": "http://s:1"}}))
    assert s.secondary is not None and s.secondary.base_url == "http://s:1/v1"
