"""Routines that fail in many ways, for tests/test_errors.py.

Importable, so workers load these routines (and the exception classes) by reference, and
the caller can check the exact type of what comes back.
"""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

import anyio
import anyio.lowlevel

import wool

# The source lines of some raises, checked in the formatted tracebacks.
RAISE_VALUE_LINE = 'raise ValueError(f"bad value: {value}")'
RAISE_LOCKED_LINE = 'raise LockedError("holds a lock")'


class InsufficientFunds(Exception):
    """A custom exception with keyword-only arguments and extra attributes."""

    def __init__(self, account: str, needed: int, *, currency: str = "EUR") -> None:
        super().__init__(f"account {account} needs {needed} {currency} more")
        self.account = account
        self.needed = needed
        self.currency = currency


class LockedError(Exception):
    """Cannot be pickled: it holds a lock."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


class BadReduce(Exception):
    """Pickles, but cannot be unpickled: its ``__reduce__`` drops an argument."""

    def __init__(self, first: str, second: str) -> None:
        super().__init__(first, second)
        self.first = first
        self.second = second

    def __str__(self) -> str:
        return f"{self.first}/{self.second}"

    def __reduce__(self):  # type: ignore[override]
        return (type(self), (self.first,))


@wool.routine
async def raise_value(value: str) -> None:
    raise ValueError(f"bad value: {value}")


@wool.routine
async def raise_key(key: str) -> None:
    raise KeyError(key)


@wool.routine
async def withdraw(account: str, amount: int) -> None:
    raise InsufficientFunds(account, amount, currency="CHF")


@wool.routine
async def raise_builtin(kind: str) -> None:
    """Raise a builtin exception whose fields are set by its C-level ``__init__``."""
    if kind == "decode":
        b"caf\xff".decode("utf-8")
    elif kind == "syntax":
        compile("x y", "<snippet>", "exec")
    elif kind == "exit":
        raise SystemExit(7)
    elif kind == "oserror":
        open("/nonexistent-wool-test-dir/file")
    elif kind == "subprocess":
        raise subprocess.CalledProcessError(3, ["tool", "--flag"], output=b"out", stderr=b"err")
    elif kind == "json":
        json.loads('{"a": ')
    raise AssertionError(f"no exception for {kind!r}")


@wool.routine
async def raise_with_cause() -> None:
    try:
        int("not a number")
    except ValueError as exc:
        raise RuntimeError("parsing failed") from exc


@wool.routine
async def raise_with_context() -> None:
    try:
        {}["missing"]
    except KeyError:
        raise LookupError("while handling a missing key")  # noqa: B904


@wool.routine
async def raise_from_none() -> None:
    try:
        {}["missing"]
    except KeyError:
        raise LookupError("context suppressed") from None


@wool.routine
async def raise_with_notes() -> None:
    exc = ValueError("annotated")
    exc.add_note("first note")
    exc.add_note("second note")
    raise exc


@wool.routine
async def raise_group() -> None:
    raise ExceptionGroup("two failures", [ValueError("v1"), KeyError("k1")])


@wool.routine
async def raise_nested_group() -> None:
    raise ExceptionGroup(
        "outer",
        [ValueError("top"), ExceptionGroup("inner", [KeyError("deep"), ValueError("deeper")])],
    )


async def _fail_value(message: str) -> None:
    raise ValueError(message)


async def _fail_key(message: str) -> None:
    await anyio.lowlevel.checkpoint()
    raise KeyError(message)


@wool.routine
async def task_group_failures() -> None:
    """Two children of a task group fail; neither can be cancelled before it raises."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(_shielded, _fail_value, "child value")
        tg.start_soon(_shielded, _fail_key, "child key")


async def _shielded(fn, *args) -> None:  # type: ignore[no-untyped-def]
    with anyio.CancelScope(shield=True):
        await fn(*args)


@wool.routine
async def raise_locked() -> None:
    raise LockedError("holds a lock")


@wool.routine
async def raise_bad_reduce() -> None:
    raise BadReduce("one", "two")


@wool.routine
async def raise_local_class() -> None:
    class DefinedInside(Exception):
        pass

    raise DefinedInside("from a class made at run time")


@wool.routine
async def returns_lock() -> threading.Lock:
    return threading.Lock()


@wool.routine
async def outer_calls_inner(value: str) -> None:
    """A routine that awaits a failing routine (sent to the same pool)."""
    await raise_value(value)


@wool.routine
async def outer_catches_and_wraps(value: str) -> None:
    try:
        await raise_value(value)
    except ValueError as exc:
        raise RuntimeError("outer wrapped it") from exc


@wool.routine
async def sleep_forever(started: str | None = None) -> None:
    """Sleep; first create the file ``started``, if given."""
    if started is not None:
        Path(started).write_text("")
    await anyio.sleep(3600)


@wool.routine
async def raise_from_one_that_cannot_travel() -> None:
    try:
        raise BadReduce("one", "two")
    except BadReduce as exc:
        raise RuntimeError("the part that can travel") from exc


@wool.routine
async def time_out_inside_fail_after() -> None:
    # Under trio < 0.31 the TimeoutError's context, trio.Cancelled, cannot be rebuilt.
    with anyio.fail_after(0.01):
        await anyio.sleep(10)
