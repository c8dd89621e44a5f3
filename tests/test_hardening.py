"""Defects found by the review of issue 9: each test fails without its fix."""

from __future__ import annotations

import logging

import anyio
import pytest

import wool
from wool.pool._proxy import WorkerProxy

from .routines import add

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
