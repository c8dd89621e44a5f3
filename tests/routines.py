"""Routines used by the tests: importable, so workers load them by reference."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import sniffio

import wool


@wool.routine
async def add(x: int, y: int) -> int:
    """Add two numbers on a worker."""
    return x + y


@wool.routine
async def identity(value: object) -> object:
    return value


@wool.routine
async def whereami() -> tuple[int, str]:
    """The worker's pid and async library."""
    return os.getpid(), sniffio.current_async_library()


@wool.routine
async def fib(n: int) -> int:
    if n <= 1:
        return n
    results: dict[int, int] = {}

    async def run(k: int) -> None:
        results[k] = await fib(k)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, n - 1)
        tg.start_soon(run, n - 2)
    return results[n - 1] + results[n - 2]


@wool.routine
async def fail(message: str) -> None:
    raise ValueError(message)


@wool.routine
async def sleep_then_mark(seconds: float, marker: str) -> str:
    """Sleep, writing ``marker`` from ``finally`` (and what ended the sleep)."""
    Path(marker).write_text("started")
    try:
        await anyio.sleep(seconds)
    except anyio.get_cancelled_exc_class():
        Path(marker).write_text("cancelled")
        raise
    finally:
        with open(marker, "a") as f:
            f.write(" finally")
    return "slept"


@wool.routine
async def remaining_time() -> float:
    """Seconds until the deadline this routine runs under (inf without one)."""
    return anyio.current_effective_deadline() - anyio.current_time()


@wool.routine
async def die() -> None:
    os._exit(3)


class Calculator:
    def __init__(self, base: int) -> None:
        self.base = base

    @wool.routine
    async def plus(self, x: int) -> int:
        return self.base + x

    @classmethod
    @wool.routine
    async def name_of(cls) -> str:
        return cls.__name__

    @wool.routine
    @classmethod
    async def name_of_too(cls) -> str:
        return cls.__name__

    @staticmethod
    @wool.routine
    async def double(x: int) -> int:
        return 2 * x

    @wool.routine
    @staticmethod
    async def triple(x: int) -> int:
        return 3 * x
