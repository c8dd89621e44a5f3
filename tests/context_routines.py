"""Routines and variables for the wool.ContextVar tests: importable, so workers load them."""

from __future__ import annotations

import contextvars
import os
import threading
from collections.abc import AsyncGenerator

import anyio

import wool

request_id: wool.ContextVar[str] = wool.ContextVar("tests.request_id", default="none")
tenant: wool.ContextVar[str] = wool.ContextVar("tests.tenant")
plain: contextvars.ContextVar[str] = contextvars.ContextVar("tests.plain", default="unset")


@wool.routine
async def chain(levels: int) -> list[tuple[int, str, str]]:
    """(pid, request id, tenant) at each level of a chain of ``levels`` nested calls."""
    here = (os.getpid(), request_id.get(), tenant.get("-"))
    if levels <= 1:
        return [here]
    return [here, *await chain(levels - 1)]


@wool.routine
async def set_at_bottom(levels: int, value: str) -> str:
    """Nest ``levels`` calls deep, set the request id at the bottom; what this level sees."""
    if levels <= 1:
        request_id.set(value)
    else:
        await set_at_bottom(levels - 1, value)
    return request_id.get()


@wool.routine
async def set_and_fail(value: str) -> None:
    request_id.set(value)
    raise ValueError("failed after setting")


@wool.routine
async def set_in_child_task(value: str) -> str:
    """A task started inside the routine sets the variable: the routine must not see it."""

    async def child() -> None:
        request_id.set(value)

    async with anyio.create_task_group() as tg:
        tg.start_soon(child)
    return request_id.get()


@wool.routine
async def echo_later(seconds: float, new: str) -> str:
    """The caller's request id after a pause; then set ``new``."""
    seen = request_id.get()
    await anyio.sleep(seconds)
    request_id.set(new)
    return seen


@wool.routine
async def set_unpicklable() -> None:
    request_id.set(threading.Lock())  # type: ignore[arg-type]


@wool.routine
async def read_plain() -> str:
    return plain.get()


@wool.routine
async def stream_ids(count: int) -> AsyncGenerator[str, None]:
    for i in range(count):
        yield f"{request_id.get()}:{i}"
    request_id.set("set-by-generator")


@wool.routine
async def set_and_return_bytes(size: int, value: str) -> bytes:
    request_id.set(value)
    return b"x" * size
