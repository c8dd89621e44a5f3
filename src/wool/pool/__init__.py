"""Worker pools: the scope routine calls run in.

A :class:`WorkerPool` starts workers (:class:`WorkerProcess`) or finds them through
discovery, and makes the client runtime (:mod:`wool.client`) current for the calls
made inside it.
"""

from __future__ import annotations

from wool.pool._pool import WorkerPool
from wool.pool._process import WorkerProcess
from wool.pool._stats import CallStats, LatencyStats, WorkerStats

__all__ = ["CallStats", "LatencyStats", "WorkerPool", "WorkerProcess", "WorkerStats"]
