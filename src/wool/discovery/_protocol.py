"""The discovery seam: how pools learn which workers exist."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

__all__ = [
    "DiscoveryEvent",
    "DiscoveryLike",
    "DiscoveryPublisherLike",
    "EventKind",
    "WorkerFilter",
    "WorkerMetadata",
]

EventKind = Literal["worker-added", "worker-updated", "worker-dropped"]


@dataclass(frozen=True)
class WorkerMetadata:
    """What a worker advertises about itself."""

    id: str
    #: An IP address or name, or ``unix:/path`` for a worker on a Unix socket (port 0).
    host: str
    port: int
    pid: int = 0
    tags: frozenset[str] = field(default_factory=frozenset)
    version: str = ""
    backend: str = ""
    #: The worker only accepts TLS connections.
    secure: bool = False
    #: Transport settings callers should use with this worker (e.g. ``keepalive``).
    options: tuple[tuple[str, str], ...] = ()

    @property
    def address(self) -> str:
        """``host:port``, ``[host]:port`` for IPv6, or ``unix:/path`` for a Unix socket."""
        if self.host.startswith("unix:"):
            return self.host
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class DiscoveryEvent:
    kind: EventKind
    worker: WorkerMetadata


WorkerFilter = Callable[[WorkerMetadata], bool]


@runtime_checkable
class DiscoveryPublisherLike(Protocol):
    async def publish(self, kind: EventKind, worker: WorkerMetadata) -> None:
        """Announce a worker lifecycle event."""
        ...


@runtime_checkable
class DiscoveryLike(Protocol):
    """Publishing and subscribing to worker lifecycle events.

    Objects are pickled into the worker processes a pool spawns, so they must be picklable
    and hold configuration, not live resources: live resources belong to the context
    managers they return.
    """

    def publisher(self) -> AbstractAsyncContextManager[DiscoveryPublisherLike]:
        """A publisher; leaving its context withdraws what it published."""
        ...

    def subscriber(
        self, filter: WorkerFilter | None = None
    ) -> AbstractAsyncContextManager[AsyncIterator[DiscoveryEvent]]:
        """Events for workers that pass ``filter``, starting with those already present."""
        ...
