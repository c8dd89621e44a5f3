"""The client side of a pool: known workers, connections, and dispatch of calls."""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import math
import os
import uuid
from collections import deque
from collections.abc import AsyncGenerator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, cast

import anyio
import betterproto2

from wool._context import absorb, outgoing
from wool._errors import (
    NoPoolError,
    NoWorkersAvailable,
    ProtocolError,
    SerializationError,
    WorkerLost,
)
from wool._serialization import Payload, dumps_payload, loads, loads_exception, too_large
from wool._tracebacks import raise_remote
from wool.discovery import DiscoveryLike, WorkerFilter, WorkerMetadata
from wool.events._observe import current_call, observe_call
from wool.loadbalancer import LoadBalancerLike, RoundRobinLoadBalancer
from wool.routine import call_depth
from wool.transport import (
    DEFAULT_LIMITS,
    PROTOCOL_VERSION,
    CallStream,
    Client,
    ConnectionLost,
    Limits,
    Portal,
    RejectedReason,
    Request,
    Response,
    Step,
    StepKind,
    Task,
    Unreachable,
)

__all__ = ["WorkerProxy", "open_proxy"]

log = logging.getLogger("wool.pool")

_CALLER = f"{os.uname().nodename}:{os.getpid()}"


class WorkerProxy:
    """Dispatches routine calls to the workers it knows.

    Discovery says which workers exist (:meth:`add`, :meth:`remove`). A worker whose
    connection fails is suspended: it leaves the rotation until it answers an Info probe
    again, or discovery drops it.
    """

    def __init__(
        self,
        portal: Portal,
        *,
        grace: float,
        keepalive: float | None,
        wait_for_workers: float,
        limits: Limits = DEFAULT_LIMITS,
        loadbalancer: LoadBalancerLike | None = None,
        description: str = "the pool",
    ) -> None:
        self._portal = portal
        self.limits = limits
        self._grace = grace
        self._keepalive = keepalive
        self._wait_for_workers = wait_for_workers
        self._balancer = loadbalancer if loadbalancer is not None else RoundRobinLoadBalancer()
        self._clients: dict[str, Client] = {}
        self._closing: list[Client] = []
        self._closed = False
        self._known: dict[str, WorkerMetadata] = {}
        self._suspects: dict[str, float] = {}  # worker id: when it was suspended
        self._pinned: set[str] = set()
        self._changed = anyio.Event()
        self._ids = map(f"{uuid.uuid4().hex[:12]}-{{}}".format, itertools.count())
        self.description = description

    @property
    def workers(self) -> list[WorkerMetadata]:
        """The workers in rotation."""
        return [w for w in self._known.values() if w.id not in self._suspects]

    def add(self, worker: WorkerMetadata) -> None:
        known = self._known.get(worker.id)
        if known == worker:
            return
        if known is not None and known.address != worker.address:
            self._forget_client(worker.id)
        self._known[worker.id] = worker
        self._suspects.pop(worker.id, None)
        self._balancer.add(worker)
        log.debug("worker %s at %s joined %s", worker.id, worker.address, self.description)
        self._notify()

    def pin(self, worker: WorkerMetadata) -> None:
        """Keep ``worker`` whatever discovery says: a worker is always there for the nested
        calls of its own routines, also while it drains after withdrawing itself."""
        self._pinned.add(worker.id)
        self.add(worker)

    def remove(self, worker_id: str) -> None:
        if worker_id in self._pinned or self._known.pop(worker_id, None) is None:
            return
        self._suspects.pop(worker_id, None)
        self._balancer.remove(worker_id)
        self._forget_client(worker_id)
        log.info("worker %s left %s", worker_id, self.description)
        self._notify()

    def _suspend(self, worker: WorkerMetadata, reason: str) -> None:
        if self._closed:
            return
        if worker.id in self._known and worker.id not in self._suspects:
            log.warning("worker %s at %s suspended: %s", worker.id, worker.address, reason)
            self._suspects[worker.id] = anyio.current_time()
            self._balancer.remove(worker.id)
            self._notify()

    def suspended_for(self, worker_id: str) -> float:
        """Seconds the worker has been out of rotation for failing calls (0 if it is not)."""
        since = self._suspects.get(worker_id)
        return 0.0 if since is None else anyio.current_time() - since

    async def changed(self) -> None:
        """Wait until the set of workers in rotation changes."""
        await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def _forget_client(self, worker_id: str) -> None:
        client = self._clients.pop(worker_id, None)
        if client is not None:
            self._closing.append(client)

    async def _choose(self, routine: str) -> WorkerMetadata:
        if self._closed:
            raise NoPoolError(routine, closed=True)
        worker = self._balancer.choose()
        if worker is not None:
            return worker
        with anyio.move_on_after(self._wait_for_workers):
            while (worker := self._balancer.choose()) is None:
                await self._changed.wait()
                if self._closed:
                    raise NoPoolError(routine, closed=True)
            return worker
        raise NoWorkersAvailable(
            f"{self.description} has no workers (waited {self._wait_for_workers:g} s); "
            "check that its workers started and match the pool's tags"
        )

    def _client(self, worker: WorkerMetadata) -> Client:
        client = self._clients.get(worker.id)
        if client is None:
            client = Client(worker.host, worker.port, keepalive=self._keepalive, limits=self.limits)
            self._clients[worker.id] = client
        return client

    async def probe_suspects(self, interval: float = 0.25) -> None:
        """Forever: give suspended workers that answer an Info call back to the rotation."""
        while True:
            await anyio.sleep(interval)
            await self._close_forgotten()
            for worker_id in list(self._suspects):
                worker = self._known.get(worker_id)
                if worker is None:
                    continue
                try:
                    info = await self._portal.run(self._client(worker).info, 1.0)
                except ConnectionLost:
                    continue
                if info.stopping:
                    continue  # draining: it will leave
                if worker_id in self._suspects:
                    log.info("worker %s answers again; back in rotation", worker_id)
                    del self._suspects[worker_id]
                    self._balancer.add(worker)
                    self._notify()

    async def _close_forgotten(self, *, wait: bool = False) -> None:
        # A worker that left may still be finishing calls (it drains before it exits).
        closing, self._closing = self._closing, []
        for client in closing:
            if client.busy and not wait:
                self._closing.append(client)
                continue
            with contextlib.suppress(Exception):
                await self._portal.run(client.close)

    def _request(
        self,
        routine: str,
        function: bytes,
        arguments: Payload,
        grace: float,
        timeout: float | None,
        *,
        generator: bool = False,
    ) -> Request:
        return Request(
            task=Task(
                version=PROTOCOL_VERSION,
                id=next(self._ids),
                routine=routine,
                function=function,
                arguments=cast(bytes, arguments),  # see framing.split
                timeout=timeout,
                grace=grace,
                caller=_CALLER,
                depth=call_depth.get() + 1,
                generator=generator,
                context=outgoing(),
                parent=current_call.get(),
            )
        )

    def _lost(self, worker: WorkerMetadata, routine: str, exc: Exception) -> WorkerLost:
        self._suspend(worker, str(exc))
        return WorkerLost(
            f"worker {worker.id} at {worker.address} was lost while running {routine!r}: {exc}",
            worker=worker.id,
            routine=routine,
        )

    def _declined(self, worker: WorkerMetadata, response: Response) -> bool:
        """The worker refused a call that never started there: another worker may take it."""
        refusal = response.rejected
        if refusal is None:
            return False
        if refusal.reason == RejectedReason.STOPPING:
            self._suspend(worker, "it is stopping")
            return True
        if refusal.reason == RejectedReason.VERSION:
            log.error("worker %s speaks another protocol: %s", worker.id, refusal.detail)
            self.remove(worker.id)  # until discovery reports it anew
            return True
        return False

    async def call(
        self,
        routine: str,
        function: bytes,
        arguments: Payload,
        *,
        grace: float | None,
        timeout: float | None,
    ) -> Any:
        """Run one call on a worker and return its result or raise its exception."""
        grace = self._grace if grace is None else grace
        self._check_sizes(routine, function, arguments)
        request = self._request(routine, function, arguments, grace, timeout)
        assert request.task is not None
        with observe_call(request.task) as observer:
            while True:
                worker = observer.scheduled(await self._choose(routine))
                client = self._client(worker)
                try:
                    response = await self._portal.run(client.call, request)
                except Unreachable as exc:
                    self._suspend(worker, str(exc))
                    continue  # never sent: another worker may take it
                except ConnectionLost as exc:
                    raise self._lost(worker, routine, exc) from None
                except anyio.get_cancelled_exc_class():
                    await self._cancel_remote(client, request.task.id, grace)
                    raise
                if self._declined(worker, response):
                    continue
                absorb(response.context, routine)  # as after a local await, failed or not
                kind, body = betterproto2.which_one_of(response, "body")
                return await _outcome(kind, body, routine, worker)

    @asynccontextmanager
    async def generator(
        self,
        routine: str,
        function: bytes,
        arguments: Payload,
        *,
        grace: float | None,
        timeout: float | None,
        prefetch: int,
    ) -> AsyncGenerator[RemoteGenerator, None]:
        """Open a generator call on a worker; its steps are taken through the yielded object.

        The worker runs up to ``prefetch`` items ahead of the ones asked for.
        """
        grace = self._grace if grace is None else grace
        self._check_sizes(routine, function, arguments)
        request = self._request(routine, function, arguments, grace, timeout, generator=True)
        assert request.task is not None
        client: Client | None = None
        call: CallStream | None = None
        with observe_call(request.task) as observer:
            try:
                while True:
                    worker = observer.scheduled(await self._choose(routine))
                    client = self._client(worker)
                    try:
                        call = await self._portal.run(client.open, request)
                    except Unreachable as exc:
                        self._suspend(worker, str(exc))
                        continue  # never sent: another worker may take it
                    except ConnectionLost as exc:
                        raise self._lost(worker, routine, exc) from None
                    remote = RemoteGenerator(self, call, routine, worker, prefetch)
                    # The first step is always NEXT (Python refuses other first steps locally),
                    # so take it here: a worker that refuses the call lets another one take it.
                    first = await remote.start()
                    if self._declined(worker, first):
                        closing, call = call, None
                        with anyio.move_on_after(grace):
                            await self._portal.run(functools.partial(closing.close, reset=True))
                        continue
                    break
                yield observer.steps(remote)
            except anyio.get_cancelled_exc_class():
                if client is not None:
                    await self._cancel_remote(client, request.task.id, grace)
                raise
            finally:
                if call is not None:
                    with anyio.CancelScope(shield=True), anyio.move_on_after(grace):
                        with contextlib.suppress(ConnectionLost):
                            await self._portal.run(call.close)

    def _check_sizes(self, routine: str, function: bytes, arguments: Payload) -> None:
        """Refuse, before sending anything, a call too large for the limits."""
        if len(arguments) > self.limits.max_payload:
            raise too_large(
                f"the argument tuple of {routine!r}", len(arguments), self.limits.max_payload
            )
        room = self.limits.max_message - 1024
        if len(function) > room:
            raise SerializationError(
                f"routine {routine!r} pickles to {len(function)} bytes, more than one message "
                f"may carry ({room} bytes); make it importable by the workers (define it in a "
                "module) rather than sending it by value"
            )

    async def _cancel_remote(self, client: Client, call_id: str, grace: float) -> None:
        # The stream was reset already, which cancels the routine; this waits until the
        # worker says the routine has finished unwinding, up to the grace period.
        try:
            with anyio.CancelScope(shield=True), anyio.move_on_after(grace):
                with contextlib.suppress(ConnectionLost):
                    await self._portal.run(client.cancel, call_id, grace)
        finally:
            client.forget(call_id)

    async def aclose(self) -> None:
        self._closed = True
        for worker_id in list(self._known):
            self._balancer.remove(worker_id)
        self._notify()  # callers waiting for a worker learn that the pool closed
        for worker_id in list(self._clients):
            self._forget_client(worker_id)
        await self._close_forgotten(wait=True)


async def _outcome(kind: str, body: Any, routine: str, worker: WorkerMetadata) -> Any:
    if kind == "result":
        try:
            return loads(body)
        except Exception as exc:
            raise SerializationError(
                f"the value returned by {routine!r} cannot be unpickled here: {exc}"
            ) from exc
    if kind == "failure":
        raise_remote(loads_exception(body.exception, body.type, body.message, body.traceback))
    if kind == "cancelled":
        if body.deadline:
            # The worker ran out the caller's own deadline first; the caller's scope is
            # about to expire too, and that is what the caller must see.
            deadline = anyio.current_effective_deadline()
            if deadline != float("inf"):
                await anyio.sleep_until(deadline)
                await anyio.lowlevel.checkpoint()
            raise TimeoutError(f"{routine!r} ran out of time on worker {worker.id}")
        raise WorkerLost(
            f"worker {worker.id} at {worker.address} stopped and cancelled {routine!r}",
            worker=worker.id,
            routine=routine,
        )
    if kind == "rejected":
        if body.reason == RejectedReason.EXPIRED:
            return await _outcome("cancelled", _Deadline, routine, worker)
        raise ProtocolError(f"worker {worker.id} refused {routine!r}: {body.detail}")
    raise ProtocolError(f"worker {worker.id} sent an unknown answer for {routine!r}: {kind!r}")


class _Deadline:
    deadline = True


class RemoteGenerator:
    """The caller's handle on an async generator running on a worker.

    Items come in the order the generator yields them. While the caller only asks for
    the next item, the worker is granted up to ``window`` items beyond the one asked for,
    topped up as they are consumed; SEND, THROW and CLOSE are exact steps (see ``Step`` in
    the protocol).
    """

    def __init__(
        self,
        proxy: WorkerProxy,
        call: CallStream,
        routine: str,
        worker: WorkerMetadata,
        window: int,
    ) -> None:
        self._proxy = proxy
        self._call = call
        self._routine = routine
        self._worker = worker
        self._window = window
        self._buffer: deque[bytes] = deque()
        self._granted = 0  # items granted that have not arrived
        self._final: Response | None = None

    async def start(self) -> Response:
        """Ask for the first item (and the window after it); return the first answer."""
        await self._grant(self._window + 1, _time_left())
        response = await self._receive()
        self._take(response)
        return response

    async def next(self) -> tuple[bool, Any]:
        while not self._buffer:
            if self._final is not None:
                return await self._conclude(self._final)
            if not self._granted:
                # The worker is idle: the first item granted is this caller's, and only
                # its step runs under this caller's deadline.
                await self._grant(self._window + 1, _time_left())
            self._take(await self._receive())
        data = self._buffer.popleft()
        ahead = self._granted + len(self._buffer)
        # Top up once a quarter of the window is used: the worker keeps producing while
        # the grant travels.
        if self._final is None and self._window and ahead <= self._window - self._window // 4:
            await self._grant(self._window - ahead)
        return False, self._load(data)

    async def control(self, kind: StepKind, value: Any = None) -> tuple[bool, Any]:
        self._buffer.clear()  # items read ahead past the point this step applies at
        self._granted = 0
        if self._final is not None:
            return self._too_late(kind, value)
        await self._send(
            Step(
                kind=kind,
                value=b"" if kind == StepKind.CLOSE else _dumps_value(value, self._proxy.limits),
                timeout=_time_left(),
            )
        )
        while True:
            response = await self._receive()
            if response.items is not None:
                continue  # produced before the step took effect
            if response.item is not None:
                return False, self._load(response.item)
            self._final = response
            if self._window and not self._answers(kind, value, response):
                # The generator ended while reading ahead, before the step arrived.
                return self._too_late(kind, value)
            return await self._conclude(response)

    @staticmethod
    def _answers(kind: StepKind, value: Any, response: Response) -> bool:
        """Whether a read-ahead generator's final response is what the step did to it.

        Such a generator catches nothing at its yields: a throw it took raises the thrown
        exception, and a close it took ends it quietly."""
        if kind == StepKind.THROW:
            failed = response.failure
            return failed is not None and failed.type == _type_name(value)
        return response.exhausted is not None

    def _too_late(self, kind: StepKind, value: Any) -> tuple[bool, Any]:
        """A step for a generator that ran to its end ahead of the caller: a thrown
        exception propagates, as it would from a generator that does not catch it, and a
        close succeeds."""
        if kind == StepKind.THROW:
            raise_remote(value)
        return True, None

    async def close(self) -> None:
        """Close the remote generator; returns once its ``finally`` blocks have run."""
        await self.control(StepKind.CLOSE)

    def _take(self, response: Response) -> None:
        items = response.items
        if items is not None:
            self._buffer.extend(items.values)
            self._granted = max(0, self._granted - len(items.values))
        elif response.item is not None:
            raise ProtocolError(
                f"worker {self._worker.id} answered a step of {self._routine!r} it was not sent"
            )
        else:
            self._final = response
            self._granted = 0

    async def _conclude(self, response: Response) -> tuple[bool, Any]:
        kind, body = betterproto2.which_one_of(response, "body")
        if kind == "exhausted":
            return True, None
        return True, await _outcome(kind, body, self._routine, self._worker)

    def _load(self, data: bytes) -> Any:
        try:
            return loads(data)
        except Exception as exc:
            raise SerializationError(
                f"a value yielded by {self._routine!r} cannot be unpickled here: {exc}"
            ) from exc

    async def _grant(self, count: int, timeout: float | None = None) -> None:
        await self._send(Step(kind=StepKind.NEXT, count=count, timeout=timeout))
        self._granted += count

    async def _send(self, step: Step) -> None:
        try:
            await self._proxy._portal.run(self._call.send, Request(step=step))
        except ConnectionLost as exc:
            raise self._proxy._lost(self._worker, self._routine, exc) from None

    async def _receive(self) -> Response:
        try:
            return await self._proxy._portal.run(self._call.receive)
        except ConnectionLost as exc:
            raise self._proxy._lost(self._worker, self._routine, exc) from None


def _time_left() -> float | None:
    """Seconds until the current task's deadline, None without one."""
    deadline = anyio.current_effective_deadline()
    return None if deadline == math.inf else deadline - anyio.current_time()


def _type_name(value: object) -> str:
    return f"{type(value).__module__}.{type(value).__qualname__}"


def _dumps_value(value: Any, limits: Limits) -> bytes:
    try:
        data = dumps_payload(value)
    except Exception as exc:
        raise SerializationError(
            f"the value sent ({type(value).__name__}) cannot be pickled: {exc}"
        ) from exc
    if len(data) > limits.max_payload:
        raise too_large(f"the value sent ({type(value).__name__})", len(data), limits.max_payload)
    return cast(bytes, data)  # a Payload in a bytes field: see framing.split


class open_proxy:
    """``async with open_proxy(...) as proxy``: a proxy that ``discovery`` keeps up to date.

    A class rather than a generator so that an exception from the body of the ``async
    with`` passes through unchanged instead of wrapped in a task group's ExceptionGroup.
    """

    def __init__(
        self,
        portal: Portal,
        discovery: DiscoveryLike | None,
        *,
        grace: float,
        keepalive: float | None,
        wait_for_workers: float,
        limits: Limits = DEFAULT_LIMITS,
        filter: WorkerFilter | None = None,
        loadbalancer: LoadBalancerLike | None = None,
        description: str = "the pool",
    ) -> None:
        self._discovery = discovery
        self._filter = filter
        self._proxy = WorkerProxy(
            portal,
            grace=grace,
            keepalive=keepalive,
            limits=limits,
            wait_for_workers=wait_for_workers,
            loadbalancer=loadbalancer,
            description=description,
        )
        self._tg = anyio.create_task_group()

    def start_soon(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        """Run a task for as long as the proxy is open."""
        self._tg.start_soon(fn, *args)

    async def __aenter__(self) -> WorkerProxy:
        await self._tg.__aenter__()
        self._tg.start_soon(self._proxy.probe_suspects)
        if self._discovery is not None:
            self._tg.start_soon(_follow, self._discovery, self._filter, self._proxy)
        return self._proxy

    async def __aexit__(self, *exc_info: object) -> None:
        self._tg.cancel_scope.cancel()
        try:
            await self._tg.__aexit__(None, None, None)
        finally:
            with anyio.CancelScope(shield=True):
                await self._proxy.aclose()


async def _follow(
    discovery: DiscoveryLike, filter: WorkerFilter | None, proxy: WorkerProxy
) -> None:
    """Apply discovery's events to the proxy; if the discovery fails, subscribe again."""
    delay = 0.1
    while True:
        try:
            async with discovery.subscriber(filter) as events:
                async for event in events:
                    delay = 0.1
                    if event.kind == "worker-dropped":
                        proxy.remove(event.worker.id)
                    else:
                        proxy.add(event.worker)
        except anyio.get_cancelled_exc_class():
            raise
        except Exception:
            log.exception("discovery %r failed; subscribing again in %g s", discovery, delay)
        await anyio.sleep(delay)
        delay = min(delay * 2, 10.0)
