"""Counts what wool logs at WARNING and above in the process that imports this module.

The soak imports it in the caller and, with ``WorkerPool(imports=[...])``, in every worker;
``worker_counts`` (a routine) answers with a worker's counts. A record at ERROR or above is
an unexpected error (wool logs its own bugs at ERROR, e.g. "internal error ... a bug in
wool"). Where no handler was configured (the caller), records are also written to stderr,
as Python's last-resort handler would have written them.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import wool

__all__ = ["counts", "worker_counts"]

KEPT = 20  # messages kept in full


class _Counter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.errors = 0
        self.warnings = 0
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            self.errors += 1
        else:
            self.warnings += 1
        if len(self.messages) < KEPT:
            message = f"{record.levelname} {record.name}: {record.getMessage()}"
            if record.exc_info and record.exc_info[1] is not None:
                exc = record.exc_info[1]
                message += f" ({type(exc).__name__}: {exc})"
            self.messages.append(message)


_logger = logging.getLogger("wool")
_echo = not _logger.hasHandlers()
_counter = _Counter()
_logger.addHandler(_counter)
if _echo:  # adding a handler turns the last-resort one off: keep the records visible
    _stderr = logging.StreamHandler(sys.stderr)
    _stderr.setLevel(logging.WARNING)
    _logger.addHandler(_stderr)


def counts() -> dict[str, Any]:
    """This process's counts so far: errors, warnings and the first messages."""
    return {
        "errors": _counter.errors,
        "warnings": _counter.warnings,
        "messages": list(_counter.messages),
    }


@wool.routine
async def worker_counts() -> tuple[int, dict[str, Any]]:
    """(this worker's pid, its counts)."""
    return os.getpid(), counts()
