"""wool.TaskEvent: the lifecycle of calls, seen from the caller and from real workers."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

import wool

from .event_recorder import count_to, outer, recorded
from .routines import add, die, fail, sleep_then_mark

pytestmark = pytest.mark.anyio

HOOKS = ["tests.event_hooks"]

Events = list[tuple[wool.TaskEvent, int]]


@pytest.fixture
def seen() -> Iterator[Events]:
    """The caller's events, as a handler registered for every type records them."""
    events: Events = []

    def record(event: wool.TaskEvent, timestamp: int) -> None:
        events.append((event, timestamp))

    wool.TaskEvent.handler()(record)
    try:
        yield events
    finally:
        wool.TaskEvent.remove_handler(record)


def kinds(events: Events) -> list[tuple[str, str | None]]:
    return [(e.type, e.outcome) for e, _ in events]


async def both_sides(caller: Events, call_id: str) -> Events:
    """The call's events on the caller and on the worker, in the order they happened."""
    worker = await recorded([call_id])
    mine = [(e, ts) for e, ts in caller if e.id == call_id]
    return sorted(mine + worker, key=lambda pair: pair[1])


async def test_coroutine_call(seen: Events) -> None:
    async with wool.WorkerPool(size=1, imports=HOOKS) as pool:
        assert await add(1, 2) == 3
        call_id = seen[0][0].id
        events = await both_sides(seen, call_id)
        worker_id = pool.workers[0].id
    assert kinds(events) == [
        ("task-created", None),
        ("task-scheduled", None),
        ("task-started", None),
        ("task-stopped", "returned"),
        ("task-completed", "returned"),
    ]
    created = events[0][0]
    assert (created.routine, created.depth, created.parent, created.worker) == (
        "add",
        0,
        None,
        None,
    )
    assert created.caller.endswith(f":{os.getpid()}")
    assert all(e.worker == worker_id for e, _ in events[1:])
    assert all(e.caller == created.caller and e.depth == 0 for e, _ in events)


async def test_nested_call_names_its_parent(seen: Events) -> None:
    async with wool.WorkerPool(size=1, imports=HOOKS):
        assert await outer(5) == 11
        outer_id = seen[0][0].id
        everything = await recorded(None)
    nested = [e for e, _ in everything if e.routine == "inner"]
    assert {e.type for e in nested} >= {"task-created", "task-started", "task-completed"}
    assert {(e.parent, e.depth) for e in nested} == {(outer_id, 1)}


async def test_generator_call(seen: Events) -> None:
    async with wool.WorkerPool(size=1, imports=HOOKS):
        assert [i async for i in count_to(3)] == [0, 1, 2]
        events = await both_sides(seen, seen[0][0].id)
    steps = [
        ("task-iteration-started", None),
        ("task-iteration-completed", "yielded"),
    ]
    worker = [(e.type, e.outcome, e.iteration) for e, _ in events if e.type.startswith("task-it")]
    initiated = [e.iteration for e, _ in events if e.type == "task-iteration-initiated"]
    # The caller asked four times: three items, then the end.
    assert initiated == [1, 2, 3, 4]
    # The worker took four steps: three yields and the end (read ahead of the caller).
    assert [w for w in worker if w[0] != "task-iteration-initiated"] == [
        *[(kind, outcome, n) for n in (1, 2, 3) for kind, outcome in steps],
        ("task-iteration-started", None, 4),
        ("task-iteration-completed", "exhausted", 4),
    ]
    outer_kinds = [k for k in kinds(events) if not k[0].startswith("task-iteration")]
    assert outer_kinds == [
        ("task-created", None),
        ("task-scheduled", None),
        ("task-started", None),
        ("task-stopped", "returned"),
        ("task-completed", "returned"),
    ]


async def test_failed_call(seen: Events) -> None:
    async with wool.WorkerPool(size=1, imports=HOOKS):
        with pytest.raises(ValueError, match="boom"):
            await fail("boom")
        events = await both_sides(seen, seen[0][0].id)
    assert kinds(events)[2:] == [
        ("task-started", None),
        ("task-stopped", "raised"),
        ("task-completed", "raised"),
    ]


async def test_cancelled_call(seen: Events, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    async with wool.WorkerPool(size=1, imports=HOOKS):
        async with anyio.create_task_group() as tg:
            tg.start_soon(sleep_then_mark, 60, str(marker))
            with anyio.fail_after(30):
                while not marker.exists():
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
        assert marker.read_text().startswith("cancelled")
        events = await both_sides(seen, seen[0][0].id)
    assert kinds(events)[2:] == [
        ("task-started", None),
        ("task-stopped", "cancelled"),
        ("task-completed", "cancelled"),
    ]


async def test_call_lost_with_its_worker(seen: Events) -> None:
    async with wool.WorkerPool(size=1, imports=HOOKS):
        with pytest.raises(wool.WorkerLost):
            await die()
    assert kinds(seen) == [
        ("task-created", None),
        ("task-scheduled", None),
        ("task-completed", "lost"),
    ]


async def test_a_raising_handler_is_logged_and_harmless(
    seen: Events, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: wool.TaskEvent, timestamp: int) -> None:
        raise RuntimeError("handler bug")

    wool.TaskEvent.handler("task-created", "task-completed")(broken)
    try:
        with caplog.at_level(logging.ERROR, logger="wool.events"):
            # The workers' hooks raise on task-started too.
            async with wool.WorkerPool(size=1, imports=HOOKS):
                assert await add(2, 3) == 5
                assert [i async for i in count_to(2)] == [0, 1]
    finally:
        wool.TaskEvent.remove_handler(broken)
    failures = [r for r in caplog.records if r.name == "wool.events"]
    assert len(failures) == 4  # created and completed, of two calls
    assert all("handler bug" in str(r.exc_info[1]) for r in failures if r.exc_info)
    assert kinds(seen).count(("task-completed", "returned")) == 2


def test_registration() -> None:
    def handler(event: wool.TaskEvent, timestamp: int) -> None:
        pass

    with pytest.raises(ValueError, match="task-finished"):
        wool.TaskEvent.handler("task-finished")  # type: ignore[arg-type]

    async def not_sync(event: wool.TaskEvent, timestamp: int) -> None:
        pass

    with pytest.raises(TypeError):
        wool.TaskEvent.handler("task-created")(not_sync)
    assert wool.TaskEvent.handler("task-created")(handler) is handler
    wool.TaskEvent.remove_handler(handler)
    wool.TaskEvent.remove_handler(handler)  # not registered: nothing to do
