"""Opening a proxy that discovery keeps up to date, and the background tasks it owns."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

import anyio

from wool.client._proxy import WorkerProxy
from wool.discovery import DiscoveryLike, WorkerFilter
from wool.loadbalancer import LoadBalancerLike
from wool.security import WorkerCredentials
from wool.transport import DEFAULT_LIMITS, Limits, Portal

__all__ = ["open_proxy"]

log = logging.getLogger("wool.client")


class open_proxy:
    """``async with open_proxy(...) as proxy``: a proxy that ``discovery`` keeps up to date.

    A class rather than a generator so that an exception from the body of the ``async
    with`` passes through unchanged instead of wrapped in a task group's ExceptionGroup.
    """

    def __init__(
        self,
        portal: Portal,
        discovery: DiscoveryLike | None,
        *,
        grace: float,
        keepalive: float | None,
        wait_for_workers: float,
        limits: Limits = DEFAULT_LIMITS,
        filter: WorkerFilter | None = None,
        loadbalancer: LoadBalancerLike | None = None,
        description: str = "the pool",
        credentials: WorkerCredentials | None = None,
        insecure: bool = False,
        left_out: Callable[[], str] | None = None,
    ) -> None:
        self._discovery = discovery
        self._filter = filter
        self._proxy = WorkerProxy(
            portal,
            grace=grace,
            keepalive=keepalive,
            limits=limits,
            wait_for_workers=wait_for_workers,
            loadbalancer=loadbalancer,
            description=description,
            credentials=credentials,
            insecure=insecure,
            left_out=left_out,
        )
        self._tg = anyio.create_task_group()

    def start_soon(
        self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any, restart: bool = False
    ) -> None:
        """Run a task for as long as the proxy is open.

        The task group spans the body of the caller's ``async with``: a task that raised
        would cancel that body. So an exception from ``fn`` (a bug in wool) is logged with
        its stack instead; with ``restart``, ``fn`` then runs again after a pause.
        """
        self._tg.start_soon(_guarded, self._proxy.description, restart, fn, *args)

    async def __aenter__(self) -> WorkerProxy:
        await self._tg.__aenter__()
        self.start_soon(self._proxy.probe_suspects, restart=True)
        if self._discovery is not None:
            self.start_soon(_follow, self._discovery, self._filter, self._proxy, restart=True)
        return self._proxy

    async def __aexit__(self, *exc_info: object) -> None:
        self._tg.cancel_scope.cancel()
        try:
            await self._tg.__aexit__(None, None, None)
        finally:
            with anyio.CancelScope(shield=True):
                await self._proxy.aclose()


async def _guarded(
    owner: str, restart: bool, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any
) -> None:
    delay = 0.1
    while True:
        try:
            await fn(*args)
            return
        except Exception:
            log.exception(
                "background task %s of %s failed (a bug in wool)%s",
                getattr(fn, "__qualname__", fn),
                owner,
                f"; running it again in {delay:g} s" if restart else "",
            )
        if not restart:
            return
        await anyio.sleep(delay)
        delay = min(delay * 2, 10.0)


async def _follow(
    discovery: DiscoveryLike, filter: WorkerFilter | None, proxy: WorkerProxy
) -> None:
    """Apply discovery's events to the proxy; if the discovery fails, subscribe again."""
    delay = 0.1
    reported: set[str] = set()  # the workers the current subscription says are there
    while True:
        # A new subscription reports only the workers present now: those the last one
        # reported may have left meanwhile.
        stale, reported = reported, set()
        try:
            async with discovery.subscriber(filter) as events, anyio.create_task_group() as tg:
                if stale:
                    tg.start_soon(proxy.reconcile, stale, reported)
                async for event in events:
                    delay = 0.1
                    if event.kind == "worker-dropped":
                        reported.discard(event.worker.id)
                        proxy.remove(event.worker.id)
                    else:
                        reported.add(event.worker.id)
                        proxy.add(event.worker)
        except anyio.get_cancelled_exc_class():
            raise
        except Exception:
            log.exception("discovery %r failed; subscribing again in %g s", discovery, delay)
        await anyio.sleep(delay)
        delay = min(delay * 2, 10.0)
