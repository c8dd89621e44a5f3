"""Structured concurrency across the wire: cancellation, deadlines, failures, no orphans.

Every test runs real worker processes under asyncio and trio.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

import wool
from wool.transport import (
    PROTOCOL_VERSION,
    RejectedReason,
    Request,
    Task,
    executor_for_host,
    portal_for_host,
)
from wool.worker._service import WorkerService

from .routines import (
    UnprintableError,
    add,
    cancel_with_shielded_cleanup,
    cancels_itself,
    die,
    fail_unprintably,
    fan_out,
    fib,
    nested_remaining_time,
    remaining_time,
    sleep_then_mark,
    tree,
    wait_then_nest,
)

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent


async def wait_for_file(path: Path, content: str | None = None, timeout: float = 10) -> str:
    with anyio.fail_after(timeout):
        while True:
            if path.exists():
                text = path.read_text()
                if content is None or content in text:
                    return text
            await anyio.sleep(0.01)


def gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for its reaper counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


# Cancellation


async def test_cancelling_the_caller_runs_the_remote_finally(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    async with wool.WorkerPool(size=1):
        with anyio.CancelScope() as scope:

            async def cancel_when_started() -> None:
                await wait_for_file(marker, "started")
                scope.cancel()

            async with anyio.create_task_group() as tg:
                tg.start_soon(cancel_when_started)
                await sleep_then_mark(30, str(marker))
        # The caller's cancellation completed only after the routine unwound remotely.
        assert marker.read_text() == "cancelled finally"
        assert await add(1, 1) == 2


async def test_caller_waits_for_shielded_cleanup_within_grace(tmp_path: Path) -> None:
    marker, release = tmp_path / "marker", tmp_path / "release"
    returned = anyio.Event()
    async with wool.WorkerPool(size=1, grace=30):
        scope = anyio.CancelScope()

        async def cancel_then_release() -> None:
            await wait_for_file(marker, "started")
            scope.cancel()
            await wait_for_file(marker, "cleaning")  # the routine waits in its cleanup
            assert not returned.is_set()
            release.write_text("go")

        async with anyio.create_task_group() as tg:
            tg.start_soon(cancel_then_release)
            with scope:
                await cancel_with_shielded_cleanup(str(marker), str(release))
            on_return = marker.read_text()
            returned.set()
        # The caller returned only once the shielded cleanup had finished.
        assert on_return == "cleaned up"


@pytest.mark.parametrize("where", ["pool", "routine"])
async def test_caller_stops_waiting_after_the_grace(tmp_path: Path, where: str) -> None:
    marker, release = tmp_path / "marker", tmp_path / "release"
    grace = 0.3
    routine = cancel_with_shielded_cleanup
    if where == "routine":
        routine = wool.routine(grace=grace)(cancel_with_shielded_cleanup.__wrapped__)
    async with wool.WorkerPool(size=1, grace=grace if where == "pool" else 30):
        with anyio.CancelScope() as scope:

            async def cancel_when_started() -> None:
                await wait_for_file(marker, "started")
                scope.cancel()

            async with anyio.create_task_group() as tg:
                tg.start_soon(cancel_when_started)
                await routine(str(marker), str(release))
        # The caller moved on although the remote cleanup has not finished ...
        assert marker.read_text() != "cleaned up"
        # ... and the worker keeps unwinding the routine.
        release.write_text("go")
        await wait_for_file(marker, "cleaned up")


async def test_cancellation_inside_a_routine_stays_inside() -> None:
    async with wool.WorkerPool(size=1):
        assert await cancels_itself() == "carried on"


# Deadlines


async def test_the_callers_deadline_travels_with_the_call() -> None:
    async with wool.WorkerPool(size=1):
        assert await remaining_time() == float("inf")
        with anyio.fail_after(20):
            left = await remaining_time()
        assert 0 < left <= 20


async def test_nested_calls_inherit_the_deadline() -> None:
    async with wool.WorkerPool(size=2):
        with anyio.fail_after(20):
            here, nested = await nested_remaining_time()
        assert 0 < nested <= here <= 20


async def test_the_deadline_bounds_the_remote_work(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    async with wool.WorkerPool(size=1):
        with anyio.move_on_after(1) as scope:
            await sleep_then_mark(30, str(marker))
        assert scope.cancelled_caught
        assert marker.read_text() == "cancelled finally"
        with pytest.raises(TimeoutError):
            with anyio.fail_after(1):
                await sleep_then_mark(30, str(marker))


async def test_a_call_that_arrives_after_its_deadline_never_starts() -> None:
    def never_run(*_: object) -> None:
        raise AssertionError("an expired call must not start")

    portal = portal_for_host()
    executor = executor_for_host(portal, never_run)
    executor.start = never_run  # type: ignore[method-assign]
    service = WorkerService(executor, portal, default_grace=1, on_stop_request=lambda _: None)
    task = Task(version=PROTOCOL_VERSION, id="late", timeout=0.0, grace=1.0)
    try:
        response = await service.dispatch(Request(task=task))
    finally:
        portal.close()
    assert response.rejected is not None
    assert response.rejected.reason == RejectedReason.EXPIRED


# Nested calls at scale


@pytest.mark.xdist_group("heavy")  # never two at once: see tests/conftest.py
async def test_recursive_fib_18_on_two_workers() -> None:
    async with wool.WorkerPool(size=2):
        assert await fib(18) == 2584


@pytest.mark.xdist_group("heavy")  # never two at once: see tests/conftest.py
async def test_fan_out_of_5000_nested_calls_in_flight(tmp_path: Path) -> None:
    async with wool.WorkerPool(size=2):
        with anyio.fail_after(110):
            assert await fan_out(5000, str(tmp_path)) == 5000


async def test_cancelling_the_root_cancels_the_whole_tree(tmp_path: Path) -> None:
    async with wool.WorkerPool(size=2):
        with anyio.CancelScope() as scope:

            async def cancel_once_every_leaf_runs() -> None:
                with anyio.fail_after(30):
                    while len(list(tmp_path.glob("started-*"))) < 16:
                        await anyio.sleep(0.01)
                scope.cancel()

            async with anyio.create_task_group() as tg:
                tg.start_soon(cancel_once_every_leaf_runs)
                await tree(4, str(tmp_path))
        # All 31 nodes ran their finally before the caller's cancellation completed,
        # leaves first: every node after both of its children.
        order = (tmp_path / "finally").read_text().split()
        assert sorted(order) == sorted(
            "r" + "".join(bits)
            for depth in range(5)
            for bits in itertools.product("01", repeat=depth)
        )
        position = {node: i for i, node in enumerate(order)}
        assert all(position[node] < position[node[:-1]] for node in order if node != "r")


# Failures


async def test_a_worker_dying_mid_call_raises_worker_lost_and_is_replaced() -> None:
    async with wool.WorkerPool(size=2) as pool:
        before = {w.id for w in pool.workers}
        with pytest.raises(wool.WorkerLost) as info:
            await die()
        assert info.value.routine == "die"
        assert info.value.worker in before
        with anyio.fail_after(30):
            while len(pool.workers) < 2 or info.value.worker in {w.id for w in pool.workers}:
                await anyio.sleep(0.05)
        results = [await add(i, 1) for i in range(10)]
        assert results == [i + 1 for i in range(10)]


async def test_sigkilled_worker_fails_its_calls_promptly(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    async with wool.WorkerPool(size=1) as pool:
        pid = pool.workers[0].pid

        async def kill_when_started() -> None:
            await wait_for_file(marker, "started")
            os.kill(pid, signal.SIGKILL)

        async with anyio.create_task_group() as tg:
            tg.start_soon(kill_when_started)
            with pytest.raises(wool.WorkerLost, match="sleep_then_mark"):
                with anyio.fail_after(5):
                    await sleep_then_mark(30, str(marker))
        assert await add(2, 3) == 5  # served by the replacement


async def test_stopped_worker_drains_then_cancels(tmp_path: Path) -> None:
    quick, slow = tmp_path / "quick", tmp_path / "slow"
    async with wool.WorkerPool(size=1, grace=1.0) as pool:
        pid = pool.workers[0].pid
        results: dict[str, object] = {}

        async def call(name: str, seconds: float, marker: Path) -> None:
            try:
                results[name] = await sleep_then_mark(seconds, str(marker))
            except wool.WorkerLost as exc:
                results[name] = exc

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "quick", 0.5, quick)
            tg.start_soon(call, "slow", 30, slow)
            await wait_for_file(quick, "started")
            await wait_for_file(slow, "started")
            os.kill(pid, signal.SIGTERM)
        assert results["quick"] == "slept"
        assert isinstance(results["slow"], wool.WorkerLost)
        assert slow.read_text() == "cancelled finally"


async def test_unresponsive_worker_is_detected_by_keepalive(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    async with wool.WorkerPool(size=1, keepalive=0.2) as pool:
        pid = pool.workers[0].pid
        try:

            async def freeze_when_started() -> None:
                await wait_for_file(marker, "started")
                os.kill(pid, signal.SIGSTOP)

            async with anyio.create_task_group() as tg:
                tg.start_soon(freeze_when_started)
                with pytest.raises(wool.WorkerLost):
                    with anyio.fail_after(10):
                        await sleep_then_mark(30, str(marker))
        finally:
            os.kill(pid, signal.SIGCONT)


# No orphans

CALLER = textwrap.dedent(
    """
    import sys, anyio, wool
    sys.path.insert(0, {root!r})
    from tests.routines import sleep_then_mark

    async def main():
        async with wool.WorkerPool(size=2) as pool:
            print(*[w.pid for w in pool.workers], flush=True)
            await sleep_then_mark(60, {marker!r})

    anyio.run(main, backend={backend!r})
    """
)


def start_caller(tmp_path: Path, backend: str) -> tuple[subprocess.Popen[str], list[int], Path]:
    marker = tmp_path / "marker"
    script = tmp_path / "caller.py"
    script.write_text(CALLER.format(root=str(ROOT), marker=str(marker), backend=backend))
    caller = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert caller.stdout is not None
    pids = [int(p) for p in caller.stdout.readline().split()]
    assert len(pids) == 2, "the caller did not start its pool"
    return caller, pids, marker


def wait_until(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_killed_caller_orphans_nothing(tmp_path: Path, backend: str) -> None:
    caller, pids, marker = start_caller(tmp_path, backend)
    try:
        assert wait_until(lambda: marker.exists() and "started" in marker.read_text(), 30)
        caller.kill()
        caller.wait(10)
        killed_at = time.monotonic()
        assert wait_until(lambda: "finally" in marker.read_text(), 1.0), marker.read_text()
        assert marker.read_text() == "cancelled finally"
        left = 2.0 - (time.monotonic() - killed_at)
        assert wait_until(lambda: all(gone(p) for p in pids), left), "workers outlived their pool"
    finally:
        caller.kill()
        caller.wait(10)
        for pid in pids:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_ctrl_c_ends_the_program_cleanly(tmp_path: Path, backend: str) -> None:
    caller, pids, marker = start_caller(tmp_path, backend)
    try:
        assert wait_until(lambda: marker.exists() and "started" in marker.read_text(), 30)
        caller.send_signal(signal.SIGINT)
        caller.wait(10)
        assert marker.read_text() == "cancelled finally"
        assert all(gone(p) for p in pids)
    finally:
        caller.kill()
        caller.wait(10)
        for pid in pids:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)


async def test_a_draining_worker_takes_nested_calls_of_its_routines(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    async with wool.WorkerPool(size=1, grace=10) as pool:
        pid = pool.workers[0].pid

        async def stop_when_started() -> None:
            await wait_for_file(marker, "started")
            os.kill(pid, signal.SIGTERM)

        async with anyio.create_task_group() as tg:
            tg.start_soon(stop_when_started)
            with anyio.fail_after(8):
                assert await wait_then_nest(str(marker), 1.0) == 42


async def test_an_unprintable_exception_comes_back_and_the_worker_stays() -> None:
    async with wool.WorkerPool(size=1) as pool:
        before = [w.id for w in pool.workers]
        with pytest.raises(UnprintableError):
            await fail_unprintably()
        assert [w.id for w in pool.workers] == before
        assert await add(1, 2) == 3


async def test_a_task_that_outlives_its_pool_gets_no_pool_error() -> None:
    closed = anyio.Event()
    outcome: list[BaseException] = []

    async def late_call() -> None:
        await closed.wait()
        try:
            await add(1, 1)
        except BaseException as exc:
            outcome.append(exc)

    async with anyio.create_task_group() as tg:
        async with wool.WorkerPool(size=1):
            tg.start_soon(late_call)
            await anyio.lowlevel.checkpoint()
        closed.set()
    assert len(outcome) == 1 and isinstance(outcome[0], wool.NoPoolError)
    assert "closed" in str(outcome[0])


async def test_a_hung_spawned_worker_is_killed_and_replaced() -> None:
    async with wool.WorkerPool(size=1, keepalive=0.2) as pool:
        (hung,) = pool.workers
        os.kill(hung.pid, signal.SIGSTOP)
        with pytest.raises(wool.WorkerLost):
            with anyio.fail_after(10):
                await add(1, 1)
        with anyio.fail_after(30):
            while [w.id for w in pool.workers] in ([], [hung.id]):
                await anyio.sleep(0.1)
        assert gone(hung.pid)
        assert await add(2, 2) == 4
