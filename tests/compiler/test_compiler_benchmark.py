"""The planning benchmark (benchmarks/bench_plan.py) runs on a 1.3 TB, 1,086-tensor, 61-layer header.

It prints the time; speed is measured, never asserted (no wall-clock thresholds in tests)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_plan.py"


def test_plan_benchmark_runs_on_a_big_header(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("bench_plan", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_plan"] = mod
    spec.loader.exec_module(mod)
    r = mod.run(tmp_path)
    with capsys.disabled():
        print(
            f"\n[benchmark] {int(r['n_tensors'])} tensors, {int(r['n_layers'])} layers, {r['file_size_gb']:.0f} GB header: "
            f"read {r['read_header_s']:.3f} s, plan {r['plan_s']:.3f} s"
        )
    assert r["n_tensors"] >= 1000 and r["n_layers"] >= 60
