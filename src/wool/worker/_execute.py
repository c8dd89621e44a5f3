"""Running one task on a worker and turning its outcome into a response."""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from typing import Any

import anyio

from wool._errors import SerializationError
from wool._serialization import dumps, dumps_exception, loads
from wool.routine import Routine, call_depth
from wool.transport import Cancelled, Failure, Response, Task

__all__ = ["CANCELLED", "execute", "failure"]

log = logging.getLogger("wool.worker")

#: The answer for a routine cancelled by its caller or by the worker stopping.
CANCELLED = Response(cancelled=Cancelled(deadline=False))


def failure(exc: BaseException) -> Response:
    data, type_name, message, text = dumps_exception(exc)
    return Response(
        failure=Failure(exception=data, type=type_name, message=message, traceback=text)
    )


async def execute(task: Task, scope: anyio.CancelScope) -> Response:
    """Run the task's routine inside ``scope``, under the caller's deadline."""
    if task.timeout is not None:
        scope.deadline = anyio.current_time() + task.timeout
    try:
        fn = _load_function(task.function)
        args, kwargs = loads(task.arguments)
    except BaseException as exc:
        log.warning("call %s to %s could not be unpickled: %r", task.id, task.routine, exc)
        return failure(
            SerializationError(
                f"the call to {task.routine!r} cannot be unpickled on the worker: {exc!r}"
            )
        )
    call = fn.run_here if isinstance(fn, Routine) else fn
    call_depth.set(task.depth)
    response: Response | None = None
    with scope:
        try:
            value: Any = await call(*args, **kwargs)
        except anyio.get_cancelled_exc_class() as exc:
            if scope.cancel_called or anyio.current_effective_deadline() == -math.inf:
                raise
            response = failure(exc)  # nothing cancelled it: the routine raised it itself
        except BaseException as exc:
            response = failure(exc)
        else:
            response = _result(task, value)
    if response is not None:
        return response
    if scope.deadline <= anyio.current_time():
        return Response(cancelled=Cancelled(deadline=True))
    return CANCELLED


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


def _result(task: Task, value: Any) -> Response:
    try:
        return Response(result=dumps(value))
    except Exception as exc:
        return failure(
            SerializationError(
                f"the value returned by {task.routine!r} ({type(value).__name__}) "
                f"cannot be pickled: {exc}"
            )
        )
