"""The core runtime end to end: real worker processes, real gRPC, asyncio and trio."""

from __future__ import annotations

import inspect
import os
import threading

import anyio
import pytest

import wool

from .routines import Calculator, add, fib, identity, whereami

pytestmark = pytest.mark.anyio


async def test_routine_result_comes_back() -> None:
    async with wool.WorkerPool(size=2):
        assert await add(1, 2) == 3
        assert await identity({"a": [1, 2.5, None]}) == {"a": [1, 2.5, None]}


async def test_routine_runs_in_a_worker_process() -> None:
    async with wool.WorkerPool(size=2) as pool:
        pids = {(await whereami())[0] for _ in range(6)}
        assert os.getpid() not in pids
        assert pids == {w.pid for w in pool.workers}


async def test_default_pool_has_one_worker_per_cpu() -> None:
    async with wool.WorkerPool() as pool:
        assert len(pool.workers) == os.cpu_count()


async def test_workers_use_the_callers_backend_by_default(anyio_backend: str) -> None:
    async with wool.WorkerPool(size=1):
        assert (await whereami())[1] == anyio_backend


@pytest.mark.parametrize("worker_backend", ["asyncio", "trio"])
async def test_backend_can_be_chosen(worker_backend: str) -> None:
    async with wool.WorkerPool(size=1, backend=worker_backend) as pool:
        assert (await whereami())[1] == worker_backend
        assert {w.backend for w in pool.workers} == {worker_backend}


async def test_trio_routine_runs_on_trio_worker() -> None:
    @wool.routine
    async def trio_only() -> str:
        import trio

        await trio.lowlevel.checkpoint()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep, 0)
        return type(trio.lowlevel.current_task()).__name__

    async with wool.WorkerPool(size=1, backend="trio"):
        assert await trio_only() == "Task"


async def test_tags_are_advertised_by_workers() -> None:
    async with wool.WorkerPool("gpu", "fast", size=2) as pool:
        assert [w.tags for w in pool.workers] == [frozenset({"gpu", "fast"})] * 2
        assert await add(2, 2) == 4


async def test_concurrent_calls_spread_over_workers() -> None:
    async with wool.WorkerPool(size=2) as pool:
        results: list[int] = []

        async def one(i: int) -> None:
            results.append(await add(i, i))

        async with anyio.create_task_group() as tg:
            for i in range(300):
                tg.start_soon(one, i)
        assert sorted(results) == [2 * i for i in range(300)]
        pids = {(await whereami())[0] for _ in range(4)}
        assert len(pids) == len(pool.workers) == 2


async def test_recursive_fib_with_task_group() -> None:
    async with wool.WorkerPool(size=2):
        assert await fib(12) == 144


async def test_methods() -> None:
    calc = Calculator(10)
    async with wool.WorkerPool(size=1):
        assert await calc.plus(5) == 15
        assert await Calculator.name_of() == "Calculator"
        assert await calc.name_of() == "Calculator"
        assert await Calculator.name_of_too() == "Calculator"
        assert await Calculator.double(4) == 8
        assert await calc.double(4) == 8
        assert await Calculator.triple(4) == 12


async def test_routine_defined_in_a_function_travels_by_value() -> None:
    offset = 100

    @wool.routine
    async def shifted(x: int) -> int:
        return x + offset

    async with wool.WorkerPool(size=1):
        assert await shifted(1) == 101
        assert await shifted(2) == 102


def test_routine_keeps_name_doc_and_signature() -> None:
    assert add.__name__ == "add"
    assert add.__qualname__ == "add"
    assert add.__doc__ == "Add two numbers on a worker."
    assert str(inspect.signature(add)) == "(x: 'int', y: 'int') -> 'int'"
    assert isinstance(add, wool.Routine)


async def test_calling_outside_a_pool_raises_no_pool_error() -> None:
    with pytest.raises(wool.NoPoolError, match=r"async with wool.WorkerPool\(\)"):
        await add(1, 2)


async def test_unpicklable_argument_is_refused_before_sending() -> None:
    async with wool.WorkerPool(size=1):
        with pytest.raises(wool.SerializationError, match="argument 'y' of routine 'add'"):
            await add(1, threading.Lock())  # type: ignore[arg-type]
        assert await add(1, 1) == 2  # the pool keeps serving


def test_decorating_a_plain_function_is_a_type_error() -> None:
    def plain() -> None: ...

    with pytest.raises(TypeError, match="async def"):
        wool.routine(plain)  # type: ignore[arg-type]


async def test_pool_inside_a_task_group_and_concurrent_pools() -> None:
    results: dict[str, int] = {}

    async def use_pool(name: str, x: int) -> None:
        async with wool.WorkerPool(size=1):
            results[name] = await add(x, x)

    async with anyio.create_task_group() as tg:
        tg.start_soon(use_pool, "a", 1)
        tg.start_soon(use_pool, "b", 2)
    assert results == {"a": 2, "b": 4}


async def test_pool_exit_when_body_raises_stops_workers() -> None:
    pool = wool.WorkerPool(size=2)
    with pytest.raises(KeyError):
        async with pool:
            pids = [w.pid for w in pool.workers]
            raise KeyError("boom")
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_pool_exit_when_body_is_cancelled_stops_workers() -> None:
    pids: list[int] = []
    with anyio.CancelScope() as scope:
        async with wool.WorkerPool(size=2) as pool:
            pids = [w.pid for w in pool.workers]
            scope.cancel()  # once open, however long that took: no timer
            await anyio.sleep_forever()
    assert len(pids) == 2
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_worker_start_failure_carries_the_worker_traceback() -> None:
    with pytest.raises(wool.WorkerStartError) as info:
        async with wool.WorkerPool(size=2, imports=["tests.broken_module"]):
            pytest.fail("the pool must not open")
    assert "ZeroDivisionError" in info.value.remote_traceback
    assert "broken_module.py" in info.value.remote_traceback
    assert "ZeroDivisionError" in str(info.value)


async def test_pool_cannot_be_entered_twice() -> None:
    pool = wool.WorkerPool(size=1)
    async with pool:
        with pytest.raises(RuntimeError, match="already open"):
            async with pool:
                pass


def test_invalid_pool_arguments() -> None:
    with pytest.raises(ValueError, match="size"):
        wool.WorkerPool(size=0)
    with pytest.raises(ValueError, match="backend"):
        wool.WorkerPool(backend="curio")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="grace"):
        wool.WorkerPool(grace=-1)
