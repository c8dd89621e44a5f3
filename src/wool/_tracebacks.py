"""Tracebacks of remote exceptions without wool's own frames.

A routine's exception reaches its caller with the caller's frames, then the routine's; the
frames of wool's dispatch code on either side say nothing about the user's program. Set
``WOOL_FULL_TRACEBACKS=1`` (in the caller's and the workers' environment) to keep them when
debugging wool itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType
from typing import NoReturn

__all__ = ["hide_dispatch_frames", "raise_remote", "without_wool_frames"]

_PACKAGE = str(Path(__file__).resolve().parent) + os.sep


def _full() -> bool:
    return os.environ.get("WOOL_FULL_TRACEBACKS", "") not in ("", "0")


def raise_remote(exc: BaseException) -> NoReturn:
    """Raise an exception from a worker as the routine raised it.

    A ``raise`` sets ``__context__`` to whatever the caller is handling; the routine's own
    context is the one that belongs there.
    """
    context = exc.__context__
    try:
        raise exc
    finally:
        exc.__context__ = context


def hide_dispatch_frames(exc: BaseException) -> None:
    """Drop the caller's dispatch frames from a routine's exception raised by
    :func:`raise_remote`, so that its traceback reads the caller's frames, then the
    routine's. Exceptions wool raised itself keep every frame."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code is _RAISE_REMOTE and not _full():
            exc.__traceback__ = tb.tb_next
            return
        tb = tb.tb_next


_RAISE_REMOTE = raise_remote.__code__


def without_wool_frames(exc: BaseException) -> None:
    """Drop wool's frames from the tracebacks of ``exc`` and of the exceptions chained to
    it, before a worker sends it to the caller."""
    if _full():
        return
    seen: set[int] = set()
    pending = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        current.__traceback__ = _user_frames(current.__traceback__)
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)  # pyright: ignore[reportUnknownMemberType]


def _user_frames(tb: TracebackType | None) -> TracebackType | None:
    kept: list[TracebackType] = []
    while tb is not None:
        if not tb.tb_frame.f_code.co_filename.startswith(_PACKAGE):
            kept.append(tb)
        tb = tb.tb_next
    head: TracebackType | None = None
    for entry in reversed(kept):
        head = TracebackType(head, entry.tb_frame, entry.tb_lasti, entry.tb_lineno)
    return head
