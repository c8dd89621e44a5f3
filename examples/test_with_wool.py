"""Testing code that calls routines, with wool's pytest plugin (``wool.testing``).

    pytest -p wool.testing examples/test_with_wool.py   # each test under asyncio and trio
    python examples/test_with_wool.py                    # the same, through pytest.main

In a project, enable the plugin once in the top-level ``conftest.py`` with
``pytest_plugins = ["wool.testing"]`` (or ``addopts = "-p wool.testing"``). The
``wool_pool`` fixture makes a pool current for the test; the pool is opened once per module
and backend, not per test.
"""

import sys

import anyio
import pytest

import wool

# Every async test here runs once under asyncio and once under trio (anyio's plugin).
pytestmark = pytest.mark.anyio


@wool.routine
async def add(x: int, y: int) -> int:
    return x + y


@wool.routine
async def countdown(n: int):
    while n > 0:
        yield n
        n -= 1


@wool.routine
async def parse_port(text: str) -> int:
    return int(text)


@wool.routine
async def wait_forever() -> None:
    await anyio.sleep_forever()


async def test_a_call_returns_its_result(wool_pool: wool.WorkerPool) -> None:
    assert await add(1, 2) == 3


async def test_a_generator_streams_its_items(wool_pool: wool.WorkerPool) -> None:
    assert [n async for n in countdown(3)] == [3, 2, 1]


async def test_an_exception_comes_back_as_itself(wool_pool: wool.WorkerPool) -> None:
    with pytest.raises(ValueError, match="invalid literal"):
        await parse_port("http")


async def test_a_deadline_cancels_the_remote_call(wool_pool: wool.WorkerPool) -> None:
    with anyio.move_on_after(0.5) as scope:
        await wait_forever()
    assert scope.cancelled_caught


async def test_the_shared_pool_has_the_configured_size(wool_pool: wool.WorkerPool) -> None:
    assert len(wool_pool.workers) == 2  # --wool-size, default 2


@pytest.mark.wool(size=1, backend="trio")
async def test_a_marked_test_gets_a_pool_of_its_own(wool_pool: wool.WorkerPool) -> None:
    assert [w.backend for w in wool_pool.workers] == ["trio"]
    assert await add(2, 3) == 5


if __name__ == "__main__":
    sys.exit(
        pytest.main(["-p", "wool.testing", "-p", "no:cacheprovider", "-q", __file__, *sys.argv[1:]])
    )
