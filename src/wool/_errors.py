"""wool's own exceptions. Every error wool raises on its own account is a WoolError."""

from __future__ import annotations

__all__ = [
    "NoPoolError",
    "NoWorkersAvailable",
    "ProtocolError",
    "SecurityError",
    "SerializationError",
    "TaskException",
    "WoolError",
    "WorkerLost",
    "WorkerStartError",
]


class WoolError(Exception):
    """Base class of the errors wool raises itself (not those raised by routines)."""


class NoPoolError(WoolError, RuntimeError):
    """A routine was called outside any worker pool (or after its pool closed).

    Raised by the call itself, before anything is awaited: open a ``wool.WorkerPool`` around
    the code that calls routines.
    """

    def __init__(self, routine: str, *, closed: bool = False) -> None:
        where = "after its worker pool closed" if closed else "outside a worker pool"
        super().__init__(
            f"routine {routine!r} was called {where}; call it while a pool is open, "
            f"for example `async with wool.WorkerPool(): await {routine.rsplit('.', 1)[-1]}(...)`"
        )


class SerializationError(WoolError, TypeError):
    """A value crossing the wire could not be pickled or unpickled, or is too large.

    The message names the argument, result or item at fault, or its size and the pool's
    ``max_payload_size``. The pool keeps serving.
    """


class NoWorkersAvailable(WoolError):
    """The pool has no worker that can take the call.

    Raised by a call when no worker became available within the pool's ``start_timeout``,
    and by entering a pool with ``discovery`` that found none in that time.
    """


class WorkerLost(WoolError):
    """The worker running a call died or became unreachable before answering.

    Calls are at most once: wool never retries a call that may have started.

    Attributes:
        worker: the id of the worker that had the call, when known.
        routine: the qualified name of the routine called, when known.
    """

    def __init__(self, message: str, *, worker: str | None = None, routine: str | None = None):
        super().__init__(message)
        self.worker = worker
        self.routine = routine


class WorkerStartError(WoolError):
    """A worker process failed to start. ``remote_traceback`` is the worker's own traceback."""

    def __init__(self, message: str, *, remote_traceback: str = "") -> None:
        super().__init__(
            f"{message}\n\nworker traceback:\n{remote_traceback}" if remote_traceback else message
        )
        self.remote_traceback = remote_traceback


class ProtocolError(WoolError):
    """A peer sent what wool cannot understand: a malformed frame or another protocol version."""


class SecurityError(WoolError):
    """A peer could not be authenticated, or caller and worker disagree about TLS.

    Raised by calls (and pools opening) when the pool would have to talk to a worker
    without the protection it was configured for, or a TLS handshake failed. The message
    says which side refused and what to change. ``worker`` names the worker, if any.
    """

    def __init__(self, message: str, *, worker: str | None = None) -> None:
        super().__init__(message)
        self.worker = worker


class TaskException(WoolError):
    """A routine raised an exception that could not be brought back as itself.

    It carries the original type's name, its message and the worker's formatted traceback.

    Attributes:
        type_name: ``module.qualname`` of the exception the routine raised.
        message: ``str()`` of that exception.
        remote_traceback: the worker's traceback, formatted.
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        text = f"{self.type_name}: {self.message}"
        return (
            f"{text}\n\nremote traceback:\n{self.remote_traceback}"
            if self.remote_traceback
            else text
        )
