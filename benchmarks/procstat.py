"""CPU time and resident memory of this process and of other processes (Linux ``/proc``).

The caller's CPU time is ``time.process_time()`` (every thread of this process, user and
system); another process's is ``utime + stime`` from ``/proc/<pid>/stat`` (every thread
too), in clock ticks (``SC_CLK_TCK``, usually 100 a second: 10 ms resolution, so CPU per call
is meaningful over phases of a second or more, not over ``--quick``'s 100 calls). Resident
memory is ``VmRSS`` from ``/proc/<pid>/status``. Without ``/proc`` (not Linux),
``available()`` is False and the benchmark reports these figures as null.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["CpuMeter", "available", "cpu_seconds", "rss_mb", "rss_snapshot"]

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def available() -> bool:
    return os.path.exists(f"/proc/{os.getpid()}/stat")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (all its threads)."""
    if pid == os.getpid():
        return time.process_time()
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / _TICKS


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` (``VmRSS``), in MB (10^6 bytes)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / 1e6  # the kernel's kB are KiB
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS (a zombie?)")


def rss_snapshot(workers: Sequence[int]) -> dict[str, Any]:
    """RSS (MB) of this process and of each of ``workers``, and their total."""
    caller = rss_mb(os.getpid())
    each = [rss_mb(pid) for pid in workers]
    return {
        "caller": round(caller, 1),
        "workers": [round(mb, 1) for mb in each],
        "total": round(caller + sum(each), 1),
    }


@dataclass
class CpuMeter:
    """CPU seconds of this process and of ``workers`` between ``start()`` and ``per_call()``."""

    workers: Sequence[int]
    _caller: float = 0.0
    _each: tuple[float, ...] = ()

    def start(self) -> CpuMeter:
        self._caller = time.process_time()
        self._each = tuple(cpu_seconds(pid) for pid in self.workers)
        return self

    def per_call(self, calls: int) -> dict[str, Any]:
        """µs of CPU per call since ``start()``: the caller's, each worker's and the workers'
        total, each the process's CPU time over the phase divided by all ``calls``."""
        caller = time.process_time() - self._caller
        each = [
            cpu_seconds(pid) - before for pid, before in zip(self.workers, self._each, strict=True)
        ]
        scale = 1e6 / calls
        return {
            "caller": round(caller * scale, 1),
            "workers": [round(s * scale, 1) for s in each],
            "workers_total": round(sum(each) * scale, 1),
        }
