"""Routines: async functions that run on a worker pool."""

from __future__ import annotations

from wool.routine._context import (
    Dispatcher,
    call_depth,
    current_dispatcher,
    dispatcher_var,
    set_process_dispatcher,
)
from wool.routine._routine import Routine, routine

__all__ = [
    "Dispatcher",
    "Routine",
    "call_depth",
    "current_dispatcher",
    "dispatcher_var",
    "routine",
    "set_process_dispatcher",
]
