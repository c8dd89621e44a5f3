"""``wool.TaskEvent``: what happens to each routine call, and the handlers told about it."""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar, get_args

__all__ = ["EventType", "Outcome", "TaskEvent", "TaskEventHandler", "emit", "listening"]

log = logging.getLogger("wool.events")

EventType = Literal[
    "task-created",
    "task-scheduled",
    "task-started",
    "task-stopped",
    "task-completed",
    "task-iteration-initiated",
    "task-iteration-started",
    "task-iteration-completed",
]

#: How a call or a generator step ended (see :attr:`TaskEvent.outcome`).
Outcome = Literal["returned", "raised", "cancelled", "lost", "yielded", "exhausted"]

#: A handler gets the event and its time, in nanoseconds since the epoch (``time.time_ns``).
TaskEventHandler = Callable[["TaskEvent", int], object]

H = TypeVar("H", bound=TaskEventHandler)

_TYPES: frozenset[str] = frozenset(get_args(EventType))

# Event type: its handlers, in registration order. Tuples, replaced rather than changed,
# so that an emitter iterating them never sees a registration half done.
_handlers: dict[str, tuple[TaskEventHandler, ...]] = {}


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """Something that happened to one routine call, on the caller's side or the worker's.

    Where each type fires (see docs/observability.md for the full sequences):

    - caller: ``task-created`` (the call is made), ``task-scheduled`` (a worker is chosen;
      again if that worker declines and another takes the call), ``task-completed`` (the
      caller has the outcome), ``task-iteration-initiated`` (the caller asks a generator
      for its next item, or sends, throws or closes);
    - worker: ``task-started`` and ``task-stopped`` (around the routine's run),
      ``task-iteration-started`` and ``task-iteration-completed`` (around each step of a
      generator routine; read-ahead runs steps before the caller asks).

    Handlers run synchronously where the event fires (in the calling task, or in the task
    running the routine on the worker, where the call's ``wool.ContextVar`` values are
    set): keep them quick and never block.
    """

    #: What happened.
    type: EventType
    #: The call's id, the same on both sides.
    id: str
    #: Qualified name of the routine.
    routine: str
    #: The calling process, ``host:pid``.
    caller: str
    #: 0 for a call from outside the pool; nested calls count up.
    depth: int
    #: Id of the call whose routine made this call; None for a call from outside the pool.
    parent: str | None
    #: Id of the worker running the call; None before one is chosen (``task-created``).
    worker: str | None
    #: How the call (``task-stopped``, ``task-completed``) or the step
    #: (``task-iteration-completed``) ended; None for other types. ``returned``: the
    #: coroutine returned or the generator finished; ``raised``: the routine raised (or the
    #: call failed before it ran); ``cancelled``: cancelled, or its deadline expired;
    #: ``lost``: the worker was lost; ``yielded``/``exhausted``: a step yielded an item, or
    #: the generator ended at it.
    outcome: Outcome | None = None
    #: The number of the step (1-based) on that side, for iteration events; None otherwise.
    iteration: int | None = None

    @staticmethod
    def handler(*types: EventType) -> Callable[[H], H]:
        """Decorator: call the function with ``(event, timestamp)`` for events of ``types``.

        No types means every type. The function is returned unchanged; registering it
        again for a type it has is a no-op. A handler that raises is logged (logger
        ``wool.events``) and does not affect the call. Handlers run in the process that
        registers them: register worker-side handlers in a module the workers import
        (``WorkerPool(imports=[...])``, or the routine's own module).

        Raises:
            ValueError: an unknown event type.
            TypeError: the handler is not a plain (synchronous) callable.
        """
        unknown = [t for t in types if t not in _TYPES]
        if unknown:
            raise ValueError(
                f"unknown task event type(s) {unknown}; the types are {sorted(_TYPES)}"
            )
        chosen = types or tuple(sorted(_TYPES))

        def register(fn: H) -> H:
            if not callable(fn) or inspect.iscoroutinefunction(fn):
                raise TypeError(f"a task event handler must be a synchronous callable, got {fn!r}")
            for kind in chosen:
                present = _handlers.get(kind, ())
                if fn not in present:
                    _handlers[kind] = (*present, fn)
            return fn

        return register

    @staticmethod
    def remove_handler(fn: TaskEventHandler, *types: EventType) -> None:
        """Stop calling ``fn`` for ``types`` (no types: for every type it was registered for).

        Removing a handler that is not registered is a no-op.
        """
        for kind in types or tuple(_handlers):
            left = tuple(h for h in _handlers.get(kind, ()) if h != fn)
            if left:
                _handlers[kind] = left
            else:
                _handlers.pop(kind, None)


def listening() -> bool:
    """Whether any handler is registered (emitters skip all work otherwise)."""
    return bool(_handlers)


def emit(
    kind: EventType,
    call_id: str,
    routine: str,
    caller: str,
    depth: int,
    parent: str,
    worker: str | None,
    outcome: Outcome | None = None,
    iteration: int | None = None,
) -> None:
    """Tell the handlers of ``kind``; never raises."""
    handlers = _handlers.get(kind)
    if not handlers:
        return
    event = TaskEvent(
        kind, call_id, routine, caller, depth, parent or None, worker, outcome, iteration
    )
    timestamp = time.time_ns()
    for handler in handlers:
        try:
            handler(event, timestamp)
        except Exception:
            log.exception("task event handler %r failed on %s of call %s", handler, kind, call_id)
