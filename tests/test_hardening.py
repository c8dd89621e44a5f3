"""Defects found by the review of issue 9: each test fails without its fix."""

from __future__ import annotations

import logging
from pathlib import Path

import anyio
import pytest
from grpclib.exceptions import ProtocolError as GrpclibProtocolError
from h2.exceptions import ProtocolError as H2ProtocolError

import wool
from wool.pool._proxy import WorkerProxy
from wool.transport import _grpc

from .routines import add
from .stream_routines import counted

pytestmark = pytest.mark.anyio


async def test_a_bug_in_a_background_task_does_not_cancel_the_pool_body(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # D17: a pool's background tasks share a task group with the body of `async with`.
    failed, ran_again = anyio.Event(), anyio.Event()
    original = WorkerProxy._close_forgotten
    runs = 0

    async def buggy(self: WorkerProxy, *, wait: bool = False) -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            failed.set()
            raise RuntimeError("simulated bug in probe_suspects")
        ran_again.set()
        await original(self, wait=wait)

    monkeypatch.setattr(WorkerProxy, "_close_forgotten", buggy)
    with caplog.at_level(logging.ERROR, logger="wool"):
        async with wool.WorkerPool(size=1):
            await failed.wait()
            assert await add(1, 2) == 3
            await ran_again.wait()  # the probe loop runs on after its failure
            assert await add(2, 2) == 4
    logged = [r for r in caplog.records if "a bug in wool" in r.getMessage()]
    assert logged and logged[0].exc_info is not None
    assert "simulated bug" in str(logged[0].exc_info[1])


@pytest.mark.parametrize("error", [GrpclibProtocolError, H2ProtocolError])
@pytest.mark.parametrize("kind", ["coroutine", "generator"])
async def test_misuse_of_grpclib_is_a_bug_not_a_lost_worker(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    error: type[Exception],
    kind: str,
    tmp_path: Path,
) -> None:
    # D14: a protocol error on a live connection is wool's bug: it is not reported as
    # WorkerLost, and the healthy worker is not suspended.
    async def call() -> object:
        if kind == "coroutine":
            return await add(1, 2)
        return [x async for x in counted(3, str(tmp_path / "produced"))]

    async def misused(*args: object, **kwargs: object) -> None:
        raise error("simulated misuse of the stream")

    async with wool.WorkerPool(size=1) as pool:
        expected = await call()
        monkeypatch.setattr(_grpc, "_send", misused)
        with caplog.at_level(logging.ERROR, logger="wool"):
            with pytest.raises(RuntimeError, match="bug in wool") as info:
                await call()
        assert isinstance(info.value.__cause__, error)
        assert [r.exc_info for r in caplog.records if "a bug in wool" in r.getMessage()]
        monkeypatch.undo()
        assert len(pool.workers) == 1  # still in rotation
        assert await call() == expected
