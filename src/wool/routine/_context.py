"""Which pool a routine call goes to."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from contextvars import ContextVar
from typing import Any, Protocol

from wool._serialization import Payload
from wool.transport import StepKind

__all__ = [
    "Dispatcher",
    "call_depth",
    "current_dispatcher",
    "dispatcher_var",
    "set_process_dispatcher",
]


class Dispatcher(Protocol):
    """Sends one call to a worker and returns its result (``wool.pool`` implements it)."""

    async def call(
        self,
        routine: str,
        function: bytes,
        arguments: Payload,
        *,
        grace: float | None,
        timeout: float | None,
        tags: frozenset[str] = ...,
    ) -> Any: ...

    def generator(
        self,
        routine: str,
        function: bytes,
        arguments: Payload,
        *,
        grace: float | None,
        timeout: float | None,
        prefetch: int,
        tags: frozenset[str] = ...,
    ) -> AbstractAsyncContextManager[RemoteGeneratorLike]: ...


class RemoteGeneratorLike(Protocol):
    """An async generator running on a worker, stepped by the caller.

    Each step returns ``(True, None)`` once the generator is exhausted, else
    ``(False, item)``; exceptions the generator raised are raised.
    """

    async def next(self) -> tuple[bool, Any]:
        """The next item, resuming the generator with None (may be read ahead)."""
        ...

    async def control(self, kind: StepKind, value: Any = None) -> tuple[bool, Any]:
        """Send a value, throw an exception in or close: applied exactly, never read ahead."""
        ...


#: The pool opened by the current task (``async with WorkerPool()``).
dispatcher_var: ContextVar[Dispatcher | None] = ContextVar("wool_dispatcher", default=None)

#: How deep in a tree of nested calls the running routine is (-1 outside any routine).
call_depth: ContextVar[int] = ContextVar("wool_call_depth", default=-1)

# On a worker, the pool the worker belongs to: routines it runs call back into it.
_process_dispatcher: Dispatcher | None = None


def set_process_dispatcher(dispatcher: Dispatcher | None) -> None:
    global _process_dispatcher
    _process_dispatcher = dispatcher


def current_dispatcher() -> Dispatcher | None:
    return dispatcher_var.get() or _process_dispatcher
