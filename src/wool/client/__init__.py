"""The client runtime: how a caller's routine calls reach workers (internal).

A :class:`WorkerProxy` holds the connections to the workers a pool (or a worker making
nested calls) can use; it chooses a worker through the load balancer, sends the call,
maps the caller's cancellation and deadline onto it, and brings back the outcome or a
:class:`RemoteGenerator`'s items. Pools and workers both use it; it imports neither.
"""

from __future__ import annotations

from wool.client._open import open_proxy
from wool.client._proxy import WorkerProxy
from wool.client._remote import RemoteGenerator

__all__ = ["RemoteGenerator", "WorkerProxy", "open_proxy"]
