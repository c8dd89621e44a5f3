"""Worker pools: the scope routine calls run in."""

from __future__ import annotations

from wool.pool._pool import WorkerPool
from wool.pool._proxy import WorkerProxy

__all__ = ["WorkerPool", "WorkerProxy"]
