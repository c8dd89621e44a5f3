"""Running one task on a worker and turning its outcome into a response."""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, cast

import anyio

from wool import _context
from wool._errors import SerializationError
from wool._serialization import (
    Payload,
    dumps_exception,
    dumps_payload,
    load,
    loads,
    too_large,
)
from wool._tracebacks import without_wool_frames
from wool.events._observe import run_started, run_stopped
from wool.routine import Routine, call_depth
from wool.transport import DEFAULT_LIMITS, Cancelled, Exhausted, Failure, Limits, Response, Task

__all__ = [
    "CANCELLED",
    "EXHAUSTED",
    "deadline_of",
    "execute",
    "failure",
    "load_call",
    "pickle_value",
    "run_in",
    "time_left",
]

log = logging.getLogger("wool.worker")

#: The answer for a routine cancelled by its caller or by the worker stopping.
CANCELLED = Response(cancelled=Cancelled(deadline=False))
#: The answer for a generator that finished (or was closed).
EXHAUSTED = Response(exhausted=Exhausted())


def failure(exc: BaseException, limits: Limits = DEFAULT_LIMITS) -> Response:
    without_wool_frames(exc)
    data, type_name, message, text = dumps_exception(exc)
    if len(data) > limits.max_payload:
        data = b""  # the caller still gets its type, message and traceback
    # The texts travel beside the payload, unchunked: together they must fit in one message.
    room = min(_TEXT_KEPT, (limits.max_message - _FAILURE_OVERHEAD) // 2)
    message, text = _shortened(message, room), _shortened(text, room)
    return Response(
        failure=Failure(exception=data, type=type_name[:1024], message=message, traceback=text)
    )


_TEXT_KEPT = 64 * 1024  # bytes of each text at most
_FAILURE_OVERHEAD = 4096  # the type name (cut at 1024 characters) and the message framing


def _shortened(text: str, room: int) -> str:
    """``text``, cut in the middle to at most ``room`` bytes of UTF-8 (lone surrogates,
    which protobuf cannot carry, escaped)."""
    data = text.encode("utf-8", "backslashreplace")
    if len(data) <= room:
        return data.decode("utf-8")
    note = f"\n... ({len(data) - room} bytes left out) ...\n"
    half = (room - len(note) - 8) // 2
    head = data[:half].decode("utf-8", "ignore")
    tail = data[len(data) - half :].decode("utf-8", "ignore")
    return f"{head}{note}{tail}"


async def execute(
    task: Task, limits: Limits, received: float, scope: anyio.CancelScope
) -> Response:
    """Run the task's routine inside ``scope``, under the caller's deadline (``received``:
    when the task arrived, on ``time.monotonic()``)."""
    baseline = _context.snapshot()

    async def call() -> Response:
        nonlocal baseline
        run, args, kwargs = await load_call(task)
        baseline = _context.snapshot()
        value = await run(*args, **kwargs)
        data = pickle_value(task, value, limits, what="the value returned by")
        # A Payload in a bytes field: the transport joins or chunks it (framing.split).
        return data if isinstance(data, Response) else Response(result=cast(bytes, data))

    response = await run_in(scope, task, deadline_of(task, received), call, limits)
    return _with_context(response, baseline, limits)


def _with_context(response: Response, baseline: dict[str, Any], limits: Limits) -> Response:
    """The answer, carrying the wool.ContextVar values the routine changed."""
    if response.result is None and response.failure is None:
        return response
    try:
        response.context = _context.changes_since(baseline)
    except SerializationError as exc:
        return failure(exc, limits)
    return response


def time_left(task: Task, received: float) -> float | None:
    """Seconds left now before the caller's deadline, None without one.

    ``Task.timeout`` is what the caller had left when it sent the task; it counts from
    ``received``, the ``time.monotonic()`` of the task's arrival here, so the time the call
    waited on this worker (for a slot, for the routines' loop) counts against it.
    """
    return None if task.timeout is None else task.timeout - (time.monotonic() - received)


def deadline_of(task: Task, received: float) -> float | None:
    """When the caller's deadline passes, on the clock of the calling task's loop."""
    left = time_left(task, received)
    return None if left is None else anyio.current_time() + left


async def run_in(
    scope: anyio.CancelScope,
    task: Task,
    deadline: float | None,
    body: Callable[[], Awaitable[Response]],
    limits: Limits = DEFAULT_LIMITS,
) -> Response:
    """Run ``body`` inside ``scope`` and turn however it ended into the answer."""
    call_depth.set(task.depth)
    observed = run_started(task)
    response: Response | None = None
    try:
        response = await _run_in(scope, deadline, body, limits)
        return response
    finally:
        if observed:
            run_stopped(task, response)


async def _run_in(
    scope: anyio.CancelScope,
    deadline: float | None,
    body: Callable[[], Awaitable[Response]],
    limits: Limits,
) -> Response:
    if deadline is not None:
        scope.deadline = deadline
    response: Response | None = None
    with scope:
        try:
            response = await body()
        except anyio.get_cancelled_exc_class() as exc:
            if scope.cancel_called or anyio.current_effective_deadline() == -math.inf:
                raise
            response = failure(exc, limits)  # nothing cancelled it: the routine raised it
        except BaseException as exc:
            response = failure(exc, limits)
    if response is not None:
        return response
    if scope.deadline <= anyio.current_time():
        return Response(cancelled=Cancelled(deadline=True))
    return CANCELLED


async def load_call(task: Task) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
    try:
        fn = _load_function(task.function)
        args, kwargs = await load(task.arguments)
        _context.enter(task.context)
    except anyio.get_cancelled_exc_class():
        raise
    except BaseException as exc:
        log.warning("call %s to %s could not be unpickled: %r", task.id, task.routine, exc)
        raise SerializationError(
            f"the call to {task.routine!r} cannot be unpickled on the worker: {exc!r}"
        ) from exc
    return (fn.run_here if isinstance(fn, Routine) else fn), args, kwargs


_functions: OrderedDict[bytes, Any] = OrderedDict()
_FUNCTIONS_KEPT = 512


def _load_function(data: bytes) -> Any:
    """Unpickle a routine, remembering the most recent ones: callers send the same bytes."""
    fn = _functions.get(data)
    if fn is None:
        fn = loads(data)
        _functions[data] = fn
        if len(_functions) > _FUNCTIONS_KEPT:
            _functions.popitem(last=False)
    return fn


def pickle_value(task: Task, value: Any, limits: Limits, *, what: str) -> Payload | Response:
    """``value`` pickled for the caller, or the failure to send instead."""
    try:
        data = dumps_payload(value)
    except Exception as exc:
        return failure(
            SerializationError(
                f"{what} {task.routine!r} ({type(value).__name__}) cannot be pickled: {exc}"
            ),
            limits,
        )
    if len(data) > limits.max_payload:
        return failure(
            too_large(
                f"{what} {task.routine!r} ({type(value).__name__})", len(data), limits.max_payload
            ),
            limits,
        )
    return data
