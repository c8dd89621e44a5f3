"""Generator routines for the streaming tests: importable, so workers load them by reference."""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator
from pathlib import Path

import anyio

import wool

from .semantics_routines import cleanup, note


def _count(path: str) -> None:
    """Note one more item produced (the file holds the count)."""
    p = Path(path)
    p.write_text(str(int(p.read_text() or 0) + 1) if p.exists() else "1")


@wool.routine(prefetch=4)
async def counted(n: int, produced: str) -> AsyncGenerator[int, None]:
    """Yields 0..n-1, counting in ``produced`` how many it has produced."""
    for i in range(n):
        _count(produced)
        yield i


@wool.routine(prefetch=0)
async def counted_lockstep(n: int, produced: str) -> AsyncGenerator[int, None]:
    for i in range(n):
        _count(produced)
        yield i


@wool.routine
async def accumulate(produced: str) -> AsyncGenerator[int, int]:
    """Takes sends: the running total of what was sent."""
    total = 0
    while True:
        _count(produced)
        total += yield total


@wool.routine
async def countdown(n: int, marker: str) -> AsyncGenerator[int, object]:
    """Ignores what is sent, catches nothing: it reads ahead by default."""
    try:
        for i in range(n, 0, -1):
            yield i
    finally:
        with open(marker, "a") as f:
            f.write("finally;")


@wool.routine
async def stuck_after_first(marker: str) -> AsyncGenerator[int, None]:
    """Yields once; read ahead, the next step hangs until it is cut short."""
    try:
        yield 1
        await anyio.sleep(60)
        yield 2
    finally:
        Path(marker).write_text("finally")


@wool.routine
async def gated(log: str, gate: str) -> AsyncGenerator[int, None]:
    """Yields 1; read ahead, its next step waits for the ``gate`` file, then yields 2."""
    try:
        yield 1
        note(log, "step 2 began")
        while not Path(gate).exists():
            await anyio.sleep(0.005)
        note(log, "reached yield 2")
        yield 2
    finally:
        await cleanup(log)


@wool.routine
async def payloads(n: int, size: int) -> AsyncGenerator[bytes, None]:
    for i in range(n):
        yield bytes([i % 256]) * size


@wool.routine
async def make_bytes(size: int) -> bytes:
    return b"y" * size


@wool.routine
async def echo(data: bytes) -> bytes:
    return data


class LargeError(Exception):
    """Carries a large payload back to the caller."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.data = data


@wool.routine
async def fail_with(size: int) -> None:
    raise LargeError(b"e" * size)


@wool.routine
async def echo_sends(size: int) -> AsyncGenerator[int, bytes]:
    """Yields the length of each value sent to it; starts by yielding ``size``."""
    received = yield size
    while True:
        received = yield len(received)


@wool.routine
async def small_items(n: int, size: int = 96) -> AsyncGenerator[bytes, None]:
    for i in range(n):
        yield i.to_bytes(8, "little") * (size // 8)


@wool.routine
async def pid() -> int:
    return os.getpid()


@wool.routine
async def raises_late(marker: str) -> AsyncGenerator[int, None]:
    """Raises after two items: read ahead, it has raised before the caller gets there."""
    try:
        yield 1
        yield 2
        raise ValueError("late")
    finally:
        with open(marker, "a") as f:
            f.write("finally;")
