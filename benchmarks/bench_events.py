"""What one trivial ``wool.TaskEvent`` handler costs a call (issue 13), in the same run.

Importing this module registers ``count_event`` for every event type in the importing
process: the workers of the "handler" pools import it (``WorkerPool(imports=[...])``), and
``measure`` registers it in the caller only around those pools. On a pool of 2, asyncio
caller, it alternates a pool without any handler and a pool with the handler on both sides,
``rounds`` times, each timing ``calls`` sequential calls after ``warmup``; reported: the
median and p99 latency (over all rounds' samples) and the caller's and the workers' CPU µs per
call of each, and their ratios (handler / none: 1.0 is free, higher costs more). The handler
counts the events it sees; a run where it saw none on either side fails.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import procstat

import wool

__all__ = ["count_event", "events_seen", "measure"]

POOL_SIZE = 2
MODULE = __name__  # what the workers import

_seen = 0


def count_event(event: wool.TaskEvent, timestamp: int) -> None:
    """The trivial handler: count the event."""
    global _seen
    _seen += 1


wool.TaskEvent.handler()(count_event)


@wool.routine
async def events_seen() -> tuple[int, int]:
    """(this worker's pid, how many events its handler has seen)."""
    return os.getpid(), _seen


def _percentile(samples: list[float], pct: float) -> float:
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


async def _timed(
    add: Callable[[int, int], Awaitable[int]], calls: int, warmup: int, handler: bool
) -> tuple[list[float], dict[str, Any] | None, dict[int, int]]:
    """(latencies, CPU µs per call, events seen per worker pid) of one pool."""
    async with wool.WorkerPool(size=POOL_SIZE, imports=[MODULE] if handler else []) as pool:
        pids = [w.pid for w in pool.workers]
        for i in range(warmup):
            await add(i, 1)
        meter = procstat.CpuMeter(pids).start() if procstat.available() else None
        samples: list[float] = []
        for i in range(calls):
            start = time.perf_counter()
            result = await add(i, 1)
            samples.append(time.perf_counter() - start)
            if result != i + 1:
                raise AssertionError(f"add({i}, 1) returned {result!r}")
        cpu = meter.per_call(calls) if meter is not None else None
        seen: dict[int, int] = {}
        if handler:
            for _ in range(2 * POOL_SIZE):  # round robin: every worker answers at least once
                pid, count = await events_seen()
                seen[pid] = count
    return samples, cpu, seen


def _mean_cpu(runs: list[dict[str, Any] | None]) -> dict[str, float] | None:
    if any(run is None for run in runs):
        return None
    return {
        key: round(sum(run[key] for run in runs if run is not None) / len(runs), 1)
        for key in ("caller", "workers_total")
    }


async def measure(
    add: Callable[[int, int], Awaitable[int]], calls: int, warmup: int, rounds: int
) -> dict[str, Any]:
    """No handler against one trivial handler on both sides, alternated (see above)."""
    samples: dict[str, list[float]] = {"none": [], "handler": []}
    cpu: dict[str, list[dict[str, Any] | None]] = {"none": [], "handler": []}
    caller_seen = worker_seen = 0
    wool.TaskEvent.remove_handler(count_event)  # importing this module registered it
    for _ in range(rounds):
        for name in ("none", "handler"):
            if name == "handler":
                wool.TaskEvent.handler()(count_event)
            before = _seen
            try:
                got, used, seen = await _timed(add, calls, warmup, name == "handler")
            finally:
                wool.TaskEvent.remove_handler(count_event)
            samples[name] += got
            cpu[name].append(used)
            if name == "handler":
                caller_seen += _seen - before
                if len(seen) < POOL_SIZE or not all(seen.values()):
                    raise AssertionError(f"the workers' handlers saw {seen} events (pid: count)")
                worker_seen += sum(seen.values())
            elif _seen != before:
                raise AssertionError("the caller's handler saw events with no handler registered")
    report: dict[str, Any] = {"pool_size": POOL_SIZE, "calls": calls, "rounds": rounds}
    for name, got in samples.items():
        report[name] = {
            "latency_median_ms": round(_percentile(got, 50) * 1000, 4),
            "latency_p99_ms": round(_percentile(got, 99) * 1000, 4),
            "cpu_us_per_call": _mean_cpu(cpu[name]),
        }
    none, handler = report["none"], report["handler"]
    report["latency_median_ratio"] = round(
        handler["latency_median_ms"] / none["latency_median_ms"], 3
    )
    report["latency_p99_ratio"] = round(handler["latency_p99_ms"] / none["latency_p99_ms"], 3)
    if none["cpu_us_per_call"] and handler["cpu_us_per_call"]:
        report["cpu_ratio"] = {
            key: round(handler["cpu_us_per_call"][key] / none["cpu_us_per_call"][key], 3)
            if none["cpu_us_per_call"][key] > 0
            else None
            for key in ("caller", "workers_total")
        }
    else:
        report["cpu_ratio"] = None
    report["events_seen"] = {"caller": caller_seen, "workers": worker_seen}
    return report
