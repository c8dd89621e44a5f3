"""The trio host backend."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

__all__ = ["BACKEND"]


class _Trio:
    name = "trio"

    def waker(self) -> Callable[[Callable[[], None]], None]:
        return trio.lowlevel.current_trio_token().run_sync_soon

    def run(self, main: Callable[[], Awaitable[None]]) -> None:
        trio.run(main)


BACKEND = _Trio()
