"""Task events as a worker sees them: recorded in the worker, fetched by a routine."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import wool

EVENTS: list[tuple[wool.TaskEvent, int]] = []


def record(event: wool.TaskEvent, timestamp: int) -> None:
    EVENTS.append((event, timestamp))


@wool.routine
async def recorded(call_ids: list[str] | None) -> list[tuple[wool.TaskEvent, int]]:
    """The events this worker recorded for the given calls (None: for all)."""
    return [(event, ts) for event, ts in EVENTS if call_ids is None or event.id in call_ids]


@wool.routine
async def count_to(n: int) -> AsyncGenerator[int, None]:
    for i in range(n):
        yield i


@wool.routine
async def outer(x: int) -> int:
    return await inner(x) + 1


@wool.routine
async def inner(x: int) -> int:
    return x * 2
