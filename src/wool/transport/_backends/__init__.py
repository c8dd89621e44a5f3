"""What depends on the host's async library, behind one small interface.

wool's own code is anyio code. What anyio does not offer is in one module per backend
(``_asyncio``, ``_trio``), each providing a :class:`HostBackend`: how to post a callback
into the host's thread from another thread (the transport's loop thread), and how to run a
worker's main function on a fresh event loop of that library. The backend is selected once,
at each entry point: by sniffio for a running host (:func:`host_backend`), by name for a
worker process about to start its loop (:func:`backend_named`).
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import sniffio

__all__ = ["BACKENDS", "HostBackend", "Spawn", "Waker", "backend_named", "host_backend"]

#: The async libraries a host may run.
BACKENDS = ("asyncio", "trio")

#: ``wake(drain)``: make the host's thread call ``drain()`` soon; callable from any thread.
Waker = Callable[[Callable[[], None]], None]
#: A task group's ``start_soon``: run ``fn(*args)`` as a task of the host.
Spawn = Callable[..., Any]


class HostBackend(Protocol):
    """One async library, as wool's bridge needs it."""

    #: ``"asyncio"`` or ``"trio"``.
    name: str

    def waker(self) -> Waker:
        """A :data:`Waker` for the calling host thread (call it from a task of the host)."""
        ...

    def run(self, main: Callable[[], Awaitable[None]]) -> None:
        """Run ``main()`` to completion on a new event loop in this thread."""
        ...


def backend_named(name: str) -> HostBackend:
    """The backend called ``name`` (one of :data:`BACKENDS`)."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {name!r}")
    module: Any = importlib.import_module(f"wool.transport._backends._{name}")
    return module.BACKEND


def current_backend() -> str:
    """``"asyncio"`` or ``"trio"``: the async library running the current task."""
    return sniffio.current_async_library()


def host_backend() -> HostBackend:
    """The backend of the calling task."""
    return backend_named(current_backend())
