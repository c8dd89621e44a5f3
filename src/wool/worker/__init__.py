"""Worker processes: what runs routines."""

from __future__ import annotations

from wool.worker._config import WorkerConfig
from wool.worker._process import WorkerProcess

__all__ = ["WorkerConfig", "WorkerProcess"]
