"""Liveness that user code cannot break, and deadlines that start when the call is made.

grpclib runs on a loop thread of its own in every process, whatever the host's backend:
a routine that blocks its worker's loop, or a caller that blocks its own, leaves the
HTTP/2 pings answered. A worker that is really gone or frozen is still found out (see
``test_structured.py``: ``test_sigkilled_worker_fails_its_calls_promptly``,
``test_unresponsive_worker_is_detected_by_keepalive``,
``test_a_hung_spawned_worker_is_killed_and_replaced``).

Every test runs real worker processes under asyncio and trio.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

import wool
from tests.routines import block, remaining_time, sleep_then_mark, whereami
from tests.test_discovery import start_worker
from wool.transport._bridge import Mailbox

pytestmark = pytest.mark.anyio

KEEPALIVE = 0.5
# Well beyond the ~2 x keepalive after which a peer that does not answer pings is taken
# for gone (16 x keepalive).
BLOCKED = 8.0


@pytest.mark.parametrize("how", ["cpu", "sleep"])
async def test_a_routine_that_blocks_its_workers_loop_returns_its_result(
    how: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with wool.WorkerPool(size=1, keepalive=KEEPALIVE) as pool:
        (worker,) = pool.workers
        with anyio.fail_after(BLOCKED + 60):
            assert await block(BLOCKED, how) == worker.pid
        # Nothing was taken for lost: the same worker serves on, in rotation.
        assert [w.id for w in pool.workers] == [worker.id]
        assert (await whereami())[0] == worker.pid
    assert "suspended" not in caplog.text
    assert "killing it" not in caplog.text


async def test_a_caller_that_blocks_its_loop_keeps_its_calls(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    marker = tmp_path / "marker"
    async with wool.WorkerPool(size=1, keepalive=KEEPALIVE) as pool:
        (worker,) = pool.workers
        results: list[str] = []

        async def call() -> None:
            results.append(await sleep_then_mark(1.0, str(marker)))

        with anyio.fail_after(BLOCKED + 60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                while not marker.exists():
                    await anyio.sleep(0.01)
                time.sleep(BLOCKED)  # noqa: ASYNC251 (this caller's loop answers nothing meanwhile)
        assert results == ["slept"]
        assert marker.read_text() == "started finally"
        assert [w.id for w in pool.workers] == [worker.id]
    assert "suspended" not in caplog.text


@pytest.mark.bench
@pytest.mark.timeout(300)
@pytest.mark.parametrize("how", ["cpu", "sleep"])
async def test_a_routine_that_blocks_its_workers_loop_for_a_minute_returns_its_result(
    how: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The figure: 60 s with keepalive=1 (run with `pytest -m bench`).
    async with wool.WorkerPool(size=1, keepalive=1.0) as pool:
        (worker,) = pool.workers
        with anyio.fail_after(180):
            assert await block(60, how) == worker.pid
        assert [w.id for w in pool.workers] == [worker.id]
    assert "suspended" not in caplog.text


# Deadlines: what the caller had left when it made the call, counted on the worker from
# the call's arrival, so that the time it waits there for a slot counts.


async def test_the_time_a_call_waits_for_a_slot_on_its_worker_counts_against_its_deadline(
    tmp_path: Path, anyio_backend: str
) -> None:
    namespace = f"test-{uuid.uuid4().hex[:8]}"
    worker = start_worker(
        "--namespace", namespace, "--concurrency", "1", "--backend", anyio_backend
    )
    holder = tmp_path / "holder"
    left: float | None = None
    try:
        worker.wait_for("serving at")
        # Two pools: each sees the worker's one slot free, so the second one's call queues
        # on the worker rather than in its caller.
        async with wool.WorkerPool(discovery=wool.LocalDiscovery(namespace)):
            async with anyio.create_task_group() as tg:
                tg.start_soon(sleep_then_mark, 1.5, str(holder))  # through the first pool
                await wait_until_exists(holder)
                async with wool.WorkerPool(discovery=wool.LocalDiscovery(namespace)):
                    with anyio.fail_after(5):
                        left = await remaining_time()
        # It queued until the holder's 1.5 s sleep ended, over a second: at most 5 - 1 s
        # were left when it started (before the fix the worker saw all 5).
        assert holder.read_text() == "started finally"
        assert left is not None and 0 < left < 4.2
    finally:
        worker.stop()


async def test_a_call_whose_deadline_passes_while_it_waits_for_a_slot_is_refused(
    tmp_path: Path, anyio_backend: str
) -> None:
    namespace = f"test-{uuid.uuid4().hex[:8]}"
    worker = start_worker(
        "--namespace", namespace, "--concurrency", "1", "--backend", anyio_backend
    )
    holder, late = tmp_path / "holder", tmp_path / "late"
    outcome: list[BaseException] = []

    async def queued() -> None:
        try:
            with anyio.fail_after(1):
                await sleep_then_mark(0, str(late))
        except TimeoutError as exc:
            outcome.append(exc)

    try:
        worker.wait_for("serving at")
        async with wool.WorkerPool(discovery=wool.LocalDiscovery(namespace)):
            async with anyio.create_task_group() as tg:
                tg.start_soon(sleep_then_mark, 2.0, str(holder))  # through the first pool
                await wait_until_exists(holder)
                async with wool.WorkerPool(discovery=wool.LocalDiscovery(namespace)):
                    async with anyio.create_task_group() as calls:
                        calls.start_soon(queued)
                        await anyio.sleep(0.2)  # the call is sent, and queues on the worker
                        # This caller's loop stops past the holder's end, so its own scope
                        # cannot cancel the queued call: the worker finds it expired when
                        # the slot frees.
                        time.sleep(3)  # noqa: ASYNC251
        assert len(outcome) == 1  # the TimeoutError a local call gets
        assert holder.read_text() == "started finally"
        assert not late.exists(), "a call whose deadline passed while it queued ran"
    finally:
        worker.stop()


async def wait_until_exists(path: Path) -> None:
    with anyio.fail_after(30):
        while not path.exists():
            await anyio.sleep(0.01)


def test_a_mailbox_wakes_its_thread_once_for_many_callbacks_and_runs_them_in_batches() -> None:
    # What crosses between the transport's loop thread and the host: one wake-up for
    # everything posted while the thread was busy, and a bounded batch per loop iteration
    # (thousands of operations at once must not hold a loop, and the pings it answers).
    wakes: list[Callable[[], None]] = []
    ran: list[int] = []
    mailbox = Mailbox(wakes.append)
    for n in range(200):
        mailbox.post(ran.append, n)
    assert len(wakes) == 1
    wakes.pop()()
    assert ran == list(range(64))
    assert len(wakes) == 1  # the rest waits for the next iteration
    while wakes:
        wakes.pop()()
    assert ran == list(range(200))
