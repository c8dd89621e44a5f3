"""Routines used by the tests: importable, so workers load them by reference."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncGenerator
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


@wool.routine
async def cancel_with_shielded_cleanup(marker: str, release: str) -> None:
    """On cancellation, run a shielded cleanup that waits for the file ``release``.

    ``marker`` reads "started", then "cleaning" once the cleanup waits, then "cleaned up".
    """
    try:
        Path(marker).write_text("started")
        await anyio.sleep(30)
    except anyio.get_cancelled_exc_class():
        with anyio.CancelScope(shield=True):
            Path(marker).write_text("cleaning")
            while not Path(release).exists():
                await anyio.sleep(0.01)
            Path(marker).write_text("cleaned up")
        raise


@wool.routine
async def cancels_itself() -> str:
    with anyio.move_on_after(0.05):
        await anyio.sleep(10)
    return "carried on"


@wool.routine
async def nested_remaining_time() -> tuple[float, float]:
    """(time left here, time left in a routine this one calls)."""
    here = anyio.current_effective_deadline() - anyio.current_time()
    return here, await remaining_time()


@wool.routine
async def leaf(counter: str, release: str) -> int:
    """Count itself in, then wait until every leaf is in flight."""
    with open(counter, "ab") as f:
        f.write(b"x")
    while not os.path.exists(release):
        await anyio.sleep(0.5)
    return 1


@wool.routine
async def fan_out(n: int, workdir: str) -> int:
    """Start ``n`` nested calls and return once all ``n`` were in flight at the same time."""
    counter, release = os.path.join(workdir, "counter"), os.path.join(workdir, "release")
    results: list[int] = []

    async def one() -> None:
        results.append(await leaf(counter, release))

    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(one)
        while not os.path.exists(counter) or os.path.getsize(counter) < n:
            await anyio.sleep(0.05)
        Path(release).write_text("go")
    return sum(results)


@wool.routine
async def tree(depth: int, marker_dir: str, node: str = "r") -> None:
    """A binary tree of nested calls whose leaves sleep forever. Each leaf creates
    ``started-<node>`` once it runs; each node appends its name (its parent's name and a
    0 or 1) to the file ``finally`` from its finally block."""
    try:
        if depth == 0:
            (Path(marker_dir) / f"started-{node}").write_text("")
            await anyio.sleep(60)
            return
        async with anyio.create_task_group() as tg:
            tg.start_soon(tree, depth - 1, marker_dir, node + "0")
            tg.start_soon(tree, depth - 1, marker_dir, node + "1")
    finally:
        with open(Path(marker_dir) / "finally", "a") as f:
            f.write(node + "\n")


@wool.routine
async def read_text(path: str) -> str:
    return Path(path).read_text()


class UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no words for it")


@wool.routine
async def fail_unprintably() -> None:
    raise UnprintableError()


@wool.routine
async def wait_then_nest(marker: str, seconds: float) -> int:
    """Mark, sleep, then make a nested call: the worker may be draining by then."""
    Path(marker).write_text("started")
    await anyio.sleep(seconds)
    return await add(40, 2)


@wool.routine
async def conversation(n: int, marker: str) -> AsyncGenerator[object, object]:
    """Yields, takes sends and throws, and marks its finally."""
    try:
        for i in range(n):
            try:
                received = yield i
            except ValueError as exc:
                received = yield f"caught {exc}"
            if received == "stop":
                return
            if received == "explode":
                raise KeyError("exploded")
            if received is not None:
                yield f"got {received}"
    finally:
        with open(marker, "a") as f:
            f.write("finally;")


class Talker:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    @wool.routine
    async def talk(self, n: int, marker: str) -> AsyncGenerator[object, object]:
        try:
            for i in range(n):
                received = yield f"{self.prefix}{i}"
                if received is not None:
                    yield f"{self.prefix} got {received}"
        finally:
            with open(marker, "a") as f:
                f.write("finally;")


@wool.routine
async def hold(marker: str, seconds: float) -> int:
    """Write this worker's pid to ``marker``, then sleep."""
    Path(marker).write_text(str(os.getpid()))
    await anyio.sleep(seconds)
    return os.getpid()


@wool.routine
async def block(seconds: float, how: str) -> int:
    """Block the worker's event loop for ``seconds`` without awaiting: compute (``"cpu"``)
    or ``time.sleep`` (``"sleep"``); return the worker's pid."""
    if how == "sleep":
        time.sleep(seconds)  # noqa: ASYNC251 (blocking is the point)
    else:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pass
    return os.getpid()
