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
from pathlib import Path

import anyio
import pytest

import wool
from tests.routines import block, sleep_then_mark, whereami

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
