"""Spans for routine calls, from wool's own dispatch and execution hooks."""

from __future__ import annotations

from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from wool import __version__
from wool.events._event import Outcome
from wool.events._observe import set_tracer
from wool.transport import Task

__all__ = ["instrument", "uninstrument"]


class _CallSpan:
    """One call's span on one side; on a worker it is current in the routine's task."""

    def __init__(self, span: trace.Span, token: object | None = None) -> None:
        self._span = span
        self._token = token

    def event(self, name: str, attributes: dict[str, Any]) -> None:
        self._span.add_event(name, attributes)

    def end(self, outcome: Outcome, exc: BaseException | None) -> None:
        span = self._span
        span.set_attribute("wool.outcome", outcome)
        if exc is not None and outcome in ("raised", "lost"):
            span.record_exception(exc)
        if outcome in ("raised", "lost"):
            span.set_status(Status(StatusCode.ERROR, f"the call {outcome}"))
        elif outcome == "cancelled":
            span.add_event("wool.cancelled", {})
        if self._token is not None:
            context.detach(self._token)  # pyright: ignore[reportArgumentType]
        span.end()


def _attributes(task: Task) -> dict[str, Any]:
    return {
        "wool.call_id": task.id,
        "wool.routine": task.routine,
        "wool.caller": task.caller,
        "wool.depth": task.depth,
        "wool.generator": task.generator,
    }


class _Tracer:
    def __init__(self, provider: trace.TracerProvider | None) -> None:
        self._tracer = trace.get_tracer("wool", __version__, tracer_provider=provider)

    def call(self, task: Task) -> _CallSpan:
        span = self._tracer.start_span(
            f"call {task.routine}", kind=SpanKind.CLIENT, attributes=_attributes(task)
        )
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        task.trace = carrier
        return _CallSpan(span)

    def run(self, task: Task) -> _CallSpan:
        parent = propagate.extract(dict(task.trace))
        span = self._tracer.start_span(
            f"run {task.routine}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes=_attributes(task),
        )
        # Current in the routine's task: the spans of its nested calls are children.
        token = context.attach(trace.set_span_in_context(span, parent))
        return _CallSpan(span, token)


def instrument(tracer_provider: trace.TracerProvider | None = None) -> None:
    """Trace every routine call made or run in this process, until :func:`uninstrument`.

    Call it in callers and in workers (for spawned workers, in a module named in
    ``WorkerPool(imports=[...])``). ``tracer_provider`` defaults to the global one.
    Calling it again replaces the provider; calls already under way keep their spans.
    """
    set_tracer(_Tracer(tracer_provider))


def uninstrument() -> None:
    """Stop tracing calls in this process."""
    set_tracer(None)
