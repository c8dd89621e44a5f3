"""Entry point of a worker process: ``python -m wool.worker REPORT_FD``.

It starts an event loop of the pool's backend, with a task group for the routines, and
serves until stopped.
"""

from __future__ import annotations

import gc
import importlib
import json
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

import anyio

from wool.transport import backend_named, executor_for_host, portal_for_host
from wool.worker._config import WorkerConfig, read_config
from wool.worker._worker import serve

__all__ = ["main", "run"]

log = logging.getLogger("wool.worker")


class _Reporter:
    """Writes the one line a spawning pool waits for: ready (with the port) or failed."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def __call__(self, message: dict[str, Any]) -> None:
        if self._fd < 0:
            return
        try:
            os.write(self._fd, json.dumps(message).encode() + b"\n")
        finally:
            os.close(self._fd)
            self._fd = -1


def _watch_parent(parent_pid: int) -> None:
    """Stop (SIGHUP) when the process that spawned us is gone: our stdin reaches EOF.

    A pipe rather than Linux's parent-death signal, which fires when the spawning *thread*
    exits (trio spawns from short-lived threads) and does not exist elsewhere.
    """
    if os.getppid() != parent_pid:  # it died before we got here
        os.kill(os.getpid(), signal.SIGHUP)

    def watch() -> None:
        try:
            while os.read(0, 65536):
                pass
        except OSError:
            pass
        log.info("parent process is gone; stopping")
        os.kill(os.getpid(), signal.SIGHUP)

    threading.Thread(target=watch, name="wool-parent-watch", daemon=True).start()


def run(config: WorkerConfig, report: Callable[[dict[str, Any]], None]) -> None:
    """Run a worker in this process, on a new event loop of ``config.backend``, until stopped.

    The same shape on every backend: grpclib on the transport's loop thread, the routines
    in a task group of the main thread's loop, which user code may block without the
    worker looking dead to its callers.
    """

    async def main() -> None:
        portal = portal_for_host()
        try:
            async with anyio.create_task_group() as routines:
                executor = executor_for_host(portal, routines.start_soon)
                await serve(config, portal, executor, report)
                routines.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # The task group wraps what serve() raised; the error is serve()'s.
            sole = _sole(group)
            if sole is None:
                raise
            _reraise(sole)
        finally:
            portal.close()

    backend_named(config.backend).run(main)


def _sole(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception in ``group`` and the groups nested in it, if there is just one."""
    if len(group.exceptions) != 1:
        return None
    inner = group.exceptions[0]
    return _sole(inner) if isinstance(inner, BaseExceptionGroup) else inner


def _reraise(exc: BaseException) -> NoReturn:
    # Raised here, its context would become the group that wrapped it: keep its own.
    context, suppressed = exc.__context__, exc.__suppress_context__
    try:
        raise exc
    finally:
        exc.__context__, exc.__suppress_context__ = context, suppressed


# The cyclic garbage collector's thresholds in worker processes (Python's are 700, 10, 10).
# A worker with thousands of calls in flight holds hundreds of thousands of objects; with
# the default thresholds, full collections then come every second or so and stop the whole
# process, transport thread included, for up to a second each on a loaded machine: a 5000-
# call nested fan-out missed its keepalive pings and was taken for dead. Rarer collections
# keep the pauses few; what they free is the same.
_GC_THRESHOLDS = (20_000, 20, 50)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    gc.set_threshold(*_GC_THRESHOLDS)
    report = _Reporter(int(argv[0]) if argv else -1)
    try:
        config = read_config(0)
        sys.path[:] = config.sys_path or sys.path
        logging.basicConfig(
            level=config.log_level,
            format=f"%(asctime)s %(levelname)s %(name)s [worker {config.id}] %(message)s",
        )
        for module in config.imports:
            importlib.import_module(module)
        if config.parent_pid is not None:
            _watch_parent(config.parent_pid)
        run(config, report)
    except BaseException:
        report({"ok": False, "error": traceback.format_exc()})
        if isinstance(sys.exc_info()[1], KeyboardInterrupt):
            return 130
        log.exception("worker failed")
        return 1
    return 0
