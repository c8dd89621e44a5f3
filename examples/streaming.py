"""Streaming from a worker: read-ahead iteration, an exact conversation, a large payload.

Run it with ``python examples/streaming.py``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

import anyio

import wool


@wool.routine
async def squares(n: int) -> AsyncGenerator[int, None]:
    """Ignores what is sent to it: the worker runs it ahead of the caller (prefetch)."""
    for i in range(n):
        yield i * i


@wool.routine
async def running_total() -> AsyncGenerator[int, int]:
    """Uses what is sent to it: stepped exactly, never ahead of the sends."""
    total = 0
    while True:
        total += yield total


@wool.routine
async def checksum(data: bytes) -> int:
    return sum(data[::4093])


async def main() -> None:
    async with wool.WorkerPool(size=2):
        total = 0
        async for square in squares(100_000):
            total += square
        print("sum of squares:", total)

        totals = running_total()
        await anext(totals)
        for step in (5, 10, 1):
            print("running total:", await totals.asend(step))
        await totals.aclose()

        payload = bytes(range(256)) * (64 * 1024 * 1024 // 256)  # 64 MiB, sent in chunks
        print("checksum:", await checksum(payload))

    async with wool.WorkerPool(size=1, max_payload_size=1024 * 1024):
        try:
            await checksum(b"x" * (2 * 1024 * 1024))
        except wool.SerializationError as exc:
            print("refused:", exc)


if __name__ == "__main__":
    anyio.run(main)
