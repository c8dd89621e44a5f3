"""Worker processes: what runs routines (internal).

A worker serves the transport's ``Service``: it loads each call, runs it under the
caller's deadline and cancellation, and makes its nested calls through the client
runtime (:mod:`wool.client`). Pools start workers with :class:`wool.pool.WorkerProcess`.
"""

from __future__ import annotations

from wool.worker._config import WorkerConfig

__all__ = ["WorkerConfig"]
