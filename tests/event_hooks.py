"""Imported by workers (``WorkerPool(imports=[...])``): their task event handlers."""

from __future__ import annotations

import wool

from .event_recorder import record


def explode(event: wool.TaskEvent, timestamp: int) -> None:
    raise RuntimeError(f"a broken handler, on {event.type}")


wool.TaskEvent.handler()(record)
wool.TaskEvent.handler("task-started", "task-iteration-started")(explode)
