"""The bridge between anyio hosts and grpclib's asyncio loop thread.

grpclib needs an asyncio loop. It runs on a loop of its own, in a daemon thread
(:class:`LoopThread`, uvloop's loop where installed), for asyncio and trio hosts alike: the
host's code (a caller's program, a worker's routines) can then block its own loop for as
long as it likes without starving the transport, which keeps answering HTTP/2 pings, so a
busy peer is never taken for a dead one.

Everything crosses between the threads through :class:`Mailbox` es, which run callbacks in
the order they were posted and wake their thread once for all the callbacks posted while
it was busy (a thread wake-up costs more than the callback). Two kinds of crossing:

- a :class:`Portal` runs a transport operation on the loop thread for the host; a
  cancelled host scope cancels the operation and waits for it to finish before the host
  sees its cancellation, and an asyncio cancellation nobody asked for (grpclib can leak one
  when a connection closes) surfaces as :class:`ConnectionLost`, never as a cancellation;
- an :class:`Executor` runs a worker's routine on the host for a handler on the loop thread.

The host side is plain anyio; the one thing that depends on the host's backend, how to
post a callback into its thread, comes from :mod:`wool.transport._backends`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, Protocol, TypeVar, cast

import anyio
import outcome

from wool._errors import WoolError
from wool.transport._backends import Spawn, host_backend
from wool.transport._backends._asyncio import new_event_loop

__all__ = [
    "CoalescingTransport",
    "ConnectionLost",
    "Execution",
    "Executor",
    "LoopThread",
    "Mailbox",
    "Portal",
    "Unreachable",
    "executor_for_host",
    "portal_for_host",
]

log = logging.getLogger("wool.transport")

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class ConnectionLost(WoolError):
    """The transport lost its peer while a call was under way."""


class Unreachable(ConnectionLost):
    """No connection could be made: the call was never sent."""


class Mailbox:
    """Callbacks to run in one thread, in the order they were posted, from any thread.

    ``wake(drain)`` must make that thread call ``drain()`` soon (and may be called from
    any thread); it is called once for all the callbacks posted until ``drain`` runs.
    """

    __slots__ = ("_queue", "_scheduled", "_wake")

    def __init__(self, wake: Callable[[Callable[[], None]], None]) -> None:
        self._wake = wake
        self._queue: deque[tuple[Callable[..., None], tuple[Any, ...]]] = deque()
        self._scheduled = False

    def post(self, fn: Callable[..., None], *args: Any) -> None:
        self._queue.append((fn, args))
        # Racy on purpose (under the GIL): a drain clears the flag *before* it empties the
        # queue, so an item is either seen by a drain under way or schedules a new one.
        if not self._scheduled:
            self._scheduled = True
            try:
                self._wake(self._drain)
            except BaseException:
                self._scheduled = False
                raise

    def _drain(self) -> None:
        self._scheduled = False
        queue = self._queue
        # A bounded batch per loop iteration: thousands of operations posted at once must
        # not hold the loop (and the pings it answers) for one long iteration.
        for _ in range(min(len(queue), _BATCH)):
            fn, args = queue.popleft()
            try:
                fn(*args)
            except Exception:
                log.exception("a callback crossing between threads failed (a bug in wool)")
        if queue and not self._scheduled:
            self._scheduled = True
            self._wake(self._drain)


# Callbacks a mailbox runs per wake-up; what is left waits for the next loop iteration.
_BATCH = 64


class LoopThread:
    """An asyncio loop in a daemon thread, shared by everything in the process that needs it.

    Reference counted: :meth:`acquire` starts it, the last :meth:`release` stops it.
    """

    _lock = threading.Lock()
    _shared: LoopThread | None = None
    _users = 0

    def __init__(self) -> None:
        self.loop = new_event_loop()
        self.mailbox = Mailbox(self._wake)
        self._thread = threading.Thread(target=self._run, name="wool-transport", daemon=True)
        self._thread.start()

    def _wake(self, drain: Callable[[], None]) -> None:
        # A fresh context: the poster's may say "trio" to sniffio (anyio.run sets it), and
        # anyio code on this asyncio loop must not believe it.
        self.loop.call_soon_threadsafe(drain, context=contextvars.Context())

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


class _Operation(Generic[T]):
    """One transport operation run for the host: started, maybe cancelled, and finished
    on the loop thread; awaited on the host."""

    __slots__ = ("_args", "_fn", "_host", "_task", "done", "result")

    def __init__(
        self, fn: Callable[..., Coroutine[Any, Any, T]], args: tuple[Any, ...], host: Mailbox
    ) -> None:
        self._fn = fn
        self._args = args
        self._host = host
        self._task: asyncio.Task[T] | None = None
        self.done = anyio.Event()
        self.result: outcome.Outcome[T] | None = None

    def start(self) -> None:  # on the loop thread
        # A task of its own: grpclib cancels the task it runs in when a connection fails.
        self._task = task = asyncio.get_running_loop().create_task(self._fn(*self._args))
        task.add_done_callback(self._finished)

    def cancel(self) -> None:  # on the loop thread, always after start()
        if self._task is not None:
            self._task.cancel()

    def _finished(self, task: asyncio.Task[T]) -> None:
        if task.cancelled():
            self.result = outcome.Error(asyncio.CancelledError())
        elif (exc := task.exception()) is not None:
            self.result = outcome.Error(exc)
        else:
            self.result = outcome.Value(task.result())
        self._host.post(self.done.set)


class _ThreadPortal:
    """Hands transport operations to the loop thread; one hop each way per operation."""

    def __init__(self) -> None:
        self._thread = LoopThread.acquire()
        self.loop = self._thread.loop
        self.transport = self._thread.mailbox
        self.host = Mailbox(host_backend().waker())
        self._closed = False

    async def run(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        if self._closed:
            # Its loop may be stopped already: the operation would never run.
            raise ConnectionLost("the transport of this pool is closed")
        operation = _Operation(fn, args, self.host)
        self.transport.post(operation.start)
        try:
            await operation.done.wait()
        except anyio.get_cancelled_exc_class():
            self.transport.post(operation.cancel)
            # The host's cancellation completes once the operation has unwound.
            with anyio.CancelScope(shield=True):
                await operation.done.wait()
            raise
        result = cast(outcome.Outcome[T], operation.result)
        if isinstance(result, outcome.Error) and isinstance(result.error, asyncio.CancelledError):
            raise ConnectionLost("the transport was cancelled without being asked to") from None
        return result.unwrap()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            LoopThread.release()


def portal_for_host() -> Portal:
    """A portal for the calling task (asyncio or trio). Close it when done."""
    return _ThreadPortal()


# Executors: where a worker runs routines. The grpclib handler (on the loop thread) starts
# an execution and awaits its outcome; the routine runs on the host, in a task the host's
# task group spawns. Cancelling the handler cancels the routine's scope and waits, up to a
# grace period, for the routine to finish unwinding.

Run = Callable[[anyio.CancelScope], Awaitable[T]]


class Execution(Protocol, Generic[T_co]):
    def cancel(self) -> None: ...

    async def wait(self, grace: float) -> T_co: ...


class Executor(Protocol):
    def start(self, run: Run[T], *, on_cancelled: T) -> Execution[T]: ...


class _HostExecution(Generic[T]):
    """A routine run on the host for a handler that waits on the loop thread."""

    def __init__(
        self, run: Run[T], on_cancelled: T, host: Mailbox, transport: Mailbox, spawn: Spawn
    ) -> None:
        self._future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._on_cancelled = on_cancelled
        self._host = host
        self._transport = transport
        self._scope: anyio.CancelScope | None = None
        self._cancel_requested = False
        host.post(spawn, self._main, run)

    async def _main(self, run: Run[T]) -> None:  # on the host
        self._scope = anyio.CancelScope()
        if self._cancel_requested:
            self._scope.cancel()
        try:
            result: outcome.Outcome[T] = outcome.Value(await run(self._scope))
        except anyio.get_cancelled_exc_class():
            # Cancelled from outside its own scope: the worker is shutting down.
            result = outcome.Value(self._on_cancelled)
            raise
        except BaseException as exc:
            result = outcome.Error(exc)
        finally:
            self._transport.post(_settle, self._future, result)  # pyright: ignore[reportPossiblyUnboundVariable]

    def _cancel_on_host(self) -> None:
        self._cancel_requested = True
        if self._scope is not None:
            self._scope.cancel()

    def cancel(self) -> None:
        self._host.post(self._cancel_on_host)

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


class _HostExecutor:
    def __init__(self, portal: _ThreadPortal, spawn: Spawn) -> None:
        self._spawn = spawn
        # The portal's mailboxes: what crosses for calls and for their routines shares
        # the wake-ups.
        self._host = portal.host
        self._transport = portal.transport

    def start(self, run: Run[T], *, on_cancelled: T) -> Execution[T]:
        return _HostExecution(run, on_cancelled, self._host, self._transport, self._spawn)


def executor_for_host(portal: Portal, spawn: Spawn) -> Executor:
    """Runs routines on the calling host (asyncio or trio), for handlers on the loop thread
    of ``portal`` (from :func:`portal_for_host`); ``spawn`` is the ``start_soon`` of the
    task group they run in."""
    if not isinstance(portal, _ThreadPortal):
        raise TypeError(f"executor_for_host needs a portal from portal_for_host(), got {portal!r}")
    return _HostExecutor(portal, spawn)


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
                try:
                    self._transport.write(data)
                except RuntimeError as exc:
                    # uvloop: the connection's handle was closed (a failed TLS handshake,
                    # a peer gone) before its transport says it is closing. Nothing more
                    # can be sent on it; the protocol hears of the loss on its own.
                    log.debug("dropped a write to a closed connection: %s", exc)

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
