"""The bridge between anyio hosts and grpclib's asyncio loop.

grpclib needs an asyncio loop. On an asyncio host it runs on the host's own loop and
calls are plain awaits. On a trio host it runs on a dedicated loop thread (uvloop where
installed), and every transport operation is handed over through this module, which maps
cancellation both ways:

- a cancelled trio scope cancels the asyncio task that runs the operation and waits for
  it to finish before the trio task sees ``Cancelled``;
- an asyncio cancellation nobody asked for (grpclib can leak one when a connection closes)
  surfaces as :class:`ConnectionLost`, never as a cancellation.

This is the only module of wool (with the worker's backend-specific entry point) that uses
asyncio or trio directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, Protocol, TypeVar, cast

import anyio
import outcome
import sniffio
import trio

from wool._errors import WoolError

__all__ = [
    "CoalescingTransport",
    "ConnectionLost",
    "Execution",
    "Executor",
    "LoopThread",
    "Portal",
    "Unreachable",
    "asyncio_executor",
    "current_backend",
    "new_event_loop",
    "portal_for_host",
    "trio_executor",
]

log = logging.getLogger("wool.transport")

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class ConnectionLost(WoolError):
    """The transport lost its peer while a call was under way."""


class Unreachable(ConnectionLost):
    """No connection could be made: the call was never sent."""


def current_backend() -> str:
    """``"asyncio"`` or ``"trio"``: the async library running the current task."""
    return sniffio.current_async_library()


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new asyncio loop: uvloop's where it is installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class LoopThread:
    """An asyncio loop in a daemon thread, shared by everything in the process that needs it.

    Reference counted: :meth:`acquire` starts it, the last :meth:`release` stops it.
    """

    _lock = threading.Lock()
    _shared: LoopThread | None = None
    _users = 0

    def __init__(self) -> None:
        self.loop = new_event_loop()
        self._thread = threading.Thread(target=self._run, name="wool-transport", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            try:
                self.loop.run_until_complete(_cancel_pending())
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            finally:
                self.loop.close()

    @classmethod
    def acquire(cls) -> LoopThread:
        with cls._lock:
            if cls._shared is None:
                cls._shared = LoopThread()
                log.debug("transport loop thread started")
            cls._users += 1
            return cls._shared

    @classmethod
    def release(cls) -> None:
        with cls._lock:
            cls._users -= 1
            if cls._users or cls._shared is None:
                return
            shared, cls._shared = cls._shared, None
        # Not joined: this runs in the host's event loop, which must not block. The thread
        # cancels what is left on its loop, then closes it, on its own.
        shared.loop.call_soon_threadsafe(shared.loop.stop)
        log.debug("transport loop thread stopping")


async def _cancel_pending() -> None:
    """Cancel the tasks left on a stopped loop and let them unwind (for at most 5 s)."""
    tasks = asyncio.all_tasks() - {asyncio.current_task()}
    for task in tasks:
        task.cancel()
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=5)
        if pending:
            log.warning("%d transport task(s) did not finish when cancelled", len(pending))


class Portal(Protocol):
    """Runs coroutine functions on grpclib's loop on behalf of the host."""

    async def run(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T: ...

    def close(self) -> None: ...


class _DirectPortal:
    """Asyncio host: the transport shares the host's loop; no thread hop.

    Each operation still runs in a task of its own: grpclib cancels the task it runs in
    when a connection fails and never un-cancels it, which would leave a caller's task
    looking cancelled to anyio ever after.
    """

    async def run(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        task = asyncio.get_running_loop().create_task(fn(*args))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                task.cancel()
                await _finish(task)
                raise
            if _cancelling() == 0:
                raise ConnectionLost("the transport was cancelled without being asked to") from None
            raise

    def close(self) -> None:
        pass


async def _finish(task: asyncio.Task[Any]) -> None:
    """Wait for a cancelled task to end, through further cancellations of the waiter."""
    while not task.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({task})


class _ThreadPortal:
    """Trio host: the transport runs on a loop thread; one hand-over per operation."""

    def __init__(self) -> None:
        self._thread = LoopThread.acquire()
        self.loop = self._thread.loop
        self._closed = False

    async def run(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        if self._closed:
            # Its loop may be stopped already: the operation would never run.
            raise ConnectionLost("the transport of this pool is closed")
        loop = self.loop
        token = trio.lowlevel.current_trio_token()
        waiter = trio.lowlevel.current_task()
        handle: list[asyncio.Task[T]] = []
        cancel_requested = False

        def finished(task: asyncio.Task[T]) -> None:
            if task.cancelled():
                result: outcome.Outcome[T] = outcome.Error(asyncio.CancelledError())
            elif (exc := task.exception()) is not None:
                result = outcome.Error(exc)
            else:
                result = outcome.Value(task.result())
            token.run_sync_soon(trio.lowlevel.reschedule, waiter, result)

        def start() -> None:
            # A fresh context: the caller's says "trio" to sniffio (anyio.run sets it),
            # and anyio code on this asyncio loop must not believe it.
            task = loop.create_task(fn(*args), context=contextvars.Context())
            handle.append(task)
            task.add_done_callback(finished)
            if cancel_requested:
                task.cancel()

        def cancel() -> None:
            if handle:
                handle[0].cancel()

        def abort(_: Any) -> trio.lowlevel.Abort:
            nonlocal cancel_requested
            cancel_requested = True
            loop.call_soon_threadsafe(cancel)
            # Wait for the asyncio side to finish unwinding; it reschedules us.
            return trio.lowlevel.Abort.FAILED

        loop.call_soon_threadsafe(start)
        try:
            result: T = await trio.lowlevel.wait_task_rescheduled(abort)
        except asyncio.CancelledError:
            if cancel_requested:
                await trio.lowlevel.checkpoint()  # raises the Cancelled that trio asked for
            raise ConnectionLost("the transport was cancelled without being asked to") from None
        if cancel_requested:
            await trio.lowlevel.checkpoint()
        return result

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            LoopThread.release()


def portal_for_host() -> Portal:
    """A portal for the calling task's backend. Close it when done."""
    if current_backend() == "trio":
        return _ThreadPortal()
    return _DirectPortal()


# Executors: where a worker runs routines. The grpclib handler (on the asyncio loop) starts
# an execution and awaits its outcome; cancelling the handler cancels the routine's scope
# and waits, up to a grace period, for the routine to finish unwinding.

Run = Callable[[anyio.CancelScope], Awaitable[T]]


class Execution(Protocol, Generic[T_co]):
    def cancel(self) -> None: ...

    async def wait(self, grace: float) -> T_co: ...


class Executor(Protocol):
    def start(self, run: Run[T], *, on_cancelled: T) -> Execution[T]: ...


class _AsyncioExecution(Generic[T]):
    """The routine runs in its own task on the worker's loop: no thread hop."""

    def __init__(self, run: Run[T], on_cancelled: T) -> None:
        self._scope = anyio.CancelScope()
        self._on_cancelled = on_cancelled
        self._task = asyncio.get_running_loop().create_task(self._main(run))

    async def _main(self, run: Run[T]) -> T:
        return await run(self._scope)

    def cancel(self) -> None:
        self._scope.cancel()

    async def wait(self, grace: float) -> T:
        try:
            return await asyncio.shield(self._task)
        except asyncio.CancelledError:
            if self._task.done():
                # The routine's own task was cancelled from outside its scope (shutdown).
                if _cancelling() == 0:
                    return self._on_cancelled
                raise
            self.cancel()
            await _wait_bounded(self._task, grace)
            raise


class _TrioExecution(Generic[T]):
    """The routine runs in the worker's trio thread; the handler waits on the loop."""

    def __init__(
        self,
        run: Run[T],
        on_cancelled: T,
        token: trio.lowlevel.TrioToken,
        spawn: Callable[..., None],
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._future: asyncio.Future[T] = self._loop.create_future()
        self._on_cancelled = on_cancelled
        self._token = token
        self._scope: anyio.CancelScope | None = None
        self._cancel_requested = False
        token.run_sync_soon(spawn, self._main, run)

    async def _main(self, run: Run[T]) -> None:
        self._scope = anyio.CancelScope()
        if self._cancel_requested:
            self._scope.cancel()
        try:
            result: outcome.Outcome[T] = outcome.Value(await run(self._scope))
        except trio.Cancelled:
            result = outcome.Value(self._on_cancelled)
            raise
        except BaseException as exc:
            result = outcome.Error(exc)
        finally:
            self._loop.call_soon_threadsafe(_settle, self._future, result)  # pyright: ignore[reportPossiblyUnboundVariable]

    def _cancel_in_trio(self) -> None:
        self._cancel_requested = True
        if self._scope is not None:
            self._scope.cancel()

    def cancel(self) -> None:
        self._token.run_sync_soon(self._cancel_in_trio)

    async def wait(self, grace: float) -> T:
        try:
            return await asyncio.shield(self._future)
        except asyncio.CancelledError:
            if not self._future.done():
                self.cancel()
                await _wait_bounded(self._future, grace)
            raise


def _settle(future: asyncio.Future[T], result: outcome.Outcome[T]) -> None:
    if future.done():
        return
    if isinstance(result, outcome.Value):
        future.set_result(result.value)
    elif isinstance(result, outcome.Error):
        future.set_exception(result.error)


async def _wait_bounded(future: asyncio.Future[Any], grace: float) -> None:
    """Wait for a cancelled routine to finish unwinding, but no longer than ``grace``."""
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait({future}, timeout=grace)


def _cancelling() -> int:
    task = asyncio.current_task()
    return 0 if task is None else task.cancelling()


class _AsyncioExecutor:
    def start(self, run: Run[T], *, on_cancelled: T) -> Execution[T]:
        return _AsyncioExecution(run, on_cancelled)


class _TrioExecutor:
    def __init__(self, token: trio.lowlevel.TrioToken, spawn: Callable[..., None]) -> None:
        self._token = token
        self._spawn = spawn

    def start(self, run: Run[T], *, on_cancelled: T) -> Execution[T]:
        return _TrioExecution(run, on_cancelled, self._token, self._spawn)


def asyncio_executor() -> Executor:
    """Runs routines on the current asyncio loop (an asyncio worker)."""
    return _AsyncioExecutor()


def trio_executor(spawn: Callable[..., None]) -> Executor:
    """Runs routines in the calling trio thread; ``spawn`` is a nursery's ``start_soon``."""
    return _TrioExecutor(trio.lowlevel.current_trio_token(), spawn)


_DIRECT_WRITE = 64 * 1024


class CoalescingTransport(asyncio.Transport):
    """Sends what grpclib writes during one loop iteration in a single system call.

    grpclib writes every HTTP/2 frame as soon as it is built: a call's headers, message
    and trailers cost three sends, and on a busy host each send is the most expensive
    thing a call does.
    """

    def __init__(self, transport: asyncio.BaseTransport) -> None:
        super().__init__()
        # uvloop's transports quack like asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self._loop = asyncio.get_running_loop()
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if len(data) >= _DIRECT_WRITE:
            # Large writes (payload frames) go out as they are: copying them costs more
            # than the system call saved.
            self._flush()
            if not self._transport.is_closing():
                self._transport.write(data)
            return
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(bytes(data))

    def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)
