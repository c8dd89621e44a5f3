"""The discovery seam: how pools learn which workers exist."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
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
    "left_out_of",
]

#: What happened to a worker: it appeared, its metadata changed, or it left (or died).
EventKind = Literal["worker-added", "worker-updated", "worker-dropped"]


@dataclass(frozen=True)
class WorkerMetadata:
    """What a worker advertises about itself; discovery carries it, filters and load
    balancers read it."""

    #: Unique among the workers a pool sees (a spawned worker's is its pool's namespace and
    #: a counter; a ``wool worker``'s is given by ``--id`` or random).
    id: str
    #: An IP address or name, or ``unix:/path`` for a worker on a Unix socket (port 0).
    host: str
    port: int
    #: The worker's process id on its host (0 when unknown).
    pid: int = 0
    #: Labels the worker was started with; a pool uses only workers that carry all its tags.
    tags: frozenset[str] = field(default_factory=frozenset)
    #: The wool version the worker runs.
    version: str = ""
    #: The worker's event loop, ``"asyncio"`` or ``"trio"``.
    backend: str = ""
    #: The worker only accepts TLS connections.
    secure: bool = False
    #: Transport settings callers should use with this worker (e.g. ``keepalive``).
    options: tuple[tuple[str, str], ...] = ()
    #: Root calls the worker runs at once (``wool worker --concurrency``); more wait in its
    #: queue. None when it sets no limit. Callers keep root calls beyond it waiting.
    capacity: int | None = None

    @property
    def address(self) -> str:
        """``host:port``, ``[host]:port`` for IPv6, or ``unix:/path`` for a Unix socket."""
        if self.host.startswith("unix:"):
            return self.host
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class DiscoveryEvent:
    """One change to the set of workers, as a subscriber sees it."""

    kind: EventKind
    worker: WorkerMetadata


#: A predicate on a worker's metadata: subscribers report only the workers it accepts.
WorkerFilter = Callable[[WorkerMetadata], bool]


@runtime_checkable
class DiscoveryPublisherLike(Protocol):
    """What :meth:`DiscoveryLike.publisher` yields: workers announce themselves through it."""

    async def publish(self, kind: EventKind, worker: WorkerMetadata) -> None:
        """Announce a worker lifecycle event.

        Raises:
            Exception: whatever the implementation raises when it cannot publish; a worker
                that cannot publish its start fails to start (``wool.WorkerStartError`` in
                the pool).
        """
        ...


@runtime_checkable
class DiscoveryLike(Protocol):
    """Publishing and subscribing to worker lifecycle events.

    Objects are pickled into the worker processes a pool spawns, so they must be picklable
    and hold configuration, not live resources: live resources belong to the context
    managers they return.

    Optionally, a discovery that finds workers but leaves some out (as
    :class:`wool.DnsDiscovery` does with those that fail its TLS probe) may say why in a
    ``left_out`` attribute, a mapping of where each worker is to the reason; a pool that
    finds no worker puts it in its ``NoWorkersAvailable``.
    """

    def publisher(self) -> AbstractAsyncContextManager[DiscoveryPublisherLike]:
        """A publisher; leaving its context withdraws what it published."""
        ...

    def subscriber(
        self, filter: WorkerFilter | None = None
    ) -> AbstractAsyncContextManager[AsyncIterator[DiscoveryEvent]]:
        """Events for workers that pass ``filter``, starting with those already present.

        The iterator runs until the context is left; a pool reads it for as long as it is
        open. Errors it raises reach the pool's owner.
        """
        ...


def left_out_of(discovery: object) -> str:
    """Why ``discovery`` left workers out, as text ("" if it does not say): the optional
    ``left_out`` mapping of address to reason (``wool.DnsDiscovery`` has one; a discovery
    written without one says nothing)."""
    left_out = getattr(discovery, "left_out", None)
    if not isinstance(left_out, Mapping):
        return ""
    return "; ".join(f"{where}: {why}" for where, why in left_out.items())  # pyright: ignore[reportUnknownVariableType]
