"""The benchmark harness runs and reports what it promises (not that targets are met)."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

from .test_examples import ROOT, run_script

BENCH_TIMEOUT = 300.0  # --quick takes 1-3 minutes; more on a loaded shared machine
SAME_RUN_TARGETS = {
    "asyncio_latency_speedup_min": 2.8,
    "asyncio_throughput_speedup_min": 3.0,
    "trio_latency_speedup_min": 1.87,
    "trio_throughput_speedup_min": 2.0,
}


def _bench_module() -> ModuleType:
    """benchmarks/run.py, imported under a private name (it is a script, not a package)."""
    name = "_wool_bench_run"
    if name in sys.modules:
        return sys.modules[name]
    benchmarks = str(ROOT / "benchmarks")
    if benchmarks not in sys.path:  # as for the script: its directory holds its modules
        sys.path.append(benchmarks)
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _positive_numbers(section: dict[str, object], name: str) -> None:
    assert section, f"{name} is empty"
    for key, value in section.items():
        assert isinstance(value, (int, float)) and not isinstance(value, bool), (name, key, value)
        assert math.isfinite(value) and value > 0, (name, key, value)


@pytest.mark.bench
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

    sections = {"floor", "grpclib", "asyncio", "trio", "cancel", "worker_loss", "targets"}
    sections |= {"targets_met", "stream", "echo", "balance"}
    assert sections | {"targets_relative", "targets_relative_met"} <= set(report)
    assert report["quick"] is True

    # TLS: a plaintext and an mTLS pool measured in the same run, and their ratio.
    tls = dict(report["tls"])
    assert tls.pop("latency_median_ratio_max") == 1.5
    assert isinstance(tls.pop("met"), bool)
    for name in ("plaintext", "mtls"):
        section = tls.pop(name)
        assert {"latency_median_ms", "latency_p99_ms", "throughput_calls_per_s"} <= set(section)
        _positive_numbers(section, f"tls.{name}")
    _positive_numbers(tls, "tls")
    assert report["tls"]["latency_median_ratio"] == pytest.approx(
        report["tls"]["mtls"]["latency_median_ms"]
        / report["tls"]["plaintext"]["latency_median_ms"],
        abs=1e-3,
    )

    floor = report["floor"]
    assert {
        "latency_median_ms",
        "latency_p99_ms",
        "throughput_calls_per_s",
        "raw_rtt_median_ms",
        "raw_rtt_p99_ms",
    } <= set(floor)
    _positive_numbers(floor, "floor")

    figures = {
        "latency_median_ms",
        "latency_p99_ms",
        "throughput_calls_per_s",
        "latency_median_ratio",
        "latency_p99_ratio",
        "throughput_ratio",
        "pool_start_s",
        "latency_median_raw_rtt_ratio",
    }
    for backend in ("asyncio", "trio"):
        assert figures <= set(report[backend]), backend
        _positive_numbers(report[backend], backend)
        assert report[backend]["latency_p99_ms"] >= report[backend]["latency_median_ms"]

    # The grpclib reference: wool's transport without wool's dispatch, asyncio caller only.
    grpclib = report["grpclib"]
    assert set(grpclib) == {"latency_median_ms", "latency_p99_ms", "throughput_calls_per_s"}
    _positive_numbers(grpclib, "grpclib")
    assert grpclib["latency_p99_ms"] >= grpclib["latency_median_ms"]
    assert {"latency_median_grpclib_ratio", "throughput_grpclib_ratio"} <= set(report["asyncio"])
    assert report["asyncio"]["latency_median_grpclib_ratio"] == pytest.approx(
        report["asyncio"]["latency_median_ms"] / grpclib["latency_median_ms"], abs=1e-3
    )

    # Cancellation: caller's cancel -> the routine's finally on the worker, per caller.
    cancel = report["cancel"]
    assert cancel["pool_size"] >= 1
    for backend in ("asyncio", "trio"):
        stats = dict(cancel[backend])
        late = stats.pop("finally_after_return")
        assert isinstance(late, int) and 0 <= late <= stats["samples"], (backend, late)
        assert set(stats) == {"median_ms", "p95_ms", "max_ms", "caller_return_median_ms", "samples"}
        _positive_numbers(stats, f"cancel.{backend}")
        assert stats["median_ms"] <= stats["p95_ms"] <= stats["max_ms"], (backend, stats)

    # Worker loss: SIGKILL of the worker a call runs on -> WorkerLost in the caller.
    loss = report["worker_loss"]
    assert loss["pool_size"] >= 1
    for backend in ("asyncio", "trio"):
        stats = loss[backend]
        assert set(stats) == {"median_ms", "max_ms", "replacement_median_s", "samples"}
        _positive_numbers(stats, f"worker_loss.{backend}")
        assert stats["median_ms"] <= stats["max_ms"], (backend, stats)

    # Generator streaming: items/s of `async for` over one generator call, per caller.
    stream = dict(report["stream"])
    assert stream.pop("items") == 100_000
    assert stream.pop("runs") == 1
    assert stream.pop("warmup_items") >= 1
    assert stream.pop("pool_size") == 2
    assert set(stream) == {"asyncio", "trio"}
    for backend in ("asyncio", "trio"):
        stats = stream[backend]
        assert set(stats) == {"items_per_s", "items_per_s_max", "pool_start_s"}, backend
        _positive_numbers(stats, f"stream.{backend}")
        assert stats["items_per_s"] <= stats["items_per_s_max"], (backend, stats)

    # Large payloads: wool's echo and the raw-socket floor's, in MB/s, per payload size.
    echo = dict(report["echo"])
    assert echo.pop("warmup") >= 1
    assert echo.pop("pool_size") == 2
    assert isinstance(echo.pop("caller_malloc_tuned"), bool)
    assert set(echo) == {"10MB", "100MB"}
    for name, size, runs in (("10MB", 10_000_000, 3), ("100MB", 100_000_000, 1)):
        stats = echo[name]
        assert set(stats) == {
            "bytes",
            "runs",
            "wool_median_s",
            "wool_mb_per_s",
            "floor_median_s",
            "floor_mb_per_s",
            "mb_per_s_ratio",
        }, name
        _positive_numbers(stats, f"echo.{name}")
        assert (stats["bytes"], stats["runs"]) == (size, runs), (name, stats)
        assert stats["wool_mb_per_s"] == pytest.approx(
            size / stats["wool_median_s"] / 1e6, rel=2e-3, abs=0.1
        ), (name, stats)
        assert stats["mb_per_s_ratio"] == pytest.approx(
            stats["wool_mb_per_s"] / stats["floor_mb_per_s"], rel=2e-3, abs=1e-3
        ), (name, stats)

    # CPU per call and RSS of every process, over back-to-back bursts, per caller.
    resources = report["resources"]
    assert resources["available"] is True  # the suite runs on Linux
    for helper in ("floor", "grpclib"):
        for phase in ("latency", "burst"):
            cpu = resources[helper][f"{phase}_cpu_us_per_call"]
            assert set(cpu) == {"client", "server"}, (helper, phase, cpu)
            assert cpu["client"] > 0, (helper, phase, cpu)  # the server's may round to 0
    for backend in ("asyncio", "trio"):
        section = resources[backend]
        cpu = section["latency_cpu_us_per_call"]
        assert len(cpu["workers"]) == 2 and cpu["caller"] > 0, (backend, cpu)
        assert cpu["workers_total"] == pytest.approx(sum(cpu["workers"]), abs=0.2)
        assert set(section["latency_cpu_ratio"]) == {"caller", "workers_total"}
        bursts = section["bursts"]
        assert len(bursts) == 2, (backend, bursts)  # --quick: 2 bursts
        for burst in bursts:
            assert burst["calls_per_s"] > 0 and burst["throughput_ratio"] > 0, burst
            assert len(burst["cpu_us_per_call"]["workers"]) == 2, burst
            for when in ("rss_mb_before", "rss_mb_after"):
                rss = burst[when]
                assert len(rss["workers"]) == 2 and min(rss["workers"]) > 0, burst
                assert rss["total"] == pytest.approx(rss["caller"] + sum(rss["workers"]), abs=0.2)
        assert section["throughput_last_first_ratio"] == pytest.approx(
            bursts[-1]["calls_per_s"] / bursts[0]["calls_per_s"], abs=2e-3
        )
        assert section["rss_total_mb_after_last_burst"] == bursts[-1]["rss_mb_after"]["total"]
        assert report[backend]["throughput_calls_per_s"] == bursts[0]["calls_per_s"]

    # Head of line: small calls during 100 MB echoes on the same (only) worker.
    hol = report["head_of_line"]
    assert hol["pool_size"] == 1 and hol["payload_bytes"] == 100_000_000, hol
    assert hol["echoes"] >= 1 and hol["loaded_samples"] >= 1, hol
    assert hol["p99_ratio"] == pytest.approx(
        hol["loaded_p99_ms"] / hol["unloaded_p99_ms"], abs=2e-3
    )
    assert hol["p99_ratio_max"] == 3.0 and isinstance(hol["met"], bool), hol

    # Events: no handler against one trivial handler on the caller and both workers.
    events = report["events"]
    for name in ("none", "handler"):
        assert events[name]["latency_median_ms"] > 0, events
        assert set(events[name]["cpu_us_per_call"]) == {"caller", "workers_total"}, events
    assert events["latency_median_ratio"] == pytest.approx(
        events["handler"]["latency_median_ms"] / events["none"]["latency_median_ms"], abs=2e-3
    )
    # Every call fires events on both sides: the handler ran where it was registered.
    assert events["events_seen"]["caller"] >= events["calls"], events
    assert events["events_seen"]["workers"] >= events["calls"], events

    balance = report["balance"]
    _positive_numbers(balance, "balance")
    assert balance["speedup"] == pytest.approx(
        balance["round_robin_s"] / balance["least_loaded_s"], rel=0.01
    ), balance

    targets = report["targets"]
    _positive_numbers(targets, "targets")
    assert targets["cancel_median_ms_max"] == 2.0
    assert targets["worker_loss_ms_max"] == 100.0
    assert targets["stream_asyncio_items_per_s_min"] == 20_000.0
    assert targets["stream_trio_items_per_s_min"] == 20_000.0
    assert targets["echo_10MB_mb_per_s_min"] == 300.0
    met = report["targets_met"]
    assert set(met) == {
        "asyncio_latency_median",
        "asyncio_throughput",
        "trio_latency_median",
        "trio_throughput",
        "cancel_asyncio",
        "cancel_trio",
        "worker_loss_asyncio",
        "worker_loss_trio",
        "stream_asyncio",
        "stream_trio",
        "echo_10MB",
    }
    assert all(isinstance(v, bool) for v in met.values()), met

    # The floor-relative view of the latency targets, next to (not instead of) the absolute.
    relative = report["targets_relative"]
    _positive_numbers(relative, "targets_relative")
    assert relative["asyncio_latency_median_ratio_max"] == 10.0
    assert set(relative) == {
        "reference_loopback_rtt_ms",
        "asyncio_latency_median_ratio_max",
        "trio_latency_median_ratio_max",
    }
    relative_met = report["targets_relative_met"]
    assert set(relative_met) == {"asyncio_latency_median", "trio_latency_median"}
    assert all(isinstance(v, bool) for v in relative_met.values()), relative_met

    # The original wool is not measured by --quick (it would need a network install), but the
    # same-run targets are still printed.
    assert report["original"] is None
    assert report["original_unavailable"] == "skipped (--quick)"
    assert report["speedup"] is None
    assert report["targets_same_run"] == SAME_RUN_TARGETS
    assert report["targets_same_run_met"] is None


def test_same_run_speedups_and_targets() -> None:
    bench = _bench_module()
    targets = bench._targets_same_run()
    assert targets == SAME_RUN_TARGETS
    original = {"latency_median_ms": 8.0, "throughput_calls_per_s": 400.0}
    asyncio_figures = {"latency_median_ms": 2.0, "throughput_calls_per_s": 1300.0}
    trio_figures = {"latency_median_ms": 4.0, "throughput_calls_per_s": 700.0}
    speedup = bench._speedup(original, asyncio_figures, trio_figures)
    # Higher is better for both: original / wool for latency, wool / original for throughput.
    assert speedup == {
        "asyncio_latency": 4.0,
        "asyncio_throughput": 3.25,
        "trio_latency": 2.0,
        "trio_throughput": 1.75,
    }
    assert bench._targets_same_run_met(targets, speedup) == {
        "asyncio_latency": True,
        "asyncio_throughput": True,
        "trio_latency": True,
        "trio_throughput": False,
    }
    assert bench._speedup(None, asyncio_figures, trio_figures) is None
    assert bench._targets_same_run_met(targets, None) is None


def test_original_script_refuses_this_wool(tmp_path: Path) -> None:
    """benchmarks/original.py measures wool 0.15.7 only, never this repository's wool."""
    work = tmp_path / "work"
    try:
        finished = run_script([str(ROOT / "benchmarks" / "original.py")], work, 60.0)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert finished.returncode != 0, finished.describe()
    assert "not the original 0.15.7" in finished.stderr, finished.describe()
    assert finished.stdout == "", finished.describe()


@pytest.mark.skipif(
    sys.version_info >= (3, 12), reason="cProfile profiles all threads at once from 3.12"
)
def test_the_profile_of_a_call_covers_the_four_threads(tmp_path: Path) -> None:
    """benchmarks/profile_call.py profiles caller and worker, both threads of each."""
    work = tmp_path / "work"
    command = [str(ROOT / "benchmarks" / "profile_call.py"), "--calls", "100", "--warmup", "20"]
    try:
        finished = run_script(command, work, 120.0)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert finished.returncode == 0, finished.describe()
    out = finished.stdout
    for thread in ("caller, main", "caller, transport", "worker, main", "worker, transport"):
        assert f"## {thread} thread:" in out, finished.describe()
    # The routine ran on the worker's main thread, under the profiler started by signal.
    assert "call (wool/worker/_execute.py" in out, finished.describe()
    assert "| 1.00 |" in out, finished.describe()  # counts per call


def test_stream_and_echo_targets() -> None:
    bench = _bench_module()
    targets = bench._targets()
    figures = {"latency_median_ms": 1.0, "throughput_calls_per_s": 1.0}
    failures = {"median_ms": 1.0, "max_ms": 1.0}
    stream = {"asyncio": {"items_per_s": 20_000.0}, "trio": {"items_per_s": 19_999.9}}
    echo = {"10MB": {"wool_mb_per_s": 300.0}, "100MB": {"wool_mb_per_s": 1.0}}
    met = bench._targets_met(
        targets,
        figures,
        figures,
        {"asyncio": failures, "trio": failures},
        {"asyncio": failures, "trio": failures},
        stream,
        echo,
    )
    assert (met["stream_asyncio"], met["stream_trio"], met["echo_10MB"]) == (True, False, True)
    echo["10MB"]["wool_mb_per_s"] = 299.9
    met = bench._targets_met(
        targets,
        figures,
        figures,
        {"asyncio": failures, "trio": failures},
        {"asyncio": failures, "trio": failures},
        stream,
        echo,
    )
    assert met["echo_10MB"] is False


SOAK_TIMEOUT = 180.0
# A defect of today's transport the soak finds (caller side, wool.transport._grpc): a call
# cancelled while its request still waits for the connection to be writable is reset with
# grpclib's `cancel()`, which raises "Request was not sent yet"; wool logs that as a bug.
KNOWN_SOAK_DEFECT = "(a bug in wool) (ProtocolError: Request was not sent yet)"


@pytest.mark.bench
@pytest.mark.timeout(SOAK_TIMEOUT + 60)
def test_short_soak_runs_every_kind_of_call_and_reports_memory(tmp_path: Path) -> None:
    work = tmp_path / "work"
    command = [str(ROOT / "benchmarks" / "soak.py"), "--minutes", "0.5", "--interval", "10"]
    try:
        finished = run_script(command, work, SOAK_TIMEOUT)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = finished.stdout.strip().splitlines()
    assert lines, finished.describe()
    report = json.loads(lines[-1])

    assert report["backend"] == "asyncio" and report["pool_size"] == 2, report
    kinds = {"coroutine", "generator", "generator_closed", "cancelled", "cancelled_generator"}
    kinds |= {"failing", "payload", "nested"}
    assert set(report["calls"]) == kinds, report["calls"]
    assert all(n > 0 for n in report["calls"].values()), report["calls"]
    assert report["operations"] == sum(report["calls"].values())

    # One RSS sample per interval (10, 20, 30 s), of the caller and of both workers.
    samples = report["rss"]
    assert len(samples) == 3, samples
    for sample in samples:
        assert len(sample["workers"]) == 2, sample
        assert all(mb is not None and mb > 0 for mb in sample["workers"].values()), sample
        assert sample["caller"] > 0 and sample["calls"] > 0, sample
        assert sample["total"] == pytest.approx(
            sample["caller"] + sum(sample["workers"].values()), abs=0.2
        ), sample
    assert isinstance(report["rss_growth_pct"], float), report["rss_growth_pct"]
    assert report["workers_replaced"] is False, report
    assert set(report["logs"]["workers"]) == {str(pid) for pid in samples[-1]["workers"]}

    # Every call ended as it should have; the exit status says whether anything went wrong.
    assert report["unexpected_errors"] == 0, report["errors"]
    assert finished.returncode == (1 if report["logged_errors"] else 0), finished.describe()
    logged = [*report["logs"]["caller"]["messages"]]
    for counts in report["logs"]["workers"].values():
        logged += counts["messages"]
    logged = [message for message in logged if not message.startswith("WARNING")]
    if logged and all(message.endswith(KNOWN_SOAK_DEFECT) for message in logged):
        pytest.xfail(f"the known transport defect, logged {report['logged_errors']} times")
    assert report["logged_errors"] == 0, logged
