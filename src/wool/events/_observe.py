"""Where wool's dispatch and execution code reports task events.

Every entry point checks first whether anyone listens and does nothing more if not: a
call then pays one dict lookup per hook.
"""

from __future__ import annotations

from contextvars import ContextVar
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from wool._errors import WorkerLost
from wool.events._event import Outcome, _handlers, emit
from wool.transport import StepKind

if TYPE_CHECKING:
    from wool.discovery import WorkerMetadata
    from wool.transport import Response, Task

__all__ = [
    "current_call",
    "observe_call",
    "run_started",
    "run_stopped",
    "set_tracer",
    "set_worker_id",
    "step_completed",
    "step_started",
]

#: The id of the call whose routine runs in this context ("" outside any routine): the
#: parent of the calls it makes.
current_call: ContextVar[str] = ContextVar("wool_current_call", default="")

# On a worker, its id: the worker of the events it reports.
_worker_id: str | None = None


class Span(Protocol):
    """A tracer's record of one call on one side (see ``wool.otel``)."""

    def event(self, name: str, attributes: dict[str, Any]) -> None: ...

    def end(self, outcome: Outcome, exc: BaseException | None) -> None: ...


class Tracer(Protocol):
    def call(self, task: Task) -> Span:
        """The caller's span of a call; may write ``task.trace`` for the worker."""
        ...

    def run(self, task: Task) -> Span:
        """The worker's span of a call, current in the routine's task until it ends."""
        ...


_tracer: Tracer | None = None
# On a worker, the span of the call whose routine runs in this task.
_run_span: ContextVar[Span | None] = ContextVar("wool_run_span", default=None)


def set_tracer(tracer: Tracer | None) -> None:
    global _tracer
    _tracer = tracer


def set_worker_id(worker_id: str | None) -> None:
    global _worker_id
    _worker_id = worker_id


# ---------------------------------------------------------------------------- caller side


class RemoteSteps(Protocol):
    async def next(self) -> tuple[bool, Any]: ...

    async def control(self, kind: StepKind, value: Any = None) -> tuple[bool, Any]: ...


class _Quiet:
    """The observer of a call nobody listens to."""

    def __enter__(self) -> _Quiet:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def scheduled(self, worker: WorkerMetadata) -> WorkerMetadata:
        return worker

    def steps(self, remote: RemoteSteps) -> Any:
        return remote


_QUIET = _Quiet()


class CallObserver:
    """Reports one call on the caller's side: created on entry, completed on exit."""

    def __init__(self, task: Task) -> None:
        self._task = task
        self._worker: str | None = None
        self._iterations = 0
        self._span = _tracer.call(task) if _tracer is not None else None

    def _emit(
        self, kind: Any, outcome: Outcome | None = None, iteration: int | None = None
    ) -> None:
        task = self._task
        emit(
            kind,
            task.id,
            task.routine,
            task.caller,
            task.depth,
            task.parent,
            self._worker,
            outcome,
            iteration,
        )

    def __enter__(self) -> CallObserver:
        self._emit("task-created")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        outcome = _caller_outcome(exc)
        self._emit("task-completed", outcome)
        if self._span is not None:
            self._span.end(outcome, exc)

    def scheduled(self, worker: WorkerMetadata) -> WorkerMetadata:
        """Report that ``worker`` was chosen for the call; returns it."""
        self._worker = worker.id
        self._emit("task-scheduled")
        if self._span is not None:
            self._span.event("wool.scheduled", {"wool.worker": worker.id})
        return worker

    def steps(self, remote: RemoteSteps) -> Any:
        """``remote``, reporting each step the caller asks of the generator."""
        return _ObservedSteps(remote, self)

    def iteration(self) -> None:
        self._iterations += 1
        self._emit("task-iteration-initiated", iteration=self._iterations)
        if self._span is not None:
            self._span.event("wool.iteration-initiated", {"wool.iteration": self._iterations})


class _ObservedSteps:
    def __init__(self, remote: RemoteSteps, observer: CallObserver) -> None:
        self._remote = remote
        self._observer = observer

    async def next(self) -> tuple[bool, Any]:
        self._observer.iteration()
        return await self._remote.next()

    async def control(self, kind: StepKind, value: Any = None) -> tuple[bool, Any]:
        if kind != StepKind.CLOSE:  # a close ends the call; it is no iteration
            self._observer.iteration()
        return await self._remote.control(kind, value)


def _caller_outcome(exc: BaseException | None) -> Outcome:
    if exc is None or isinstance(exc, GeneratorExit):  # a generator closed by its caller
        return "returned"
    if isinstance(exc, WorkerLost):
        return "lost"
    if isinstance(exc, anyio.get_cancelled_exc_class()):
        return "cancelled"
    return "raised"


def observe_call(task: Task) -> CallObserver | _Quiet:
    """``with observe_call(task) as observer``: the caller's events of one call."""
    return CallObserver(task) if _handlers or _tracer is not None else _QUIET


# ---------------------------------------------------------------------------- worker side


def _emit_here(
    kind: Any, task: Task, outcome: Outcome | None = None, iteration: int | None = None
) -> None:
    emit(
        kind,
        task.id,
        task.routine,
        task.caller,
        task.depth,
        task.parent,
        _worker_id,
        outcome,
        iteration,
    )


def run_started(task: Task) -> bool:
    """The routine of ``task`` starts here; whether anyone listens (then call run_stopped)."""
    current_call.set(task.id)
    if not (_handlers or _tracer is not None):
        return False
    _emit_here("task-started", task)
    if _tracer is not None:
        _run_span.set(_tracer.run(task))
    return True


def run_stopped(task: Task, response: Response | None) -> None:
    """The routine of ``task`` has finished with ``response`` (None: it was cancelled)."""
    outcome = _worker_outcome(response)
    _emit_here("task-stopped", task, outcome)
    span = _run_span.get()
    if span is not None:
        _run_span.set(None)
        failed = None if response is None else response.failure
        if failed is not None:  # the OpenTelemetry convention for an exception
            span.event(
                "exception",
                {
                    "exception.type": failed.type,
                    "exception.message": failed.message,
                    "exception.stacktrace": failed.traceback,
                },
            )
        cancelled = None if response is None else response.cancelled
        if cancelled is not None and cancelled.deadline:
            span.event("wool.deadline-expired", {})
        span.end(outcome, None)


def _worker_outcome(response: Response | None) -> Outcome:
    if response is None or response.cancelled is not None:
        return "cancelled"
    if response.failure is not None:
        return "raised"
    return "returned"


def step_started(task: Task, step: int) -> bool:
    """Report a generator step starting; whether anyone listens (then report its end)."""
    if not (_handlers or _tracer is not None):
        return False
    _emit_here("task-iteration-started", task, iteration=step)
    return True


def step_completed(task: Task, step: int, exc: BaseException | None) -> None:
    """Report a generator step's end: ``exc`` is what it raised, None if it yielded."""
    if exc is None:
        outcome: Outcome = "yielded"
    elif isinstance(exc, StopAsyncIteration):
        outcome = "exhausted"
    elif isinstance(exc, anyio.get_cancelled_exc_class()):
        outcome = "cancelled"
    else:
        outcome = "raised"
    _emit_here("task-iteration-completed", task, outcome, step)
    span = _run_span.get()
    if span is not None:
        span.event("wool.iteration", {"wool.iteration": step, "wool.outcome": outcome})
