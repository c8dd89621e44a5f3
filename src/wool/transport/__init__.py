"""wool's transport: the wire protocol and how it is carried (internal).

The rest of wool sees a narrow interface: a :class:`Portal` to run transport operations
from the host (grpclib runs on a loop thread of its own, whatever the host's backend), an
:class:`Executor` to run a worker's routines on the host, a :class:`Client` per worker
(``call``, ``cancel``, ``info``, ``stop``) and a :class:`Server` that hands requests to a
:class:`Service`. grpclib, HTTP/2 and the framing stay behind it.
"""

from __future__ import annotations

from wool.transport._backends import BACKENDS, backend_named, current_backend
from wool.transport._bridge import (
    ConnectionLost,
    Execution,
    Executor,
    LoopThread,
    Portal,
    Unreachable,
    executor_for_host,
    portal_for_host,
)
from wool.transport._framing import DEFAULT_LIMITS, Limits
from wool.transport._grpc import CallStream, Client
from wool.transport._protocol.wool.v1 import (
    Cancelled,
    Exhausted,
    Failure,
    Items,
    Latency,
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
from wool.transport._wire import body_of

__all__ = [
    "BACKENDS",
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
    "Latency",
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
    "backend_named",
    "body_of",
    "current_backend",
    "executor_for_host",
    "portal_for_host",
]

#: Version of the messages in ``protos/wool/v1``; a worker refuses tasks of another version.
PROTOCOL_VERSION = 4
