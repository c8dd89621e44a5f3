"""Routines for the tests of the Calls stream (tests/test_mux.py)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from pathlib import Path

import anyio

import wool


@wool.routine
async def hold_padded(marker: str, seconds: float, padding: bytes) -> int:
    """Write ``started`` to ``marker``, sleep, then append `` finally`` from ``finally``."""
    Path(marker).write_text("started")
    try:
        await anyio.sleep(seconds)
    finally:
        with open(marker, "a") as f:
            f.write(" finally")
    return len(padding)


@wool.routine
async def slow_to_close(marker: str) -> AsyncGenerator[int, None]:
    """Yield once; when closed, take a minute in ``finally`` unless cancelled (then write
    ``cut`` to ``marker``)."""
    try:
        yield 1
        await anyio.sleep(60)
    finally:
        try:
            await anyio.sleep(60)
        except anyio.get_cancelled_exc_class():
            Path(marker).write_text("cut")
            raise


@wool.routine
async def make_bytes(size: int) -> bytes:
    """``size`` bytes made on the worker: a small call with a large answer."""
    return b"\x01" * size


@wool.routine
async def closed_streams_remembered() -> list[int]:
    """How many closed streams each server side h2 connection of this worker remembers."""
    import gc

    from h2.connection import H2Connection

    return sorted(
        len(c._closed_streams)  # pyright: ignore[reportPrivateUsage]
        for c in gc.get_objects()
        if isinstance(c, H2Connection) and not c.config.client_side
    )
