"""wool: structured concurrency across the wire.

Decorate an async function with :func:`wool.routine`, open a :class:`wool.WorkerPool`, and
await the function: it runs on a worker process and its result or exception comes back as if
the call were local. Works the same under asyncio and trio.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from wool._context import ContextVar, Token
from wool._errors import (
    NoPoolError,
    NoWorkersAvailable,
    ProtocolError,
    SecurityError,
    SerializationError,
    TaskException,
    WoolError,
    WorkerLost,
    WorkerStartError,
)
from wool.discovery import (
    DiscoveryEvent,
    DiscoveryLike,
    DiscoveryPublisherLike,
    DnsDiscovery,
    EventKind,
    LanDiscovery,
    LocalDiscovery,
    WorkerFilter,
    WorkerMetadata,
)
from wool.events import TaskEvent
from wool.loadbalancer import (
    CallInfo,
    Candidate,
    LeastLoadedLoadBalancer,
    LoadBalancerLike,
    RoundRobinLoadBalancer,
    hint,
)
from wool.pool import CallStats, LatencyStats, WorkerPool, WorkerStats
from wool.routine import Routine, routine
from wool.security import WorkerCredentials

__all__ = [
    "CallInfo",
    "CallStats",
    "Candidate",
    "ContextVar",
    "DiscoveryEvent",
    "DiscoveryLike",
    "DiscoveryPublisherLike",
    "DnsDiscovery",
    "EventKind",
    "LanDiscovery",
    "LatencyStats",
    "LeastLoadedLoadBalancer",
    "LoadBalancerLike",
    "LocalDiscovery",
    "NoPoolError",
    "NoWorkersAvailable",
    "ProtocolError",
    "RoundRobinLoadBalancer",
    "Routine",
    "SecurityError",
    "SerializationError",
    "TaskEvent",
    "TaskException",
    "Token",
    "WoolError",
    "WorkerCredentials",
    "WorkerFilter",
    "WorkerLost",
    "WorkerMetadata",
    "WorkerPool",
    "WorkerStartError",
    "WorkerStats",
    "__version__",
    "hint",
    "routine",
]

try:
    __version__ = _version("wool")
except _PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
