"""Generator routines for the local-versus-remote comparisons of test_generator_semantics.

Each generator is a plain function here, made a routine twice below: with the default
``prefetch`` and with ``prefetch=0``. Each writes what it does to a log file (``note``),
which the consumer writes to as well, so one file holds the order of both sides.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
import anyio.lowlevel

import wool


def note(log: str, text: str) -> None:
    with open(log, "a") as f:
        f.write(text + "\n")


def lines(log: str) -> list[str]:
    path = Path(log)
    return path.read_text().splitlines() if path.exists() else []


async def until_noted(log: str, text: str) -> None:
    """Wait until ``text`` is in the log (a signal from the other side)."""
    with anyio.fail_after(20):
        while text not in lines(log):
            await anyio.sleep(0.005)


async def cleanup(log: str) -> None:
    """A finally block's async cleanup, noting whether its awaits ran or were cancelled."""
    note(log, "finally")
    try:
        await anyio.sleep(0.01)
        note(log, "cleanup awaited")
    except anyio.get_cancelled_exc_class():
        note(log, "cleanup cancelled")
        with anyio.CancelScope(shield=True):
            await anyio.sleep(0.01)
            note(log, "shielded cleanup ran")
        raise


# Yields inside the generator's own scopes and task groups (each steps exactly: a with
# around a yield may change a thrown exception).


async def in_move_on_after(log: str) -> AsyncGenerator[int, None]:
    with anyio.move_on_after(0.2):
        yield 1
        await anyio.sleep(30)
        yield 99
    note(log, "moved on")
    yield 2


async def in_fail_after(log: str) -> AsyncGenerator[int, None]:
    try:
        with anyio.fail_after(0.2):
            yield 1
            await anyio.sleep(30)
            yield 99
    finally:
        note(log, "generator finally")


async def in_cancelled_scope(log: str) -> AsyncGenerator[int, None]:
    with anyio.CancelScope() as scope:
        yield 1
        scope.cancel()
        await anyio.lowlevel.checkpoint()
        yield 99
    note(log, "scope caught its own cancellation")
    yield 2


async def in_shielded_scope(log: str) -> AsyncGenerator[int, None]:
    with anyio.CancelScope(shield=True):
        yield 1
        await anyio.lowlevel.checkpoint()
        yield 2
    note(log, "left the shield")
    yield 3


async def in_task_group(log: str) -> AsyncGenerator[int, None]:
    async def child(go: anyio.Event, ran: anyio.Event) -> None:
        await go.wait()
        note(log, "child ran")
        ran.set()

    async with anyio.create_task_group() as tg:
        go, ran = anyio.Event(), anyio.Event()
        tg.start_soon(child, go, ran)
        yield 1
        go.set()
        await ran.wait()
        yield 2
    note(log, "task group exited")
    yield 3


async def failing_task_group(log: str) -> AsyncGenerator[int, None]:
    async def child(go: anyio.Event) -> None:
        await go.wait()
        raise ValueError("boom in a child")

    try:
        async with anyio.create_task_group() as tg:
            go = anyio.Event()
            tg.start_soon(child, go)
            yield 1
            go.set()
            await anyio.sleep(30)
            yield 99
    finally:
        note(log, "generator finally")


# Read ahead by default: async cleanup in finally.


async def ticking(log: str) -> AsyncGenerator[int, None]:
    try:
        i = 0
        while True:
            await anyio.sleep(0.01)  # the worker is often mid-step when the close comes
            yield i
            i += 1
    finally:
        await cleanup(log)


# Exceptions thrown in at a yield inside a with.


class Replacing:
    """Replaces a ValueError with a KeyError."""

    def __enter__(self) -> Replacing:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if isinstance(exc, ValueError):
            raise KeyError(f"replaced {exc}") from exc
        return False


class Swallowing:
    """Swallows a ValueError, asynchronously."""

    async def __aenter__(self) -> Swallowing:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        await anyio.lowlevel.checkpoint()
        return isinstance(exc, ValueError)


async def suppressing(log: str) -> AsyncGenerator[int, None]:
    for i in range(4):
        with contextlib.suppress(ValueError):
            yield i


async def replacing(log: str) -> AsyncGenerator[int, None]:
    for i in range(4):
        with Replacing():
            yield i


async def swallowing(log: str) -> AsyncGenerator[int, None]:
    for i in range(4):
        async with Swallowing():
            yield i


# Deadlines: read ahead by default.


async def numbers(log: str) -> AsyncGenerator[int, None]:
    i = 0
    while True:
        yield i
        i += 1


async def slow_third(log: str) -> AsyncGenerator[int, None]:
    try:
        yield 0
        yield 1
        await anyio.sleep(30)
        yield 2
    finally:
        await cleanup(log)


GENERATORS: list[Callable[[str], AsyncGenerator[Any, Any]]] = [
    in_move_on_after,
    in_fail_after,
    in_cancelled_scope,
    in_shielded_scope,
    in_task_group,
    failing_task_group,
    ticking,
    suppressing,
    replacing,
    swallowing,
    numbers,
    slow_third,
]

#: name -> (the routine with the default prefetch, the routine with prefetch=0)
ROUTINES: dict[str, tuple[Any, Any]] = {
    fn.__name__: (wool.routine(fn), wool.routine(prefetch=0)(fn)) for fn in GENERATORS
}


@wool.routine(prefetch=0)
async def paused(log: str) -> AsyncGenerator[int, None]:
    """Notes that it started, then yields 0, 1, 2, ... one step at a time."""
    note(log, "started")
    try:
        i = 0
        while True:
            yield i
            i += 1
    finally:
        await cleanup(log)


@wool.routine
async def scope_expires_between_steps(log: str) -> AsyncGenerator[int, None]:
    with anyio.move_on_after(0.2):
        yield 1
        yield 99
    note(log, "moved on")
    yield 2
