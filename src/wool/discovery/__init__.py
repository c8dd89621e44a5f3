"""How pools find workers: the discovery protocol and its implementations."""

from __future__ import annotations

from wool.discovery._local import LocalDiscovery
from wool.discovery._merged import MergedDiscovery
from wool.discovery._protocol import (
    DiscoveryEvent,
    DiscoveryLike,
    DiscoveryPublisherLike,
    EventKind,
    WorkerFilter,
    WorkerMetadata,
)

__all__ = [
    "DiscoveryEvent",
    "DiscoveryLike",
    "DiscoveryPublisherLike",
    "EventKind",
    "LocalDiscovery",
    "MergedDiscovery",
    "WorkerFilter",
    "WorkerMetadata",
]
