"""The benchmark harness runs and reports what it promises (not that targets are met)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from .test_examples import ROOT, run_script

BENCH_TIMEOUT = 180.0


def _positive_numbers(section: dict[str, object], name: str) -> None:
    assert section, f"{name} is empty"
    for key, value in section.items():
        assert isinstance(value, (int, float)) and not isinstance(value, bool), (name, key, value)
        assert math.isfinite(value) and value > 0, (name, key, value)


@pytest.mark.timeout(BENCH_TIMEOUT + 60)
def test_quick_benchmark_reports_json(tmp_path: Path) -> None:
    work = tmp_path / "work"
    try:
        finished = run_script([str(ROOT / "benchmarks" / "run.py"), "--quick"], work, BENCH_TIMEOUT)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert finished.returncode == 0, finished.describe()
    lines = finished.stdout.strip().splitlines()
    assert lines, finished.describe()
    report = json.loads(lines[-1])

    assert {"floor", "asyncio", "trio", "targets", "targets_met"} <= set(report)
    assert report["quick"] is True

    floor = report["floor"]
    assert {"latency_median_ms", "latency_p99_ms", "throughput_calls_per_s"} <= set(floor)
    _positive_numbers(floor, "floor")

    figures = {
        "latency_median_ms",
        "latency_p99_ms",
        "throughput_calls_per_s",
        "latency_median_ratio",
        "latency_p99_ratio",
        "throughput_ratio",
        "pool_start_s",
    }
    for backend in ("asyncio", "trio"):
        assert figures <= set(report[backend]), backend
        _positive_numbers(report[backend], backend)
        assert report[backend]["latency_p99_ms"] >= report[backend]["latency_median_ms"]

    targets = report["targets"]
    _positive_numbers(targets, "targets")
    met = report["targets_met"]
    assert set(met) == {
        "asyncio_latency_median",
        "asyncio_throughput",
        "trio_latency_median",
        "trio_throughput",
    }
    assert all(isinstance(v, bool) for v in met.values()), met
