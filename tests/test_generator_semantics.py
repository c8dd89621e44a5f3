"""Generator routines behave as the local async generator does, cancel scopes and all.

Each scenario runs one consumer against the plain async generator (in this process) and
against the generator routine (on a worker running the same backend), with the default
``prefetch`` and with ``prefetch=0``, and compares the log both write: the values and
exceptions the consumer saw, the order of the generator's finally output, and what
``aclose`` returned and when.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from pathlib import Path
from typing import Any

import anyio
import pytest

import wool
from wool.routine._analysis import reads_ahead_safely

from . import semantics_routines as gens
from .semantics_routines import lines, note

pytestmark = pytest.mark.anyio

Make = Callable[[], AsyncGenerator[Any, Any]]
Consumer = Callable[[Make, str], Awaitable[None]]

_RAISED = object()


async def step(log: str, what: str, awaitable: Awaitable[Any]) -> Any:
    """Await one step of the generator and log what came of it."""
    try:
        value = await awaitable
    except anyio.get_cancelled_exc_class():
        note(log, f"{what} cancelled")
        raise
    except BaseException as exc:  # every outcome is compared, exceptions too
        note(log, f"{what} raised {type(exc).__name__}{exc.args!r}")
        return _RAISED
    note(log, f"{what} -> {value!r}")
    return value


async def iterate(make: Make, log: str) -> None:
    gen = make()
    for _ in range(6):
        if await step(log, "anext", gen.__anext__()) is _RAISED:
            break
    await step(log, "aclose", gen.aclose())


async def close_while_reading_ahead(make: Make, log: str) -> None:
    gen = make()
    await step(log, "anext", gen.__anext__())
    await step(log, "anext", gen.__anext__())
    await step(log, "aclose", gen.aclose())
    await step(log, "anext", gen.__anext__())


async def throw_while_reading_ahead(make: Make, log: str) -> None:
    gen = make()
    await step(log, "anext", gen.__anext__())
    await step(log, "anext", gen.__anext__())
    await step(log, "athrow", gen.athrow(ValueError("v")))
    await step(log, "anext", gen.__anext__())


async def break_out(make: Make, log: str) -> None:
    async def consume() -> None:
        async for item in make():
            note(log, f"got {item}")
            if item == 1:
                break

    await consume()
    gc.collect()  # the loop's async-generator finalizer closes the dropped generator
    with anyio.fail_after(20):
        while not {"cleanup awaited", "shielded cleanup ran"} & set(lines(log)):
            await anyio.sleep(0.005)


async def cancel_the_consumer(make: Make, log: str) -> None:
    with anyio.CancelScope() as scope:
        async with aclosing(make()) as gen:
            async for item in gen:
                note(log, f"got {item}")
                if item == 1:
                    scope.cancel()
                    await anyio.lowlevel.checkpoint()
    note(log, "consumer scope exited")


async def throw_at_the_yield(make: Make, log: str) -> None:
    gen = make()
    await step(log, "anext", gen.__anext__())
    await step(log, "athrow", gen.athrow(ValueError("v")))
    await step(log, "anext", gen.__anext__())
    await step(log, "aclose", gen.aclose())


async def deadline_of_the_first_step_only(make: Make, log: str) -> None:
    gen = make()
    with anyio.fail_after(1):
        await step(log, "anext", gen.__anext__())
    await anyio.sleep(1.2)  # the first step's deadline has passed; the next has none
    await step(log, "anext", gen.__anext__())
    await step(log, "aclose", gen.aclose())


async def deadline_of_a_later_step(make: Make, log: str) -> None:
    gen = make()
    await step(log, "anext", gen.__anext__())
    await step(log, "anext", gen.__anext__())
    with anyio.move_on_after(0.3) as scope:
        await step(log, "anext", gen.__anext__())
    note(log, f"deadline caught: {scope.cancelled_caught}")
    await step(log, "anext", gen.__anext__())
    await step(log, "aclose", gen.aclose())


async def timeout_of_a_later_step(make: Make, log: str) -> None:
    gen = make()
    await step(log, "anext", gen.__anext__())
    await step(log, "anext", gen.__anext__())
    try:
        with anyio.fail_after(0.3):
            await step(log, "anext", gen.__anext__())
    except TimeoutError:
        note(log, "TimeoutError")
    await step(log, "anext", gen.__anext__())


# The four scenarios of ../shared/review/r3_generator_semantics.py are here: r3 (a) is
# "aclose while reading ahead", (b) "yield inside fail_after", (c) "athrow at a yield inside
# contextlib.suppress" and (d) "a deadline on the first step only".
SCENARIOS: dict[str, tuple[str, Consumer]] = {
    "yield inside move_on_after": ("in_move_on_after", iterate),
    "yield inside fail_after": ("in_fail_after", iterate),
    "yield inside a scope that cancels itself": ("in_cancelled_scope", iterate),
    "yield inside a shielded scope": ("in_shielded_scope", iterate),
    "yield inside a task group": ("in_task_group", iterate),
    "an exception inside the generator's task group": ("failing_task_group", iterate),
    "aclose while reading ahead, awaits in finally": ("ticking", close_while_reading_ahead),
    "athrow while reading ahead, awaits in finally": ("ticking", throw_while_reading_ahead),
    "break while reading ahead, awaits in finally": ("ticking", break_out),
    "the consumer cancelled while reading ahead": ("ticking", cancel_the_consumer),
    "athrow at a yield inside contextlib.suppress": ("suppressing", throw_at_the_yield),
    "athrow at a yield inside a replacing with": ("replacing", throw_at_the_yield),
    "athrow at a yield inside a swallowing async with": ("swallowing", throw_at_the_yield),
    "a deadline on the first step only": ("numbers", deadline_of_the_first_step_only),
    "a deadline on a later, slow step (move_on_after)": ("slow_third", deadline_of_a_later_step),
    "a deadline on a later, slow step (fail_after)": ("slow_third", timeout_of_a_later_step),
}


async def play(
    consume: Consumer, fn: Callable[[str], AsyncGenerator[Any, Any]], log: Path
) -> list[str]:
    await consume(lambda: fn(str(log)), str(log))
    return lines(str(log))


@pytest.mark.parametrize("prefetch", ["default", "0"])
async def test_generator_routines_behave_as_local_generators(
    anyio_backend: str, prefetch: str, tmp_path: Path
) -> None:
    local: dict[str, list[str]] = {}
    remote: dict[str, list[str]] = {}
    for name, (generator, consume) in SCENARIOS.items():
        local[name] = await play(consume, getattr(gens, generator), tmp_path / f"{name}.local")
    async with wool.WorkerPool(size=1, backend=anyio_backend):
        for name, (generator, consume) in SCENARIOS.items():
            routine = gens.ROUTINES[generator][0 if prefetch == "default" else 1]
            remote[name] = await play(consume, routine, tmp_path / f"{name}.remote")
    assert remote == local


def test_the_scenarios_read_ahead_where_the_source_allows_it() -> None:
    # The comparisons above cover both stepping modes with the default prefetch.
    assert reads_ahead_safely(gens.ticking)
    assert reads_ahead_safely(gens.numbers)
    assert reads_ahead_safely(gens.slow_third)
    for exact in (gens.suppressing, gens.replacing, gens.swallowing, gens.in_task_group):
        assert not reads_ahead_safely(exact)


async def _plain(log: str) -> AsyncGenerator[int, None]:
    try:
        yield 1
    finally:
        note(log, "finally")


async def _finally_returns(log: str) -> AsyncGenerator[int, None]:
    try:
        yield 1
    finally:
        return  # noqa: B012 - drops the exception it was unwinding


async def _catches(log: str) -> AsyncGenerator[int, None]:
    try:
        yield 1
    except ValueError:
        pass


async def _with_around(log: str) -> AsyncGenerator[int, None]:
    with open(log):
        yield 1


async def _async_with_around(log: str) -> AsyncGenerator[int, None]:
    async with gens.Swallowing():
        yield 1


async def _uses_sends(log: str) -> AsyncGenerator[int, int]:
    received = yield 1
    note(log, str(received))


async def _with_before_the_yield(log: str) -> AsyncGenerator[int, None]:
    with open(log):
        pass
    yield 1


def _without_source() -> Any:
    namespace: dict[str, Any] = {}
    exec("async def made():\n    yield 1\n", namespace)
    return namespace["made"]


@pytest.mark.parametrize(
    ("fn", "reads_ahead"),
    [
        (_plain, True),
        (_with_before_the_yield, True),
        (_finally_returns, False),
        (_catches, False),
        (_with_around, False),
        (_async_with_around, False),
        (_uses_sends, False),
        (_without_source(), False),
    ],
)
def test_read_ahead_only_where_no_yield_can_see_a_thrown_exception_changed(
    fn: Any, reads_ahead: bool
) -> None:
    assert reads_ahead_safely(fn) is reads_ahead


async def test_a_scope_that_expires_between_steps_is_handled_at_the_yield(
    anyio_backend: str, tmp_path: Path
) -> None:
    # Locally the consumer's own task would take this cancellation (anyio and trio warn
    # against it); on the worker it is thrown in at the yield, where the generator's scope
    # catches it, as trio's as_safe_channel does.
    log = str(tmp_path / "log")
    async with wool.WorkerPool(size=1, backend=anyio_backend):
        gen = gens.scope_expires_between_steps(log)
        assert await gen.__anext__() == 1
        await gens.until_noted(log, "moved on")
        assert await gen.__anext__() == 2
        with pytest.raises(StopAsyncIteration):
            await gen.__anext__()
