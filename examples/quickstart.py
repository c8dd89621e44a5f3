"""Quick start: two routines run on a pool of worker processes.

    python examples/quickstart.py          # under asyncio
    python examples/quickstart.py --trio   # the same code under trio

``fib`` calls itself: each nested call is sent to a worker of the same pool, so the
recursion fans out across the workers while every call stays inside its caller's task group.
"""

import sys

import anyio

import wool


@wool.routine
async def add(x: int, y: int) -> int:
    return x + y


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


async def main() -> None:
    async with wool.WorkerPool(size=2):
        print("add(1, 2) =", await add(1, 2))  # 3
        print("fib(12) =", await fib(12))  # 144


if __name__ == "__main__":
    anyio.run(main, backend="trio" if "--trio" in sys.argv[1:] else "asyncio")
