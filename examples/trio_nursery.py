"""wool under trio: a pool scoped inside a nursery, concurrent calls, a remote exception.

    python examples/trio_nursery.py

The routines below use trio directly: the pool's workers run the backend of the program
that opens it (trio here), so routine bodies can use trio's API.
"""

import os
import traceback

import trio

import wool


@wool.routine
async def square(x: int) -> tuple[int, int]:
    await trio.sleep(0.1)
    return x * x, os.getpid()


@wool.routine
async def parse_port(text: str) -> int:
    port = int(text)  # raises ValueError on the worker for "http"
    if not 0 < port < 65536:
        raise ValueError(f"port out of range: {port}")
    return port


@wool.routine
async def slow() -> None:
    await trio.sleep(60)


async def main() -> None:
    async with wool.WorkerPool(size=2, backend="trio"):
        # Concurrent calls: each nursery task awaits one routine; the nursery waits for all.
        results: dict[int, tuple[int, int]] = {}

        async def run(x: int) -> None:
            results[x] = await square(x)

        async with trio.open_nursery() as nursery:
            for x in range(6):
                nursery.start_soon(run, x)
        for x, (value, pid) in sorted(results.items()):
            print(f"square({x}) = {value:2d}  (worker pid {pid})")

        # A routine's exception comes back as itself, with the worker's frames in its traceback.
        try:
            await parse_port("http")
        except ValueError as exc:
            print(f"\ncaught {type(exc).__name__}: {exc}")
            print("its traceback, including the frames that ran on the worker:")
            print("".join(traceback.format_exception(exc)), end="")

        # The caller's deadline travels with the call: the routine is cancelled on the worker.
        with trio.move_on_after(0.5) as scope:
            await slow()
        print(f"\nslow() cancelled by the caller's deadline: {scope.cancelled_caught}")
    # Leaving the pool's block stopped its workers.


if __name__ == "__main__":
    trio.run(main)
