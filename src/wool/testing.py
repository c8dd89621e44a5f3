"""wool's pytest plugin: a worker pool for your tests, opened once and current in each test.

Enable it in the top-level ``conftest.py`` of your tests::

    pytest_plugins = ["wool.testing"]

or with ``-p wool.testing`` on the command line or in ``addopts``. It is not loaded
automatically (no ``pytest11`` entry point): importing it imports wool, which a pytest run
that does not test wool code should not pay for. Once loaded, nothing happens unless a test
asks for :func:`wool_pool`.

A test that takes the ``wool_pool`` fixture runs with a pool current, so it awaits routines
without an ``async with WorkerPool()`` of its own::

    import pytest
    import wool

    pytestmark = pytest.mark.anyio  # asyncio and trio, as anyio's plugin parametrizes

    @wool.routine
    async def add(x: int, y: int) -> int:
        return x + y

    async def test_add(wool_pool: wool.WorkerPool) -> None:
        assert await add(1, 2) == 3

The pool is shared: it is opened the first time a test of a module asks for it, under that
test's anyio backend, and closed after the module's last test of that backend (set the ini
option ``wool_pool_scope = session`` and give ``anyio_backend`` session scope to share one
across modules). Its workers run the backend the test runs unless told otherwise.

Settings, from the narrowest:

- ``@pytest.mark.wool(*tags, **options)``: the test gets a pool of its own, opened for it and
  closed after it, with these ``WorkerPool`` arguments over the shared pool's (for example
  ``@pytest.mark.wool(size=1, backend="trio")``).
- the ``wool_pool_options`` fixture: the keyword arguments of the shared pool; override it
  in a ``conftest.py`` to pass ``imports``, ``grace`` or anything else ``WorkerPool`` takes.
- ``--wool-size N`` / ini ``wool_size`` (workers of the shared pool, default 2) and
  ``--wool-backend asyncio|trio`` / ini ``wool_backend`` (the workers' event loop; default:
  the test's).

After each test, the plugin checks that the test left nothing behind, and reports an error
at the test's teardown when it did:

- a routine call or generator still open ``SETTLE_SECONDS`` after the test ended (an
  async generator routine the test neither exhausted nor closed and still references, a
  task the test started and did not wait for);
- a child process of the test runner still alive that was not there before the test and is
  not a worker of the shared pool (a worker of a pool the test did not close, a ``wool
  worker`` it started); the plugin kills it. This check needs ``/proc`` (Linux) and is
  skipped elsewhere.

Closing the shared pool checks the same for the pool's own workers.
"""

from __future__ import annotations

import gc
import itertools
import os
import signal
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pytest

if TYPE_CHECKING:
    from wool import WorkerPool
    from wool.routine import Dispatcher

__all__ = [
    "DEFAULT_SIZE",
    "SETTLE_SECONDS",
    "wool_pool",
    "wool_pool_options",
]

#: Workers of the shared pool unless ``--wool-size`` or the ``wool_size`` ini option says.
DEFAULT_SIZE = 2

#: Seconds that calls and processes a test started get to finish after it ends, before the
#: plugin reports them as left behind.
SETTLE_SECONDS = 5.0

_Scope = Literal["module", "package", "session"]


# ------------------------------------------------------------------------ pytest hooks


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("wool", "wool worker pools (wool.testing)")
    group.addoption(
        "--wool-size",
        type=int,
        default=None,
        help=f"workers in the pool of the wool_pool fixture (default {DEFAULT_SIZE})",
    )
    group.addoption(
        "--wool-backend",
        choices=("asyncio", "trio"),
        default=None,
        help="event loop of the pool's workers (default: the backend each test runs)",
    )
    parser.addini("wool_size", f"workers in the wool_pool fixture's pool ({DEFAULT_SIZE})")
    parser.addini("wool_backend", "event loop of the wool_pool fixture's workers")
    parser.addini(
        "wool_pool_scope",
        "how long the wool_pool fixture's pool lives: module (default), package or session",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "wool(*tags, **options): give the test a wool pool of its own, opened with these "
        "WorkerPool arguments over the shared pool's (e.g. size=1, backend='trio')",
    )
    # A bad setting stops the run here, before any test, with what was wrong.
    _configured_scope(config)
    _configured_size(config)
    _configured_backend(config)


# ------------------------------------------------------------------------ settings


def _ini(config: pytest.Config, name: str) -> str:
    # A plugin that a test module's ``pytest_plugins`` loads registers its ini names late.
    try:
        return str(config.getini(name) or "")
    except ValueError:
        return ""


def _configured_scope(config: pytest.Config) -> _Scope:
    scope = str(_ini(config, "wool_pool_scope") or "module")
    if scope not in ("module", "package", "session"):
        raise pytest.UsageError(
            f"wool_pool_scope must be module, package or session, got {scope!r}"
        )
    return scope  # pyright: ignore[reportReturnType]


def _pool_scope(fixture_name: str, config: pytest.Config) -> _Scope:
    # pytest_configure refused a bad value already; pytest would turn an exception raised
    # here into an internal error.
    try:
        return _configured_scope(config)
    except pytest.UsageError:
        return "module"


def _configured_size(config: pytest.Config) -> int:
    option = config.getoption("wool_size", None)  # 0 is a value, not "not given"
    value = option if option is not None else (_ini(config, "wool_size") or DEFAULT_SIZE)
    try:
        size = int(value)
    except ValueError:
        raise pytest.UsageError(f"wool_size must be a whole number, got {value!r}") from None
    if size < 1:
        raise pytest.UsageError(f"wool_size must be at least 1, got {size}")
    return size


def _configured_backend(config: pytest.Config) -> str | None:
    value = config.getoption("wool_backend", None) or _ini(config, "wool_backend") or None
    if value not in (None, "asyncio", "trio"):
        raise pytest.UsageError(f"wool_backend must be asyncio or trio, got {value!r}")
    return value


# ------------------------------------------------------------------------ leftovers


def _child_pids() -> set[int] | None:
    """This process's children (any thread's), or None where ``/proc`` does not tell."""
    tasks = Path(f"/proc/{os.getpid()}/task")
    if not tasks.is_dir():
        return None
    pids: set[int] = set()
    for task in tasks.iterdir():
        try:
            pids.update(int(p) for p in (task / "children").read_text().split())
        except OSError:
            continue
    return pids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


async def _still_running(candidates: Callable[[], set[int]]) -> list[int]:
    """The ``candidates()`` still alive after ``SETTLE_SECONDS``, killed."""
    import anyio

    left: set[int] = set()
    with anyio.move_on_after(SETTLE_SECONDS):
        while True:
            left = {pid for pid in candidates() if _alive(pid)}
            if not left:
                return []
            await anyio.sleep(0.05)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return sorted(left)


class _Tracker:
    """The dispatcher a test sees: the pool's, counting the calls the test has open."""

    def __init__(self, inner: Dispatcher) -> None:
        self._inner = inner
        self._ids = itertools.count()
        self._idle: Any = None  # an anyio.Event while calls_left waits
        self.open: dict[int, str] = {}

    def _done(self, key: int) -> None:
        del self.open[key]
        if not self.open and self._idle is not None:
            self._idle.set()

    async def call(self, routine: str, *args: Any, **kwargs: Any) -> Any:
        key = next(self._ids)
        self.open[key] = routine
        try:
            return await self._inner.call(routine, *args, **kwargs)
        finally:
            self._done(key)

    @asynccontextmanager
    async def generator(self, routine: str, *args: Any, **kwargs: Any) -> AsyncGenerator[Any, None]:
        key = next(self._ids)
        self.open[key] = f"{routine} (async generator)"
        try:
            async with self._inner.generator(routine, *args, **kwargs) as remote:
                yield remote
        finally:
            self._done(key)

    async def calls_left(self) -> list[str]:
        """What is still open ``SETTLE_SECONDS`` after the test (dropped generators close)."""
        import anyio

        gc.collect()
        if self.open:
            self._idle = anyio.Event()
            with anyio.move_on_after(SETTLE_SECONDS):
                await self._idle.wait()
        return sorted(self.open.values())


# ------------------------------------------------------------------------ fixtures


@dataclass
class _Shared:
    pool: WorkerPool
    dispatcher: Dispatcher


@pytest.fixture(scope=_pool_scope)
def wool_pool_options(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Keyword arguments of the shared pool's ``WorkerPool``.

    By default ``size`` (``--wool-size``, ini ``wool_size``, else 2) and ``backend``
    (``--wool-backend``, ini ``wool_backend``, else the test's backend). Override this
    fixture in a ``conftest.py`` to pass other ``WorkerPool`` arguments; keep its scope at
    least the pool's (``module`` unless ``wool_pool_scope`` says otherwise).
    """
    return {
        "size": _configured_size(request.config),
        "backend": _configured_backend(request.config),
    }


@pytest.fixture(scope=_pool_scope)
async def _wool_shared_pool(
    anyio_backend: Any, wool_pool_options: dict[str, Any]
) -> AsyncIterator[_Shared]:
    from wool import WorkerPool
    from wool.routine import dispatcher_var

    workers: set[int] = set()
    async with WorkerPool(**wool_pool_options) as pool:
        dispatcher = dispatcher_var.get()
        assert dispatcher is not None
        # Current only in the tests that ask for it, not in every test this loop runs.
        hidden = dispatcher_var.set(None)
        try:
            yield _Shared(pool, dispatcher)
        finally:
            dispatcher_var.reset(hidden)
            # The pool's own processes (discovered workers are other hosts' or others').
            workers = {w.pid for w in pool.workers} & (_child_pids() or set())
    # Other processes are the tests' business: each test's own check covers them.
    left = await _still_running(lambda: workers)
    if left:
        pytest.fail(f"wool.testing: the shared pool left worker processes {left}", pytrace=False)


@pytest.fixture
def _wool_pool_source(request: pytest.FixtureRequest) -> _Shared | None:
    # Asked for here, from a plain fixture, so that a test with a pool of its own opens no
    # shared one (an async fixture cannot ask for another while anyio runs it).
    if request.node.get_closest_marker("wool") is not None:
        return None
    return request.getfixturevalue("_wool_shared_pool")


@pytest.fixture
async def wool_pool(
    request: pytest.FixtureRequest,
    anyio_backend: Any,
    wool_pool_options: dict[str, Any],
    _wool_pool_source: _Shared | None,
) -> AsyncIterator[WorkerPool]:
    """A ``WorkerPool`` that is current while the test runs (the test's routine calls go to it).

    The module's shared pool, or one opened for this test alone when the test is marked
    ``@pytest.mark.wool(...)``. After the test, fails it (at teardown) if a routine call or
    generator it made is still open, or a process it started is still running.
    """
    from wool import WorkerPool
    from wool.routine import dispatcher_var

    before = _child_pids()
    marker = request.node.get_closest_marker("wool")
    own: WorkerPool | None = None
    if _wool_pool_source is None:
        assert marker is not None
        own = WorkerPool(*marker.args, **{**wool_pool_options, **marker.kwargs})
        pool = await own.__aenter__()
        dispatcher = dispatcher_var.get()
        assert dispatcher is not None
    else:
        pool, dispatcher = _wool_pool_source.pool, _wool_pool_source.dispatcher
    try:
        tracker = _Tracker(dispatcher)
        token = dispatcher_var.set(tracker)  # pyright: ignore[reportArgumentType]
        try:
            yield pool
            calls = await tracker.calls_left()
        finally:
            dispatcher_var.reset(token)
    finally:
        if own is not None:
            await own.__aexit__(None, None, None)

    def started_by_the_test() -> set[int]:
        if before is None:
            return set()
        spared = {w.pid for w in pool.workers} if own is None else set()
        return (_child_pids() or set()) - before - spared

    processes = await _still_running(started_by_the_test)
    problems: list[str] = []
    if calls:
        problems.append(f"routine calls still open: {', '.join(calls)}")
    if processes:
        problems.append(f"processes still running (killed): {processes}")
    if problems:
        pytest.fail("wool.testing: the test left " + "; ".join(problems), pytrace=False)
