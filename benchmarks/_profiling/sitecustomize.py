"""Loaded by every Python process started with this directory on ``PYTHONPATH`` (here: the
worker that ``benchmarks/profile_call.py`` spawns). With ``WOOL_PROFILE_DIR`` set, it
profiles the process's main thread and wool's transport loop thread with cProfile between
SIGUSR1 (start) and SIGUSR2 (stop, and write ``<pid>-main.prof`` and
``<pid>-transport.prof`` there)."""

from __future__ import annotations

import os

if os.environ.get("WOOL_PROFILE_DIR"):
    import signal

    import profiling

    def _start(signum: int, frame: object) -> None:
        profiling.start()

    def _stop(signum: int, frame: object) -> None:
        profiling.stop(os.environ["WOOL_PROFILE_DIR"])

    profiling.install()
    signal.signal(signal.SIGUSR1, _start)
    signal.signal(signal.SIGUSR2, _stop)
