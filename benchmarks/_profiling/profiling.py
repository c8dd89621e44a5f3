"""cProfile for a process's main thread and wool's transport loop thread, started and
stopped together (a cProfile profiler sees only the thread that enabled it: the transport
thread's is enabled and disabled by callbacks run on its own loop)."""

from __future__ import annotations

import cProfile
import os
import threading
import time
from typing import Any

__all__ = ["install", "start", "stop"]

# CPU time of the thread, not wall time: a thread waiting in epoll, or taken off its core
# (as the sender of a loopback write often is, for the receiver), is not at work.
_main = cProfile.Profile(time.thread_time)
_transport = cProfile.Profile(time.thread_time)


def install() -> None:
    """Make the transport loop thread profilable (before wool starts it)."""
    from wool.transport import _bridge

    original = _bridge.LoopThread._run

    def run(self: Any) -> None:
        _loops.append(self.loop)
        original(self)

    _bridge.LoopThread._run = run  # type: ignore[method-assign]


_loops: list[Any] = []


def start() -> None:
    """Start both profilers (call from the main thread)."""
    _loops[-1].call_soon_threadsafe(_transport.enable)
    _main.enable()


def stop(directory: str) -> None:
    """Stop both, and write their statistics to ``directory`` (then ``<pid>-done``)."""
    _main.disable()
    done = threading.Event()

    def disable() -> None:
        _transport.disable()
        done.set()

    _loops[-1].call_soon_threadsafe(disable)
    done.wait(10)
    pid = os.getpid()
    _main.dump_stats(os.path.join(directory, f"{pid}-main.prof"))
    _transport.dump_stats(os.path.join(directory, f"{pid}-transport.prof"))
    with open(os.path.join(directory, f"{pid}-done"), "w"):
        pass
