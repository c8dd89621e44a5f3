"""Routines for the load-balancing tests: importable, so workers load them by reference."""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator
from pathlib import Path

import anyio

import wool


@wool.routine
async def gate(started: str, release: str) -> int:
    """Write this worker's pid to ``started``, then hold the worker until ``release`` exists."""
    Path(started).write_text(str(os.getpid()))
    while not os.path.exists(release):
        await anyio.sleep(0.01)
    return os.getpid()


@wool.routine
async def pid() -> int:
    return os.getpid()


@wool.routine(tags={"first"})
async def tagged_pid() -> int:
    return os.getpid()


@wool.routine
async def second_pid() -> int:
    return os.getpid()


@wool.routine
async def hints_on_worker() -> dict[str, str]:
    """The load-balancing hints in effect where the routine runs (none: they stay in the caller)."""
    from wool.loadbalancer._hint import current_hints  # pyright: ignore[reportPrivateUsage]

    return dict(current_hints())


@wool.routine
async def nested_hints_on_worker() -> dict[str, str]:
    """The hints a nested call sees when its parent routine gave some on the worker."""
    with wool.hint(key="inner"):
        return await hints_on_worker()


@wool.routine
async def pid_stream(count: int) -> AsyncGenerator[int, None]:
    for _ in range(count):
        yield os.getpid()
