"""Discovery through a DNS name with one address per worker (a Kubernetes headless Service)."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from types import MappingProxyType

import anyio

from wool._errors import SecurityError
from wool.discovery._protocol import DiscoveryEvent, EventKind, WorkerFilter, WorkerMetadata
from wool.security import WorkerCredentials
from wool.transport import Client, ConnectionLost, Portal, WorkerInfo, portal_for_host

__all__ = ["DnsDiscovery"]

log = logging.getLogger("wool.discovery")

# Unanswered Info calls in a row before a worker that DNS still lists is dropped.
_MISSES = 2


class DnsDiscovery:
    """Workers behind one DNS name, all listening on ``port``.

    Every ``interval`` seconds the name is resolved; each new address is asked for its
    identity (the worker's Info call), and workers whose address disappears, or that stop
    answering, are dropped. Publishing is a no-op: the platform (e.g. Kubernetes, through a
    headless Service) maintains the name.

    With ``credentials`` (the pool's), the identity calls are TLS and each worker's
    certificate must name ``name`` (the DNS name, not the address it resolved to, which
    changes with every pod); the pool then checks the same name on its calls. A worker
    that fails the handshake is logged and left out, and :attr:`left_out` says why (a pool
    that finds no worker names them in its ``NoWorkersAvailable``).

    Raises:
        ValueError: ``port`` is not 1..65535.
    """

    def __init__(
        self,
        name: str,
        port: int,
        *,
        interval: float = 5.0,
        timeout: float = 2.0,
        credentials: WorkerCredentials | None = None,
    ) -> None:
        if not 0 < port < 65536:
            raise ValueError(f"port must be 1..65535, got {port}")
        self.name = name
        self.port = port
        self.interval = interval
        self.timeout = timeout
        self.credentials = credentials
        self._left_out: dict[str, str] = {}

    @property
    def left_out(self) -> Mapping[str, str]:
        """The workers behind the name that are left out (``"address:port"``), and why.

        A worker is here while its identity call fails the TLS handshake or the security
        checks (wrong or missing credentials on either side), and leaves once it passes or
        DNS stops listing it.
        """
        return MappingProxyType(dict(self._left_out))

    def __repr__(self) -> str:
        return f"DnsDiscovery({self.name!r}, {self.port})"

    @asynccontextmanager
    async def publisher(self) -> AsyncGenerator[_NoPublisher, None]:
        """A publisher that publishes nothing: the platform maintains the DNS name.

        Entering it, its ``publish`` and leaving it never raise.
        """
        yield _NoPublisher()

    @asynccontextmanager
    async def subscriber(
        self, filter: WorkerFilter | None = None
    ) -> AsyncGenerator[AsyncIterator[DiscoveryEvent], None]:
        """Events for the workers behind the name, re-resolved every ``interval`` seconds.

        A name that does not resolve yields no workers (and is retried); a worker that
        misses two ``Info`` calls in a row, each bounded by ``timeout``, is dropped.

        Neither entering nor iterating raises for what DNS or the workers do: a failed
        resolution is logged and retried, a worker refused for its TLS settings is logged
        and left out.
        """
        portal = portal_for_host()
        clients: dict[str, Client] = {}
        try:
            yield self._events(portal, clients, filter)
        finally:
            with anyio.CancelScope(shield=True):
                await _close_clients(portal, clients, list(clients))
            portal.close()

    async def _resolve(self) -> set[str] | None:
        try:
            results = await anyio.getaddrinfo(self.name, self.port, type=socket.SOCK_STREAM)
        except OSError as exc:
            log.warning("cannot resolve %s: %s; keeping the workers already known", self.name, exc)
            return None
        return {str(sockaddr[0]) for *_, sockaddr in results}

    async def _events(
        self, portal: Portal, clients: dict[str, Client], filter: WorkerFilter | None
    ) -> AsyncIterator[DiscoveryEvent]:
        known: dict[str, WorkerMetadata] = {}
        misses: dict[str, int] = {}
        refused: set[str] = set()
        while True:
            addresses = await self._resolve()
            if addresses is not None:
                # Pods come and go: keep connections only to the addresses DNS lists now.
                await _close_clients(portal, clients, clients.keys() - addresses)
                for address in refused - addresses:
                    refused.discard(address)
                    self._left_out.pop(f"{address}:{self.port}", None)
                for address in known.keys() - addresses:
                    yield DiscoveryEvent("worker-dropped", known.pop(address))
                for address in sorted(addresses):
                    client = clients.get(address)
                    if client is None:
                        client = clients[address] = Client(
                            address,
                            self.port,
                            credentials=self.credentials,
                            server_name=self.name,
                        )
                    try:
                        info = await portal.run(client.info, self.timeout)
                    except SecurityError as exc:
                        if address not in refused:  # once, not every interval
                            log.error("worker at %s left out: %s", address, exc)
                        refused.add(address)
                        self._left_out[f"{address}:{self.port}"] = str(exc)
                        if address in known:
                            yield DiscoveryEvent("worker-dropped", known.pop(address))
                        continue
                    except ConnectionLost:
                        misses[address] = misses.get(address, 0) + 1
                        if address in known and misses[address] >= _MISSES:
                            yield DiscoveryEvent("worker-dropped", known.pop(address))
                        continue
                    misses.pop(address, None)
                    refused.discard(address)
                    self._left_out.pop(f"{address}:{self.port}", None)
                    worker = _metadata(info, address, self.port, self.name)
                    previous = known.get(address)
                    if filter is not None and not filter(worker):
                        if previous is not None:
                            yield DiscoveryEvent("worker-dropped", known.pop(address))
                        continue
                    if previous is not None and previous.id != worker.id:
                        # Another worker now answers at this address (a restarted pod).
                        yield DiscoveryEvent("worker-dropped", known.pop(address))
                        previous = None
                    if previous != worker:
                        known[address] = worker
                        kind: EventKind = "worker-added" if previous is None else "worker-updated"
                        yield DiscoveryEvent(kind, worker)
            await anyio.sleep(self.interval)


async def _close_clients(
    portal: Portal, clients: dict[str, Client], addresses: Iterable[str]
) -> None:
    for address in list(addresses):
        client = clients.pop(address)
        try:
            await portal.run(client.close)
        except Exception:
            log.exception("closing the connection to %s failed", address)


def _metadata(info: WorkerInfo, address: str, port: int, name: str) -> WorkerMetadata:
    return WorkerMetadata(
        id=info.id,
        host=address,
        port=port,
        pid=info.pid,
        tags=frozenset(info.tags),
        version=info.version,
        backend=info.backend,
        secure=info.secure,
        # The name callers check in the worker's certificate (see DnsDiscovery).
        options=(("tls-name", name),),
        capacity=info.capacity or None,  # 0: no limit (or a worker too old to say)
    )


class _NoPublisher:
    async def publish(self, kind: EventKind, worker: WorkerMetadata) -> None:
        pass
