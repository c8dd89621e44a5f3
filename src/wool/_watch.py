"""``wool workers --watch``: a table of each worker's live figures, refreshed until Ctrl-C."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

import anyio

from wool.discovery import DiscoveryLike, WorkerMetadata
from wool.pool._stats import WorkerStats, ask_workers
from wool.security import WorkerCredentials
from wool.transport import Client, Portal, portal_for_host

__all__ = ["Watch", "stats_table"]

log = logging.getLogger("wool")

_CLEAR = "\x1b[H\x1b[2J"  # cursor home, erase the screen


@dataclass(frozen=True)
class Watch:
    """What to watch and how: ``wool workers --watch`` options."""

    discovery: DiscoveryLike
    where: str  # which discovery, in words
    first_wait: float  # seconds to listen before the first table
    interval: float
    count: int | None  # tables to show; None: until Ctrl-C
    timeout: float  # seconds each worker has to answer
    credentials: WorkerCredentials | None


async def watch(options: Watch, out: TextIO = sys.stdout) -> None:
    """Show a table every ``options.interval`` seconds; return after ``options.count``."""
    workers: dict[str, WorkerMetadata] = {}
    portal = portal_for_host()
    clients = _Clients(portal, options.credentials)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_follow, options.discovery, workers)
            await anyio.sleep(options.first_wait)
            shown = 0
            while options.count is None or shown < options.count:
                began = anyio.current_time()
                stats = await clients.ask(sorted(workers.values(), key=lambda w: w.id), options)
                _show(out, stats, options, first=not shown)
                shown += 1
                if options.count is None or shown < options.count:
                    await anyio.sleep_until(began + options.interval)
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await clients.close()
            portal.close()


async def _follow(discovery: DiscoveryLike, workers: dict[str, WorkerMetadata]) -> None:
    """Keep ``workers`` as discovery reports them; subscribe again if it fails."""
    while True:
        try:
            async with discovery.subscriber() as events:
                async for event in events:
                    if event.kind == "worker-dropped":
                        workers.pop(event.worker.id, None)
                    else:
                        workers[event.worker.id] = event.worker
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:
            log.warning("discovery %r failed (%s); subscribing again in 1 s", discovery, exc)
        await anyio.sleep(1)


class _Clients:
    """A connection per worker, kept from one table to the next."""

    def __init__(self, portal: Portal, credentials: WorkerCredentials | None) -> None:
        self._portal = portal
        self._credentials = credentials
        self._clients: dict[tuple[str, str, int], Client] = {}

    async def ask(self, workers: Sequence[WorkerMetadata], options: Watch) -> list[WorkerStats]:
        wanted = {(w.id, w.host, w.port): w for w in workers}
        for key in set(self._clients) - set(wanted):
            await self._portal.run(self._clients.pop(key).close)
        askable: list[tuple[WorkerMetadata, Client]] = []
        refused: dict[str, WorkerStats] = {}
        for key, worker in wanted.items():
            if worker.secure and self._credentials is None:
                # Info carries no pickles, so plaintext workers are asked without TLS;
                # a TLS worker needs this side's certificate.
                refused[worker.id] = WorkerStats(
                    worker, None, "it requires TLS: pass --tls-cert, --tls-key and --tls-ca"
                )
                continue
            client = self._clients.get(key)
            if client is None:
                client = self._clients[key] = Client(
                    worker.host,
                    worker.port,
                    credentials=self._credentials if worker.secure else None,
                    server_name=dict(worker.options).get("tls-name"),
                )
            askable.append((worker, client))
        answered = await ask_workers(self._portal, askable, options.timeout)
        every = {s.worker.id: s for s in answered} | refused
        return [every[w.id] for w in workers]

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            try:
                await self._portal.run(client.close)
            except Exception as exc:
                log.debug("closing the client of worker %s failed: %r", client.address, exc)


def _show(out: TextIO, stats: Sequence[WorkerStats], options: Watch, *, first: bool) -> None:
    if out.isatty():
        out.write(_CLEAR)
    elif not first:
        out.write("\n")
    every = f"every {options.interval:g} s" + ("; Ctrl-C to stop" if options.count is None else "")
    out.write(f"{time.strftime('%H:%M:%S')}  {len(stats)} worker(s) {options.where} ({every})\n")
    out.write(stats_table(stats) + "\n")
    for entry in stats:
        if entry.error is not None:
            out.write(f"{entry.worker.id}: {entry.error}\n")
    out.flush()


_HEADER = (
    "ID",
    "PID",
    "STATE",
    "RUNNING",
    "QUEUED",
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "REJECTED",
    "LAST-MIN",
    "MEAN",
    "P99",
    "UPTIME",
)


def stats_table(stats: Sequence[WorkerStats]) -> str:
    """One row per worker: its counts, and the calls of the last minute with their
    latency (LAST-MIN, MEAN, P99); ``-`` where a worker gave no figure."""
    rows = [_HEADER, *(_row(entry) for entry in stats)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADER))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _row(entry: WorkerStats) -> tuple[str, ...]:
    calls, pid = entry.calls, str(entry.worker.pid or "-")
    if calls is None:
        return (entry.worker.id, pid, "no answer", *("-",) * (len(_HEADER) - 3))
    latency = calls.latency
    return (
        entry.worker.id,
        pid,
        "stopping" if calls.stopping else "ok",
        str(calls.running),
        str(calls.queued),
        str(calls.completed),
        str(calls.failed),
        str(calls.cancelled),
        str(calls.rejected),
        str(latency.calls),
        _duration(latency.mean),
        _duration(latency.p99),
        _uptime(calls.uptime),
    )


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f}us"
    if seconds < 1:
        return f"{seconds * 1e3:.3g}ms"
    return f"{seconds:.3g}s" if seconds < 1000 else f"{seconds:.0f}s"


def _uptime(seconds: float) -> str:
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"
