"""Imported by workers (``WorkerPool(imports=[...])``): tracing into an in-memory exporter."""

from __future__ import annotations

import os
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import wool
import wool.otel

EXPORTER = InMemorySpanExporter()
# Spans name the process that made them (workers import this module afresh: spawned).
PROVIDER = TracerProvider(resource=Resource.create({"process.pid": os.getpid()}))
PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))


def install() -> None:
    wool.otel.instrument(PROVIDER)


def describe(span: Any) -> dict[str, Any]:
    parent = span.parent.span_id if span.parent is not None else None
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace": span.context.trace_id,
        "span": span.context.span_id,
        "parent": parent,
        "pid": os.getpid(),  # of the process whose exporter held the span
        "resource_pid": span.resource.attributes.get("process.pid"),
        "attributes": dict(span.attributes or {}),
        "events": [e.name for e in span.events],
        "status": span.status.status_code.name,
    }


@wool.routine
async def finished_spans() -> list[dict[str, Any]]:
    """The spans this worker finished (its own call's span is still open)."""
    return [describe(s) for s in EXPORTER.get_finished_spans()]


@wool.routine
async def nest(levels: int) -> int:
    if levels <= 1:
        return os.getpid()
    return await nest(levels - 1)


@wool.routine
async def broken() -> None:
    raise KeyError("broken")


@wool.routine
async def descend(levels: int) -> list[dict[str, Any]]:
    """A call tree ``levels`` deep with each level in a process of its own: every level
    calls the next on a one-worker pool it opens. Returns the spans of the processes below
    this one (this worker's own span ends after it returns)."""
    if levels <= 1:
        return []
    async with wool.WorkerPool(size=1, imports=["tests.otel_worker_hooks"]):
        below = await descend(levels - 1)
        return below + await finished_spans()  # the one worker of this pool
