"""Exceptions raised by routines, end to end: real workers, real gRPC, asyncio and trio.

A routine's exception must come back to the caller as if the call had been local: the same
type, message, attributes, cause, context, notes and group structure, with the worker's
frames in its traceback. What cannot come back as itself arrives as ``wool.TaskException``.
"""

from __future__ import annotations

import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

import wool

from . import error_routines as er
from .routines import add

pytestmark = pytest.mark.anyio

ROUTINES_FILE = "error_routines.py"


def _frame_names(exc: BaseException) -> list[str]:
    return [frame.name for frame in traceback.extract_tb(exc.__traceback__)]


def _shape(exc: BaseException) -> Any:
    """Types and messages of an exception and, for a group, of its members (in any order)."""
    if isinstance(exc, BaseExceptionGroup):
        members = sorted((_shape(e) for e in exc.exceptions), key=repr)
        return (type(exc).__name__, exc.message, members)
    return (type(exc).__name__, str(exc))


# ------------------------------------------------------------------------ type and message


async def test_builtin_exception_keeps_type_and_message() -> None:
    async with wool.WorkerPool(size=1):
        with pytest.raises(ValueError) as info:
            await er.raise_value("x")
    assert type(info.value) is ValueError
    assert info.value.args == ("bad value: x",)
    assert str(info.value) == "bad value: x"


async def test_key_error_keeps_its_args() -> None:
    async with wool.WorkerPool(size=1):
        with pytest.raises(KeyError) as info:
            await er.raise_key("the key")
    assert type(info.value) is KeyError
    assert info.value.args == ("the key",)


async def test_custom_exception_keeps_type_and_attributes() -> None:
    async with wool.WorkerPool(size=1):
        with pytest.raises(er.InsufficientFunds) as info:
            await er.withdraw("acct-7", 42)
    exc = info.value
    assert type(exc) is er.InsufficientFunds
    assert str(exc) == "account acct-7 needs 42 CHF more"
    assert (exc.account, exc.needed, exc.currency) == ("acct-7", 42, "CHF")


async def test_exception_of_a_class_made_at_run_time_comes_back_by_value() -> None:
    async with wool.WorkerPool(size=1):
        with pytest.raises(Exception) as info:
            await er.raise_local_class()
    assert not isinstance(info.value, wool.TaskException)
    assert type(info.value).__name__ == "DefinedInside"
    assert str(info.value) == "from a class made at run time"


async def test_system_exit_raised_by_a_routine_comes_back_and_the_worker_survives() -> None:
    async with wool.WorkerPool(size=1) as pool:
        pids = {w.pid for w in pool.workers}
        with pytest.raises(SystemExit):
            await er.raise_builtin("exit")
        assert await add(2, 3) == 5
        assert {w.pid for w in pool.workers} == pids


_FIELDS = (
    "args", "code", "errno", "strerror", "filename", "encoding", "object", "start", "end",
    "reason", "msg", "lineno", "offset", "text", "returncode", "cmd", "output", "stderr",
    "doc", "pos", "colno",
)  # fmt: skip


@pytest.mark.parametrize(
    "kind",
    [
        "exit",
        "decode",
        "syntax",
        "oserror",
        "subprocess",
        "json",
    ],
)
async def test_builtin_exception_keeps_its_fields(kind: str) -> None:
    """Fields of standard exceptions (exit code, errno, decode position...) survive."""

    def fields(exc: BaseException) -> dict[str, Any]:
        return {name: getattr(exc, name, None) for name in _FIELDS}

    with pytest.raises(BaseException) as local:
        await er.raise_builtin.__wrapped__(kind)
    async with wool.WorkerPool(size=1):
        with pytest.raises(BaseException) as remote:
            await er.raise_builtin(kind)
    assert type(remote.value) is type(local.value)
    assert str(remote.value) == str(local.value)
    assert fields(remote.value) == fields(local.value)


# ------------------------------------------------------------ cause, context, notes, traceback


async def test_cause_survives() -> None:
    async with wool.WorkerPool(size=1):
        with pytest.raises(RuntimeError, match="parsing failed") as info:
            await er.raise_with_cause()
    exc = info.value
    assert type(exc.__cause__) is ValueError
    assert "invalid literal for int()" in str(exc.__cause__)
    assert exc.__suppress_context__ is True
    text = "".join(traceback.format_exception(exc))
    assert "The above exception was the direct cause of the following exception" in text
    assert 'int("not a number")' in text


async def test_context_survives() -> None:
    async with wool.WorkerPool(size=1):
        with pytest.raises(LookupError, match="while handling a missing key") as info:
            await er.raise_with_context()
    exc = info.value
    assert exc.__cause__ is None
    assert type(exc.__context__) is KeyError
    assert exc.__context__.args == ("missing",)
    assert exc.__suppress_context__ is False
    text = "".join(traceback.format_exception(exc))
    assert "During handling of the above exception, another exception occurred" in text


async def test_suppressed_context_survives() -> None:
    async with wool.WorkerPool(size=1):
        with pytest.raises(LookupError, match="context suppressed") as info:
            await er.raise_from_none()
    exc = info.value
    assert exc.__cause__ is None
    assert exc.__suppress_context__ is True
    assert type(exc.__context__) is KeyError  # kept, as Python keeps it, but not shown
    text = "".join(traceback.format_exception(exc))
    assert "During handling" not in text
    assert "KeyError" not in text


async def test_remote_context_is_kept_when_the_caller_awaits_inside_except() -> None:
    """Awaiting a routine while handling an exception must not replace the routine's own
    context: locally, the callee's ``raise`` inside its ``except KeyError`` sets the context
    to the KeyError, whatever the caller is handling."""

    async def await_while_handling(fn: Callable[[], Awaitable[None]]) -> BaseException:
        try:
            raise ZeroDivisionError("the caller's own error")
        except ZeroDivisionError:
            with pytest.raises(LookupError) as info:
                await fn()
        return info.value

    local = await await_while_handling(er.raise_with_context.__wrapped__)
    assert type(local.__context__) is KeyError
    async with wool.WorkerPool(size=1):
        remote = await await_while_handling(er.raise_with_context)
    assert type(remote.__context__) is KeyError, (
        f"the remote context was replaced by {remote.__context__!r}"
    )


async def test_notes_survive() -> None:
    async with wool.WorkerPool(size=1):
        with pytest.raises(ValueError, match="annotated") as info:
            await er.raise_with_notes()
    notes = getattr(info.value, "__notes__", [])
    assert [n for n in notes if n in ("first note", "second note")] == [
        "first note",
        "second note",
    ]
    text = "".join(traceback.format_exception(info.value))
    assert text.index("first note") < text.index("second note")


async def test_traceback_has_caller_frames_then_worker_frames() -> None:
    async with wool.WorkerPool(size=1):
        with pytest.raises(ValueError) as info:
            await er.raise_value("tb")
    text = "".join(traceback.format_exception(info.value))
    assert ROUTINES_FILE in text
    assert ", in raise_value" in text
    assert er.RAISE_VALUE_LINE in text
    # The caller's frames come first, the worker's last, as for a local call.
    me = "test_traceback_has_caller_frames_then_worker_frames"
    assert text.index(f", in {me}") < text.index(", in raise_value")
    names = _frame_names(info.value)
    assert names[0] == me
    assert names[-1] == "raise_value"


# ------------------------------------------------------------------------ exception groups


async def test_exception_group_keeps_its_structure() -> None:
    async with wool.WorkerPool(size=1):
        with pytest.raises(ExceptionGroup) as info:
            await er.raise_nested_group()
    group = info.value
    assert type(group) is ExceptionGroup
    assert group.message == "outer"
    top, inner = group.exceptions
    assert (type(top), str(top)) == (ValueError, "top")
    assert type(inner) is ExceptionGroup and inner.message == "inner"
    assert [(type(e), e.args) for e in inner.exceptions] == [
        (KeyError, ("deep",)),
        (ValueError, ("deeper",)),
    ]
    # Its split works as on a local group.
    values, rest = group.split(ValueError)
    assert values is not None and rest is not None
    assert _shape(values) == (
        "ExceptionGroup",
        "outer",
        [("ExceptionGroup", "inner", [("ValueError", "deeper")]), ("ValueError", "top")],
    )
    assert _shape(rest) == (
        "ExceptionGroup",
        "outer",
        [("ExceptionGroup", "inner", [("KeyError", "'deep'")])],
    )


async def test_except_star_splits_a_remote_group() -> None:
    caught: dict[str, BaseExceptionGroup[Any]] = {}
    async with wool.WorkerPool(size=1):
        try:
            await er.raise_group()
        except* ValueError as group:
            caught["value"] = group
        except* KeyError as group:
            caught["key"] = group
    assert set(caught) == {"value", "key"}
    assert [(type(e), str(e)) for e in caught["value"].exceptions] == [(ValueError, "v1")]
    assert [(type(e), e.args) for e in caught["key"].exceptions] == [(KeyError, ("k1",))]
    assert caught["value"].message == caught["key"].message == "two failures"


async def test_task_group_failures_inside_a_routine_come_back_as_a_group() -> None:
    caught: dict[str, list[BaseException]] = {"value": [], "key": []}
    async with wool.WorkerPool(size=1):
        try:
            await er.task_group_failures()
        except* ValueError as group:
            caught["value"].extend(group.exceptions)
        except* KeyError as group:
            caught["key"].extend(group.exceptions)
    assert [(type(e), str(e)) for e in caught["value"]] == [(ValueError, "child value")]
    assert [(type(e), e.args) for e in caught["key"]] == [(KeyError, ("child key",))]
    # Each leaf keeps the worker frame it was raised in.
    assert "_fail_value" in _frame_names(caught["value"][0])
    assert "_fail_key" in _frame_names(caught["key"][0])


async def test_task_group_inside_a_routine_has_the_local_shape() -> None:
    with pytest.raises(BaseExceptionGroup) as local:
        await er.task_group_failures.__wrapped__()
    async with wool.WorkerPool(size=1):
        with pytest.raises(BaseExceptionGroup) as remote:
            await er.task_group_failures()
    assert _shape(remote.value) == _shape(local.value)


async def _shielded(fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
    with anyio.CancelScope(shield=True):
        await fn(*args)


async def _run_failing_calls(remote: bool) -> BaseException:
    """Four calls in one caller-side task group; all of them run to completion."""

    def pick(routine: Any) -> Callable[..., Awaitable[Any]]:
        return routine if remote else routine.__wrapped__

    with pytest.raises(BaseExceptionGroup) as info:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_shielded, pick(er.raise_value), "a")
            tg.start_soon(_shielded, pick(er.raise_key), "b")
            tg.start_soon(_shielded, pick(er.withdraw), "acct", 5)
            tg.start_soon(_shielded, pick(er.raise_group))
            tg.start_soon(_shielded, pick(add), 1, 2)
    return info.value


async def test_failures_in_a_caller_task_group_have_the_local_shape() -> None:
    local = await _run_failing_calls(remote=False)
    async with wool.WorkerPool(size=2):
        remote = await _run_failing_calls(remote=True)
    assert _shape(remote) == _shape(local)
    assert len(remote.exceptions) == 4


async def test_one_failure_cancels_remote_siblings_as_it_does_local_ones(
    tmp_path: Path,
) -> None:
    async def run(remote: bool) -> BaseException:
        fail = er.raise_value if remote else er.raise_value.__wrapped__
        sleep = er.sleep_forever if remote else er.sleep_forever.__wrapped__
        started = [tmp_path / f"{remote}-{i}" for i in range(2)]
        with anyio.fail_after(30), pytest.raises(BaseExceptionGroup) as info:
            async with anyio.create_task_group() as tg:
                for path in started:
                    tg.start_soon(sleep, str(path))
                while not all(path.exists() for path in started):  # running (on workers)
                    await anyio.sleep(0.01)
                tg.start_soon(fail, "only me")
        return info.value

    local = await run(remote=False)
    async with wool.WorkerPool(size=2):
        remote = await run(remote=True)
    assert _shape(remote) == _shape(local)
    assert [type(e) for e in remote.exceptions] == [ValueError]


# ---------------------------------------------------------- what cannot come back as itself


async def test_unpicklable_exception_arrives_as_task_exception() -> None:
    async with wool.WorkerPool(size=1):
        with pytest.raises(wool.TaskException) as info:
            await er.raise_locked()
        assert await add(1, 1) == 2  # the pool keeps serving
    exc = info.value
    assert isinstance(exc, wool.WoolError)
    assert "LockedError" in exc.type_name
    assert exc.message == "holds a lock"
    assert ROUTINES_FILE in exc.remote_traceback
    assert ", in raise_locked" in exc.remote_traceback
    assert er.RAISE_LOCKED_LINE in exc.remote_traceback
    assert "LockedError: holds a lock" in str(exc)


async def test_exception_that_cannot_be_unpickled_arrives_as_task_exception() -> None:
    async with wool.WorkerPool(size=1):
        with pytest.raises(wool.TaskException) as info:
            await er.raise_bad_reduce()
    exc = info.value
    assert "BadReduce" in exc.type_name
    assert exc.message == "one/two"
    assert ", in raise_bad_reduce" in exc.remote_traceback


async def test_a_link_of_the_chain_that_cannot_travel_costs_only_that_link() -> None:
    async with wool.WorkerPool(size=1):
        with pytest.raises(RuntimeError, match="the part that can travel") as info:
            await er.raise_from_one_that_cannot_travel()
    cause = info.value.__cause__
    assert isinstance(cause, wool.TaskException), f"the cause came back as {cause!r}"
    assert cause.type_name.endswith("BadReduce")
    assert cause.message == "one/two"
    assert info.value.__suppress_context__


async def test_a_deadline_inside_a_routine_comes_back_as_timeout_error() -> None:
    async with wool.WorkerPool(size=1):
        with pytest.raises(TimeoutError):
            await er.time_out_inside_fail_after()


async def test_unpicklable_return_value_is_a_serialization_error_and_the_pool_goes_on() -> None:
    async with wool.WorkerPool(size=1):
        with pytest.raises(wool.SerializationError, match="returns_lock") as info:
            await er.returns_lock()
        assert isinstance(info.value, TypeError)
        assert "lock" in str(info.value).lower()
        assert await add(20, 22) == 42
        with pytest.raises(wool.SerializationError, match="returns_lock"):
            await er.returns_lock()
        assert await add(1, 2) == 3


# ------------------------------------------------------------------------ nested routines


async def test_exception_from_a_nested_routine_reaches_the_top_caller() -> None:
    async with wool.WorkerPool(size=2):
        with pytest.raises(ValueError) as info:
            await er.outer_calls_inner("deep")
    exc = info.value
    assert type(exc) is ValueError
    assert str(exc) == "bad value: deep"
    names = _frame_names(exc)
    assert "outer_calls_inner" in names
    assert names[-1] == "raise_value"
    assert names.index("outer_calls_inner") < names.index("raise_value")


async def test_nested_routine_exception_as_cause() -> None:
    async with wool.WorkerPool(size=2):
        with pytest.raises(RuntimeError, match="outer wrapped it") as info:
            await er.outer_catches_and_wraps("inner")
    cause = info.value.__cause__
    assert type(cause) is ValueError
    assert str(cause) == "bad value: inner"
    assert _frame_names(cause)[-1] == "raise_value"


async def test_unpicklable_exception_in_a_nested_routine() -> None:
    @wool.routine
    async def outer() -> None:
        await er.raise_locked()

    async with wool.WorkerPool(size=2):
        with pytest.raises(wool.TaskException) as info:
            await outer()
    assert "LockedError" in info.value.type_name
    assert info.value.message == "holds a lock"
    assert ", in raise_locked" in info.value.remote_traceback


# ------------------------------------------------------------------------ wool's own errors


@pytest.mark.parametrize(
    "cls",
    [
        wool.NoPoolError,
        wool.SerializationError,
        wool.WorkerLost,
        wool.NoWorkersAvailable,
        wool.TaskException,
        wool.WorkerStartError,
        wool.ProtocolError,
    ],
)
def test_wool_errors_derive_from_wool_error(cls: type[Exception]) -> None:
    assert issubclass(cls, wool.WoolError)
    assert issubclass(wool.WoolError, Exception)


def test_serialization_error_is_a_type_error_and_no_pool_error_a_runtime_error() -> None:
    assert issubclass(wool.SerializationError, TypeError)
    assert issubclass(wool.NoPoolError, RuntimeError)
