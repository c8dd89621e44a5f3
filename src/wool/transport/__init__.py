"""wool's transport: the wire protocol and how it is carried (internal).

The rest of wool sees a narrow interface: a :class:`Portal` to run transport operations
from the host's backend, a :class:`Client` per worker (``call``, ``cancel``, ``info``,
``stop``) and a :class:`Server` that hands requests to a :class:`Service`. grpclib, HTTP/2
and the framing stay behind it.
"""

from __future__ import annotations

from wool.transport._bridge import (
    ConnectionLost,
    Execution,
    Executor,
    LoopThread,
    Portal,
    Unreachable,
    asyncio_executor,
    current_backend,
    portal_for_host,
    trio_executor,
)
from wool.transport._framing import DEFAULT_LIMITS, Limits
from wool.transport._grpc import CallStream, Client
from wool.transport._protocol.wool.v1 import (
    Cancelled,
    Exhausted,
    Failure,
    Items,
    Rejected,
    RejectedReason,
    Request,
    Response,
    Step,
    StepKind,
    Task,
    WorkerInfo,
)
from wool.transport._server import Server, Service

__all__ = [
    "DEFAULT_LIMITS",
    "PROTOCOL_VERSION",
    "CallStream",
    "Cancelled",
    "Client",
    "ConnectionLost",
    "Execution",
    "Executor",
    "Exhausted",
    "Failure",
    "Items",
    "Limits",
    "LoopThread",
    "Portal",
    "Rejected",
    "RejectedReason",
    "Request",
    "Response",
    "Server",
    "Service",
    "Step",
    "StepKind",
    "Task",
    "Unreachable",
    "WorkerInfo",
    "asyncio_executor",
    "current_backend",
    "portal_for_host",
    "trio_executor",
]

#: Version of the messages in ``protos/wool/v1``; a worker refuses tasks of another version.
PROTOCOL_VERSION = 4
