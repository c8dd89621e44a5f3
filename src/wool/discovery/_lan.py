"""LAN discovery over Zeroconf DNS-SD (multicast DNS), service type ``_wool._tcp.local.``.

Workers register one service instance each (named after the worker id) with the worker's
metadata in TXT fields; the namespace is a TXT field too, and subscribers ignore other
namespaces. zeroconf runs on an asyncio loop: its objects live on the transport's loop and
are reached through a Portal, so LanDiscovery works from asyncio and trio alike.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import asynccontextmanager

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from wool.discovery._protocol import DiscoveryEvent, EventKind, WorkerFilter, WorkerMetadata
from wool.transport import Portal, portal_for_host

__all__ = ["SERVICE_TYPE", "LanDiscovery"]

log = logging.getLogger("wool.discovery")

SERVICE_TYPE = "_wool._tcp.local."

# Seconds to wait for a worker's records after its announcement.
_RESOLVE_TIMEOUT = 3.0


class LanDiscovery:
    """Workers on the local network, found with multicast DNS.

    ``namespace`` keeps pools apart; it defaults to ``"wool"``, the namespace ``wool
    worker --discovery lan`` publishes in, so defaults on both sides meet. ``interfaces``
    lists the addresses of the interfaces to use (default: all). The address a worker
    advertises is its metadata's ``host`` (``wool worker --advertise-host``), which is never
    learnt by contacting an outside host.
    """

    def __init__(self, namespace: str = "wool", *, interfaces: Sequence[str] | None = None):
        self.namespace = namespace
        self.interfaces = list(interfaces) if interfaces else None

    def __repr__(self) -> str:
        return f"LanDiscovery(namespace={self.namespace!r})"

    @asynccontextmanager
    async def publisher(self) -> AsyncGenerator[_Publisher, None]:
        """A publisher that registers one DNS-SD service per worker; leaving unregisters.

        Leaving waits up to 5 s for the goodbye packets, also when cancelled.

        Raises:
            OSError: entering, when multicast DNS cannot be set up on ``interfaces`` (an
                address of no local interface, no multicast route).
            ValueError: entering, when an entry of ``interfaces`` is not an IP address;
                by the publisher's ``publish``, when the worker's host is not an
                IP address (set one with ``wool worker --advertise-host``).
        """
        portal = portal_for_host()
        try:
            zc = await portal.run(_open, self.interfaces)
            try:
                yield _Publisher(portal, zc, self.namespace)
            finally:
                with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                    await portal.run(_close, zc)  # unregisters: sends goodbye packets
        finally:
            portal.close()

    @asynccontextmanager
    async def subscriber(
        self, filter: WorkerFilter | None = None
    ) -> AsyncGenerator[AsyncIterator[DiscoveryEvent], None]:
        """Events for the workers of the namespace on the LAN, as their announcements arrive.

        Workers whose records do not resolve within a few seconds are skipped; those that
        send goodbye packets, or whose records expire, are dropped.

        Raises:
            OSError: entering, when multicast DNS cannot be set up on ``interfaces`` (an
                address of no local interface, no multicast route).
            ValueError: entering, when an entry of ``interfaces`` is not an IP address.
        """
        portal = portal_for_host()
        try:
            zc = await portal.run(_open, self.interfaces)
            browser = await portal.run(_Browser.start, zc, self.namespace)
            try:
                yield _events(portal, browser, filter)
            finally:
                with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                    await portal.run(browser.close)
                    await portal.run(_close, zc)
        finally:
            portal.close()


async def _events(
    portal: Portal, browser: _Browser, filter: WorkerFilter | None
) -> AsyncIterator[DiscoveryEvent]:
    known: dict[str, WorkerMetadata] = {}
    while True:
        name, worker = await portal.run(browser.next)
        previous = known.get(name)
        if worker is None or (filter is not None and not filter(worker)):
            if previous is not None:
                del known[name]
                yield DiscoveryEvent("worker-dropped", previous)
            continue
        if previous != worker:
            known[name] = worker
            yield DiscoveryEvent("worker-added" if previous is None else "worker-updated", worker)


# What follows runs on the transport's asyncio loop, through the portal.


async def _open(interfaces: list[str] | None) -> AsyncZeroconf:
    if interfaces:
        return AsyncZeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only)
    return AsyncZeroconf(ip_version=IPVersion.V4Only)


async def _close(zc: AsyncZeroconf) -> None:
    await zc.async_close()


class _Publisher:
    def __init__(self, portal: Portal, zc: AsyncZeroconf, namespace: str) -> None:
        self._portal = portal
        self._zc = zc
        self._namespace = namespace

    async def publish(self, kind: EventKind, worker: WorkerMetadata) -> None:
        await self._portal.run(_publish, self._zc, kind, _service(worker, self._namespace))


async def _publish(zc: AsyncZeroconf, kind: EventKind, info: AsyncServiceInfo) -> None:
    if kind == "worker-added":
        await (await zc.async_register_service(info))
    elif kind == "worker-updated":
        await (await zc.async_update_service(info))
    else:
        await (await zc.async_unregister_service(info))


def _service(worker: WorkerMetadata, namespace: str) -> AsyncServiceInfo:
    try:
        address = ipaddress.ip_address(worker.host)
    except ValueError:
        raise ValueError(
            f"LanDiscovery publishes IP addresses; worker {worker.id} advertises "
            f"{worker.host!r} (set an IP with --advertise-host)"
        ) from None
    properties = {
        "ns": namespace,
        "id": worker.id,
        "tags": ",".join(sorted(worker.tags)),
        "version": worker.version,
        "backend": worker.backend,
        "pid": str(worker.pid),
        "tls": "1" if worker.secure else "0",
        **({"cap": str(worker.capacity)} if worker.capacity is not None else {}),
        **{f"opt.{key}": value for key, value in worker.options},
    }
    return AsyncServiceInfo(
        SERVICE_TYPE,
        f"{worker.id}.{SERVICE_TYPE}",
        addresses=[address.packed],
        port=worker.port,
        properties=properties,
        server=f"{worker.id}.local.",
    )


def _metadata(info: AsyncServiceInfo, namespace: str) -> WorkerMetadata | None:
    txt = {key.decode(): (value or b"").decode() for key, value in info.properties.items()}
    addresses = info.parsed_addresses()
    if txt.get("ns") != namespace or not addresses or info.port is None:
        return None
    return WorkerMetadata(
        id=txt.get("id") or info.name.split(".")[0],
        host=addresses[0],
        port=info.port,
        pid=int(txt.get("pid") or 0),
        tags=frozenset(t for t in txt.get("tags", "").split(",") if t),
        version=txt.get("version", ""),
        backend=txt.get("backend", ""),
        secure=txt.get("tls") == "1",
        capacity=int(txt["cap"]) if txt.get("cap", "").isdigit() else None,
        options=tuple(sorted((k[4:], v) for k, v in txt.items() if k.startswith("opt."))),
    )


class _Browser:
    """Turns zeroconf's callbacks into (instance name, metadata or None) pairs."""

    def __init__(self, zc: AsyncZeroconf, namespace: str) -> None:
        self._zc = zc
        self._namespace = namespace
        send, receive = anyio.create_memory_object_stream[tuple[str, bool]](1024)
        self._send: MemoryObjectSendStream[tuple[str, bool]] = send
        self._receive: MemoryObjectReceiveStream[tuple[str, bool]] = receive
        self._browser: AsyncServiceBrowser | None = None

    @classmethod
    async def start(cls, zc: AsyncZeroconf, namespace: str) -> _Browser:
        browser = cls(zc, namespace)
        browser._browser = AsyncServiceBrowser(
            zc.zeroconf, SERVICE_TYPE, handlers=[browser._on_change]
        )
        return browser

    def _on_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        with contextlib.suppress(anyio.WouldBlock, anyio.BrokenResourceError):
            self._send.send_nowait((name, state_change is not ServiceStateChange.Removed))

    async def next(self) -> tuple[str, WorkerMetadata | None]:
        while True:
            name, present = await self._receive.receive()
            if not present:
                return name, None
            info = AsyncServiceInfo(SERVICE_TYPE, name)
            if not await info.async_request(self._zc.zeroconf, _RESOLVE_TIMEOUT * 1000):
                log.debug("no records for %s", name)
                continue
            worker = _metadata(info, self._namespace)
            if worker is not None:
                return name, worker

    async def close(self) -> None:
        if self._browser is not None:
            await self._browser.async_cancel()
        self._send.close()
        self._receive.close()
