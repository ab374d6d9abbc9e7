"""scripts/bench_kl_topk.py's analysis on synthetic full distributions (no server): it runs and its
table's numbers are the estimators' own."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.special import log_softmax

from servecmp.metrics.kl import exact_divergences, topk_kl_tight

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_kl_topk.py"


def _bench():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_kl_topk", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_kl_topk"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_analysis_prints_the_k_table_from_a_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(2)
    base = log_softmax(rng.gumbel(size=(12, 400)) * 2.0, axis=1)
    cand = log_softmax(base + rng.normal(size=base.shape) * 0.2, axis=1)
    cache = tmp_path / "full.npz"
    np.savez_compressed(cache, base=base, cand=cand, item_ids=np.array([f"s/{i}" for i in range(12)]),
                        models=np.array(["b", "c"]))
    bench = _bench()
    assert bench.main(["--cache", str(cache), "--vocab", "400"]) == 0
    out = capsys.readouterr().out
    exact = exact_divergences(base, cand).kl_bc.mean()
    tight20 = topk_kl_tight(bench.topk_lists(base, 20), bench.topk_lists(cand, 20)).kl_bc.mean()
    row20 = next(line for line in out.splitlines() if line.split()[:1] == ["20"] and len(line.split()) == 11)
    assert float(row20.split()[1]) == pytest.approx(exact, abs=5e-7)
    assert float(row20.split()[4]) == pytest.approx(tight20 / exact, abs=5e-4)
    assert "Same top p" in out and out.count("s/") == 12
