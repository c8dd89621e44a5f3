"""How pools find workers: the discovery protocol and its implementations."""

from __future__ import annotations

from wool.discovery._dns import DnsDiscovery
from wool.discovery._lan import SERVICE_TYPE, LanDiscovery
from wool.discovery._local import LocalDiscovery
from wool.discovery._merged import MergedDiscovery
from wool.discovery._protocol import (
    DiscoveryEvent,
    DiscoveryLike,
    DiscoveryPublisherLike,
    EventKind,
    WorkerFilter,
    WorkerMetadata,
    left_out_of,
)

__all__ = [
    "SERVICE_TYPE",
    "DiscoveryEvent",
    "DiscoveryLike",
    "DiscoveryPublisherLike",
    "DnsDiscovery",
    "EventKind",
    "LanDiscovery",
    "LocalDiscovery",
    "MergedDiscovery",
    "WorkerFilter",
    "WorkerMetadata",
    "left_out_of",
]
