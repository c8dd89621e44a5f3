"""wool.ContextVar: values travel with calls, both ways, with real workers on both backends."""

from __future__ import annotations

import contextvars
import os
import threading

import anyio
import pytest

import wool

from .context_routines import (
    chain,
    echo_later,
    plain,
    read_plain,
    request_id,
    set_and_fail,
    set_and_return_bytes,
    set_at_bottom,
    set_in_child_task,
    set_unpicklable,
    stream_ids,
    tenant,
)

pytestmark = pytest.mark.anyio


# ------------------------------------------------------------------ local behaviour


def test_get_set_reset_like_the_stdlib() -> None:
    def body() -> None:
        assert request_id.get() == "none"
        assert request_id.get("given") == "given"
        with pytest.raises(LookupError):
            tenant.get()
        first = tenant.set("a")
        assert first.old_value is wool.Token.MISSING
        second = tenant.set("b")
        other = request_id.set("r")
        tenant.reset(second)
        assert (tenant.get(), request_id.get()) == ("a", "r")  # only this variable moves
        tenant.reset(first)
        assert tenant.get("gone") == "gone"
        with pytest.raises(RuntimeError):
            tenant.reset(first)
        with pytest.raises(ValueError):
            tenant.reset(other)

    contextvars.copy_context().run(body)


def test_values_are_per_context() -> None:
    def body(value: str) -> str:
        request_id.set(value)
        return request_id.get()

    assert contextvars.copy_context().run(body, "x") == "x"
    assert request_id.get() == "none"


def test_a_name_is_taken_once() -> None:
    with pytest.raises(ValueError, match=r"tests\.request_id"):
        wool.ContextVar("tests.request_id")


def test_a_module_may_declare_its_variable_again() -> None:
    code = "import wool\nvar = wool.ContextVar('tests.redeclared')\n"
    first: dict[str, object] = {"__name__": "tests.somewhere"}
    again: dict[str, object] = {"__name__": "tests.somewhere"}
    exec(code, first)
    exec(code, again)  # a reload
    with pytest.raises(ValueError, match=r"tests\.somewhere"):
        exec(code, {"__name__": "tests.elsewhere"})


async def test_a_variable_unpickled_first_gives_way_to_its_module() -> None:
    @wool.routine
    async def by_value() -> str:
        # Travels by value with the variable: the worker makes a stand-in for it...
        return tenant.get("no tenant")

    async with wool.WorkerPool(size=1):
        assert await by_value() == "no tenant"
        tenant.set("t")
        # ...and then imports the module that declares it, for this routine.
        assert [t for _, _, t in await chain(1)] == ["t"]


# ------------------------------------------------------------------ across the wire


async def test_value_reaches_depth_three_across_processes() -> None:
    async with wool.WorkerPool(size=3) as pool:
        request_id.set("req-1")
        tenant.set("acme")
        levels = await chain(3)
        pids = {w.pid for w in pool.workers}
    assert [(rid, t) for _, rid, t in levels] == [("req-1", "acme")] * 3
    assert all(pid in pids and pid != os.getpid() for pid, _, _ in levels)


async def test_without_values_a_routine_sees_defaults() -> None:
    async with wool.WorkerPool(size=1):
        assert [(rid, t) for _, rid, t in await chain(2)] == [("none", "-")] * 2


async def test_value_set_in_routine_is_seen_by_the_caller() -> None:
    async with wool.WorkerPool(size=2):
        request_id.set("before")
        # Set three calls down; each awaiting level, and the caller, sees it afterwards.
        assert await set_at_bottom(3, "from-the-bottom") == "from-the-bottom"
        assert request_id.get() == "from-the-bottom"


async def test_values_come_back_with_a_chunked_result() -> None:
    async with wool.WorkerPool(size=1):
        # Larger than one message (4 MiB by default): the values ride on the last one.
        assert len(await set_and_return_bytes(6 * 1024 * 1024, "with-chunks")) == 6 * 1024 * 1024
        assert request_id.get() == "with-chunks"


async def test_value_set_before_a_failure_is_seen_by_the_caller() -> None:
    async with wool.WorkerPool(size=1):
        with pytest.raises(ValueError, match="failed after setting"):
            await set_and_fail("set-then-failed")
        assert request_id.get() == "set-then-failed"


async def test_tasks_started_in_a_routine_copy_its_context() -> None:
    async with wool.WorkerPool(size=1):
        request_id.set("parent")
        assert await set_in_child_task("child") == "parent"
        assert request_id.get() == "parent"


async def test_concurrent_calls_never_see_each_others_values() -> None:
    seen: dict[str, tuple[str, str]] = {}

    async def one(name: str, delay: float) -> None:
        request_id.set(name)
        got = await echo_later(delay, f"{name}-after")
        seen[name] = (got, request_id.get())

    async with wool.WorkerPool(size=1):
        request_id.set("outer")
        async with anyio.create_task_group() as tg:
            # On one worker, interleaved: the first still runs when the second arrives.
            tg.start_soon(one, "first", 0.3)
            tg.start_soon(one, "second", 0.0)
        assert request_id.get() == "outer"  # tasks got copies; nothing came back here
    assert seen == {"first": ("first", "first-after"), "second": ("second", "second-after")}


async def test_unpicklable_value_names_the_variable() -> None:
    async with wool.WorkerPool(size=1):
        request_id.set(threading.Lock())  # type: ignore[arg-type]
        with pytest.raises(wool.SerializationError, match=r"tests\.request_id"):
            await chain(1)
        request_id.set("x" * 40_000)
        with pytest.raises(wool.SerializationError, match=r"more than the 32768"):
            await chain(1)
        request_id.set("fine")
        with pytest.raises(wool.SerializationError, match=r"tests\.request_id"):
            await set_unpicklable()
        assert request_id.get() == "fine"  # the failed call changed nothing here


async def test_plain_contextvars_do_not_travel() -> None:
    async with wool.WorkerPool(size=1):
        plain.set("caller")
        assert await read_plain() == "unset"


async def test_generator_sees_the_callers_values_at_its_start() -> None:
    async with wool.WorkerPool(size=1):
        request_id.set("gen")
        items = [item async for item in stream_ids(3)]
        assert items == ["gen:0", "gen:1", "gen:2"]
        assert request_id.get() == "gen"  # a generator's changes stay on the worker
