"""The asyncio host backend."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable

import sniffio

__all__ = ["BACKEND", "new_event_loop"]


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new asyncio loop: uvloop's where it is installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class _Asyncio:
    name = "asyncio"

    def waker(self) -> Callable[[Callable[[], None]], None]:
        loop = asyncio.get_running_loop()
        # A context of the host's own, not whichever the posting thread is in; it tells
        # sniffio (hence anyio) "asyncio", which it cannot guess outside a task.
        host = contextvars.Context()
        host.run(sniffio.current_async_library_cvar.set, "asyncio")

        def wake(drain: Callable[[], None]) -> None:
            loop.call_soon_threadsafe(drain, context=host.copy())

        return wake

    def run(self, main: Callable[[], Awaitable[None]]) -> None:
        async def run_main() -> None:
            await main()

        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(run_main())


BACKEND = _Asyncio()
