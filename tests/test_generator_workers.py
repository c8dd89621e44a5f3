"""A worker's limits and its drain apply to generator calls as to coroutine calls."""

from __future__ import annotations

import signal
import uuid
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

import wool
from wool.transport import (
    PROTOCOL_VERSION,
    Request,
    Response,
    Task,
    executor_for_host,
    portal_for_host,
)
from wool.worker._service import WorkerService

from .semantics_routines import lines, note, paused, until_noted
from .test_discovery import Worker, start_worker

pytestmark = pytest.mark.anyio


def namespace() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


async def wait_for_line(worker: Worker, text: str) -> None:
    await anyio.to_thread.run_sync(worker.wait_for, text)


async def test_a_draining_worker_serves_a_paused_generator_to_its_end(
    anyio_backend: str, tmp_path: Path
) -> None:
    log = str(tmp_path / "log")
    name = namespace()
    worker = start_worker("--namespace", name, "--grace", "60", "--backend", anyio_backend)
    try:
        await wait_for_line(worker, "serving at")
        async with wool.WorkerPool(discovery=wool.LocalDiscovery(name)):
            gen = paused(log)
            assert await gen.__anext__() == 0
            worker.process.send_signal(signal.SIGTERM)
            await wait_for_line(worker, "draining 1 running call")
            # Paused between steps, the call still counts as running: it is served on.
            assert [await gen.__anext__() for _ in range(3)] == [1, 2, 3]
            await gen.aclose()
            assert lines(log) == ["started", "finally", "cleanup awaited"]
            assert await anyio.to_thread.run_sync(worker.process.wait, 30) == 0
    finally:
        worker.stop()


async def test_a_paused_generator_is_cancelled_once_the_drain_grace_runs_out(
    anyio_backend: str, tmp_path: Path
) -> None:
    log = str(tmp_path / "log")
    name = namespace()
    worker = start_worker("--namespace", name, "--grace", "0.5", "--backend", anyio_backend)
    try:
        await wait_for_line(worker, "serving at")
        async with wool.WorkerPool(discovery=wool.LocalDiscovery(name)):
            gen = paused(log)
            assert await gen.__anext__() == 0
            worker.process.send_signal(signal.SIGTERM)
            await until_noted(log, "shielded cleanup ran")
            with pytest.raises(wool.WorkerLost):  # cancelled, or gone once it was
                await gen.__anext__()
            # Closed at its yield under the drain's cancellation, as a cancelled local
            # consumer would close it.
            assert lines(log) == ["started", "finally", "cleanup cancelled", "shielded cleanup ran"]
            assert await anyio.to_thread.run_sync(worker.process.wait, 30) == 0
    finally:
        worker.stop()


async def test_concurrency_applies_to_generator_calls(anyio_backend: str, tmp_path: Path) -> None:
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    name = namespace()
    worker = start_worker("--namespace", name, "--concurrency", "1", "--backend", anyio_backend)
    try:
        await wait_for_line(worker, "serving at")
        async with wool.WorkerPool(discovery=wool.LocalDiscovery(name)):
            holder = paused(first)
            assert await holder.__anext__() == 0  # holds the only slot while paused

            async def take_second() -> None:
                gen = paused(second)
                assert await gen.__anext__() == 0
                note(first, "second started")  # one log holds the order of both
                await gen.aclose()

            async with anyio.create_task_group() as tg:
                tg.start_soon(take_second)
                await anyio.sleep(0.5)  # gives the second call time to arrive (not asserted)
                note(first, "closing the first")
                await holder.aclose()
            assert lines(first) == [
                "started",
                "closing the first",
                "finally",
                "cleanup awaited",
                "second started",
            ]
    finally:
        worker.stop()


async def test_the_worker_holds_a_generator_call_of_another_caller_for_a_slot(
    anyio_backend: str, tmp_path: Path
) -> None:
    # A pool holds its own root calls beyond a worker's advertised capacity; a second
    # pool knows nothing of the first one's calls, so only the worker's slot holds this one.
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    name = namespace()
    worker = start_worker("--namespace", name, "--concurrency", "1", "--backend", anyio_backend)
    try:
        await wait_for_line(worker, "serving at")
        async with wool.WorkerPool(discovery=wool.LocalDiscovery(name)):
            holder = paused(first)
            assert await holder.__anext__() == 0  # holds the only slot while paused

            async def take_second_from_another_pool() -> None:
                async with wool.WorkerPool(discovery=wool.LocalDiscovery(name)):
                    gen = paused(second)
                    assert await gen.__anext__() == 0
                    note(first, "second started")  # one log holds the order of both
                    await gen.aclose()

            async with anyio.create_task_group() as tg:
                tg.start_soon(take_second_from_another_pool)
                await anyio.sleep(0.5)  # gives the second call time to arrive (not asserted)
                note(first, "closing the first")
                await holder.aclose()
            assert lines(first) == [
                "started",
                "closing the first",
                "finally",
                "cleanup awaited",
                "second started",
            ]
            assert lines(second)[0] == "started"
    finally:
        worker.stop()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the handler runs on grpclib's loop
async def test_a_worker_bug_in_a_generator_call_is_answered_not_reset() -> None:
    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("a bug in the worker")

    portal = portal_for_host()
    executor = executor_for_host(portal, broken)
    executor.start = broken  # type: ignore[method-assign]
    service = WorkerService(executor, portal, default_grace=1, on_stop_request=lambda _: None)
    sent: list[Response] = []

    async def receive() -> Request | None:
        return None

    async def send(response: Response) -> None:
        sent.append(response)

    task = Task(version=PROTOCOL_VERSION, id="g", grace=1.0, generator=True)
    try:
        await service.stream(Request(task=task), receive, send)  # does not raise
    finally:
        portal.close()
    [answer] = sent
    assert answer.failure is not None
    assert "the worker failed the call" in answer.failure.message
    assert "a bug in the worker" in answer.failure.message
