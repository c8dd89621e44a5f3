"""Worker pools: the scope routine calls run in."""

from __future__ import annotations

from wool.pool._pool import WorkerPool
from wool.pool._proxy import WorkerProxy
from wool.pool._stats import CallStats, LatencyStats, WorkerStats

__all__ = ["CallStats", "LatencyStats", "WorkerPool", "WorkerProxy", "WorkerStats"]
