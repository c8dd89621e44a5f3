"""Running one task on a worker and turning its outcome into a response."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from wool._errors import SerializationError
from wool._serialization import dumps, dumps_exception, loads
from wool.routine import Routine, call_depth
from wool.transport import Cancelled, Exhausted, Failure, Response, Step, StepKind, Task

__all__ = ["CANCELLED", "GeneratorSession", "execute", "failure"]

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

    async def call() -> Response:
        run, args, kwargs = _load_call(task)
        return _answer(task, await run(*args, **kwargs))

    deadline = None if task.timeout is None else anyio.current_time() + task.timeout
    return await _run_in(scope, task, deadline, call)


async def _run_in(
    scope: anyio.CancelScope,
    task: Task,
    deadline: float | None,
    body: Callable[[], Awaitable[Response]],
) -> Response:
    """Run ``body`` inside ``scope`` and turn however it ended into the answer."""
    if deadline is not None:
        scope.deadline = deadline
    call_depth.set(task.depth)
    response: Response | None = None
    with scope:
        try:
            response = await body()
        except anyio.get_cancelled_exc_class() as exc:
            if scope.cancel_called or anyio.current_effective_deadline() == -math.inf:
                raise
            response = failure(exc)  # nothing cancelled it: the routine raised it itself
        except BaseException as exc:
            response = failure(exc)
    if response is not None:
        return response
    if scope.deadline <= anyio.current_time():
        return Response(cancelled=Cancelled(deadline=True))
    return CANCELLED


def _load_call(task: Task) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
    try:
        fn = _load_function(task.function)
        args, kwargs = loads(task.arguments)
    except BaseException as exc:
        log.warning("call %s to %s could not be unpickled: %r", task.id, task.routine, exc)
        raise SerializationError(
            f"the call to {task.routine!r} cannot be unpickled on the worker: {exc!r}"
        ) from None
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


def _answer(task: Task, value: Any, *, yielded: bool = False) -> Response:
    """The value a routine returned or yielded, pickled for the caller."""
    try:
        data = dumps(value)
    except Exception as exc:
        what = "a value yielded by" if yielded else "the value returned by"
        return failure(
            SerializationError(
                f"{what} {task.routine!r} ({type(value).__name__}) cannot be pickled: {exc}"
            )
        )
    return Response(item=data) if yielded else Response(result=data)


class GeneratorSession:
    """One async generator routine on a worker, stepped by its caller's Steps.

    Every step runs as an execution of its own on the worker's backend, under the deadline
    the caller had when the call was made.
    """

    def __init__(self, task: Task) -> None:
        self._task = task
        self._agen: Any = None
        self._deadline: float | None = None
        self.finished = False

    @property
    def started(self) -> bool:
        return self._agen is not None

    async def step(self, step: Step, scope: anyio.CancelScope) -> Response:
        task = self._task
        if task.timeout is not None and self._deadline is None:
            self._deadline = anyio.current_time() + task.timeout
        response = await _run_in(scope, task, self._deadline, functools.partial(self._step, step))
        if response.item is None:
            self.finished = True
        return response

    async def _step(self, step: Step) -> Response:
        if self._agen is None:
            if step.kind == StepKind.CLOSE:
                return Response(exhausted=Exhausted())
            run, args, kwargs = _load_call(self._task)
            self._agen = run(*args, **kwargs)
        try:
            if step.kind == StepKind.CLOSE:
                await self._agen.aclose()
                return Response(exhausted=Exhausted())
            if step.kind == StepKind.THROW:
                item = await self._agen.athrow(loads(step.value))
            elif step.kind == StepKind.SEND:
                item = await self._agen.asend(loads(step.value))
            else:
                item = await self._agen.__anext__()
        except StopAsyncIteration:
            return Response(exhausted=Exhausted())
        return _answer(self._task, item, yielded=True)

    async def close(self, scope: anyio.CancelScope) -> Response:
        """Close the generator (its ``finally`` blocks run); the caller is gone or done."""
        self.finished = True
        if self._agen is not None:
            with scope, contextlib.suppress(Exception):
                await self._agen.aclose()
        return CANCELLED
