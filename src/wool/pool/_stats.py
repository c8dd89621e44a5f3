"""Live figures of workers: what ``WorkerPool.stats()`` and ``wool workers --watch`` show."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import anyio

from wool._errors import SecurityError
from wool.discovery import WorkerMetadata
from wool.transport import Client, ConnectionLost, Latency, Portal, WorkerInfo

__all__ = ["CallStats", "LatencyStats", "WorkerStats", "ask_workers", "check_timeout"]

log = logging.getLogger("wool.pool")

#: Seconds past a worker's timeout before its question is abandoned.
_SLACK = 0.5


@dataclass(frozen=True)
class LatencyStats:
    """Latency of the coroutine calls that returned or raised on a worker in the last
    minute.

    Measured on the worker, from the moment it accepted a call to its answer: waiting for
    one of the worker's concurrency slots counts, the network and the caller's own queue
    do not. Cancelled calls and generator calls are left out: their length is their
    caller's to decide. The window slides by whole seconds and holds a bounded histogram,
    whatever the call rate.
    """

    #: Seconds the figures cover (60; 0 for a worker of an earlier wool, which sends none).
    window: float
    #: Calls that returned or raised within the window.
    calls: int
    #: Mean latency in seconds; None when no call ended in the window.
    mean: float | None
    #: The 99th percentile (nearest rank) in seconds, read from a log-scale histogram, so
    #: never below the true value and at most 4.5% above it; None when no call ended.
    p99: float | None
    #: The longest latency in seconds; None when no call ended in the window.
    max: float | None


@dataclass(frozen=True)
class CallStats:
    """What a worker reported about its calls (:attr:`WorkerStats.calls`).

    Every call counts, root and nested, coroutine and generator, from any caller, not
    only this program's. ``completed``, ``failed``, ``cancelled`` and ``rejected`` count
    since the worker started, each call once, when it ended. A worker of an earlier wool
    reports only ``running`` and ``stopping``; the rest read as zero.
    """

    #: Calls running now.
    running: int
    #: Root calls the worker accepted that wait for one of its concurrency slots.
    queued: int
    #: Calls that returned (generators that were exhausted or closed).
    completed: int
    #: Calls whose routine raised (or that failed inside the worker).
    failed: int
    #: Calls cancelled by their caller or its loss, by their deadline, or by the worker
    #: stopping.
    cancelled: int
    #: Calls the worker refused before they started (it was stopping, the caller's
    #: deadline had passed, another protocol version).
    rejected: int
    #: Seconds since the worker started serving.
    uptime: float
    #: True while the worker drains (it finishes its calls and takes no new root calls).
    stopping: bool
    #: Latency of the coroutine calls that ended in the last minute.
    latency: LatencyStats


@dataclass(frozen=True)
class WorkerStats:
    """One worker's live figures (from :meth:`WorkerPool.stats`), or why it gave none."""

    #: The worker asked.
    worker: WorkerMetadata
    #: What the worker reported; None when it did not answer.
    calls: CallStats | None
    #: Why the worker did not answer (unreachable, no answer within the timeout, refused
    #: by TLS); None when it answered.
    error: str | None = None

    @property
    def answered(self) -> bool:
        """True when the worker answered, and :attr:`calls` holds its figures."""
        return self.calls is not None


def _latency(latency: Latency | None) -> LatencyStats:
    if latency is None or not latency.calls:
        window = 0.0 if latency is None else latency.window
        return LatencyStats(window=window, calls=0, mean=None, p99=None, max=None)
    return LatencyStats(
        window=latency.window,
        calls=latency.calls,
        mean=latency.mean,
        p99=latency.p99,
        max=latency.max,
    )


def call_stats(info: WorkerInfo) -> CallStats:
    """The figures a worker's Info answer carries."""
    return CallStats(
        running=info.running,
        queued=info.queued,
        completed=info.completed,
        failed=info.failed,
        cancelled=info.cancelled,
        rejected=info.rejected,
        uptime=info.uptime,
        stopping=info.stopping,
        latency=_latency(info.latency),
    )


def check_timeout(timeout: float) -> None:
    if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")


async def ask_workers(
    portal: Portal, workers: Sequence[tuple[WorkerMetadata, Client]], timeout: float
) -> list[WorkerStats]:
    """Ask each worker, all at once, for its figures; each has ``timeout`` seconds (and
    is abandoned half a second later whatever the transport does)."""
    answers: dict[str, WorkerStats] = {}

    async def ask(worker: WorkerMetadata, client: Client) -> None:
        answers[worker.id] = await _ask(portal, worker, client, timeout)

    async with anyio.create_task_group() as tg:
        for worker, client in workers:
            tg.start_soon(ask, worker, client)
    return [answers[worker.id] for worker, _ in workers]


async def _ask(
    portal: Portal, worker: WorkerMetadata, client: Client, timeout: float
) -> WorkerStats:
    try:
        # The transport's deadline ends the request; this bound, a little later, is for
        # whatever it might not cover (cancelling the transport right as its own deadline
        # fires would leave its outcome unread).
        with anyio.fail_after(timeout + _SLACK):
            info = await portal.run(client.info, timeout)
    except TimeoutError:
        return WorkerStats(worker, None, f"no answer within {timeout:g} s")
    except (ConnectionLost, SecurityError) as exc:
        return WorkerStats(worker, None, str(exc))
    except Exception as exc:
        log.warning("asking worker %s for its figures failed", worker.id, exc_info=exc)
        return WorkerStats(worker, None, f"asking failed: {exc!r}")
    return WorkerStats(worker, call_stats(info))
