"""Async generator routines behave like the local generator, step for step, on both backends."""

from __future__ import annotations

import gc
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

import wool

from .routines import Talker, conversation

pytestmark = pytest.mark.anyio

Op = tuple[Any, ...]

SCRIPTS: dict[str, list[Op]] = {
    "iterate to the end": [("anext",)] * 5,
    "send and throw": [
        ("anext",),
        ("asend", "x"),
        ("anext",),
        ("athrow", ValueError("v")),
        ("asend", "y"),
        ("anext",),
        ("anext",),
        ("anext",),
    ],
    "send before start": [("asend", "early"), ("anext",), ("asend", "stop"), ("anext",)],
    "throw before start": [("athrow", ValueError("first")), ("anext",)],
    "exception inside": [("anext",), ("asend", "explode"), ("anext",)],
    "close then use": [("anext",), ("aclose",), ("anext",), ("aclose",)],
    "uncaught throw": [("anext",), ("athrow", KeyError("k")), ("anext",)],
}


async def play(gen: AsyncGenerator[Any, Any], script: list[Op]) -> list[tuple[str, str]]:
    outcomes: list[tuple[str, str]] = []
    for op, *args in script:
        try:
            if op == "anext":
                value = await gen.__anext__()
            elif op == "asend":
                value = await gen.asend(args[0])
            elif op == "athrow":
                value = await gen.athrow(args[0])
            else:
                value = await gen.aclose()
            outcomes.append(("value", repr(value)))
        except BaseException as exc:  # every outcome is compared, exceptions too
            outcomes.append(("raised", f"{type(exc).__name__}{exc.args!r}"))
    return outcomes


@pytest.mark.parametrize("name", list(SCRIPTS))
async def test_remote_generator_matches_the_local_one(name: str, tmp_path: Path) -> None:
    script = SCRIPTS[name]
    local_marker, remote_marker = tmp_path / "local", tmp_path / "remote"
    local = await play(conversation.__wrapped__(3, str(local_marker)), script)  # type: ignore[attr-defined]
    async with wool.WorkerPool(size=1):
        remote = await play(conversation(3, str(remote_marker)), script)
    assert remote == local
    assert read(remote_marker) == read(local_marker)


def read(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


async def test_generator_methods_match_too(tmp_path: Path) -> None:
    talker = Talker("t")
    script: list[Op] = [("anext",), ("asend", 5), ("anext",), ("aclose",), ("anext",)]
    local = await play(Talker.talk.__wrapped__(talker, 2, str(tmp_path / "l")), script)  # type: ignore[attr-defined]
    async with wool.WorkerPool(size=1):
        remote = await play(talker.talk(2, str(tmp_path / "r")), script)
    assert remote == local
    assert (tmp_path / "r").read_text() == "finally;"


async def test_async_for_streams_every_item(tmp_path: Path) -> None:
    async with wool.WorkerPool(size=1):
        items = [item async for item in conversation(50, str(tmp_path / "m"))]
    assert items == list(range(50))


async def test_aclose_returns_after_the_remote_finally(tmp_path: Path) -> None:
    marker = tmp_path / "m"
    async with wool.WorkerPool(size=1):
        gen = conversation(10, str(marker))
        assert await gen.__anext__() == 0
        assert not marker.exists()
        await gen.aclose()
        assert marker.read_text() == "finally;"


async def test_break_and_drop_closes_the_remote_generator(tmp_path: Path) -> None:
    marker = tmp_path / "m"
    async with wool.WorkerPool(size=1):

        async def consume() -> None:
            async for item in conversation(10, str(marker)):
                if item == 2:
                    break

        await consume()
        gc.collect()  # the loop's async-generator finalizer now closes it
        with anyio.fail_after(10):
            while not marker.exists():
                await anyio.sleep(0.01)
    assert marker.read_text() == "finally;"


async def test_cancelling_the_consumer_closes_the_remote_generator(tmp_path: Path) -> None:
    marker = tmp_path / "m"

    @wool.routine
    async def slow(marker: str) -> AsyncGenerator[int, None]:
        try:
            yield 1
            await anyio.sleep(30)
            yield 2
        finally:
            Path(marker).write_text("finally")

    async with wool.WorkerPool(size=1):
        with anyio.move_on_after(0.5):
            async for _ in slow(str(marker)):
                pass
        # The consumer was cancelled inside the generator's step: the remote generator
        # was closed before the cancellation completed.
        assert marker.read_text() == "finally"


async def test_a_generator_never_started_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "m"
    calls: list[Callable[..., Any]] = []
    async with wool.WorkerPool(size=1):
        gen = conversation(3, str(marker))
        calls.append(gen.__anext__)
        del gen, calls
        gc.collect()
    # The pool has stopped its worker (which closes any generator it runs): had the call
    # been sent, its finally would have run by now.
    assert not marker.exists()


async def test_unpicklable_sent_value_is_refused(tmp_path: Path) -> None:
    import threading

    async with wool.WorkerPool(size=1):
        gen = conversation(3, str(tmp_path / "m"))
        await gen.__anext__()
        with pytest.raises(wool.SerializationError, match="cannot be pickled"):
            await gen.asend(threading.Lock())
        await gen.aclose()
