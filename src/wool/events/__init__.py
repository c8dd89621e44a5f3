"""Task lifecycle events: :class:`TaskEvent` and its handlers."""

from __future__ import annotations

from wool.events._event import EventType, Outcome, TaskEvent, TaskEventHandler

__all__ = ["EventType", "Outcome", "TaskEvent", "TaskEventHandler"]
